"""Sentinel-2 in: SAFE products (folder or zip, L1C/L2A, any baseline) -> aligned 10 m scene bundles."""
