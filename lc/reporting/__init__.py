"""The report of a study and its map: figures and report.md/html, read back from where the chain left them."""
