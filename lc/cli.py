"""The ``lc`` command: thin wiring of the pipeline functions (DESIGN §4)."""

from __future__ import annotations

import typer

app = typer.Typer(help="landcover: Sentinel-2 land-cover mapping with a U-Net.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Sentinel-2 (SAFE) + WorldCover -> aligned scenes -> U-Net studies -> maps and reports."""


if __name__ == "__main__":
    app()
