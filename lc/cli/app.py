"""The ``lc`` Typer app and what every command shares: bad input answered in one line."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable

import typer

app = typer.Typer(help="landcover: Sentinel-2 land-cover mapping with a U-Net.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.callback()
def main() -> None:
    """landcover: Sentinel-2 land-cover mapping with a U-Net."""
    from lc.tracking.console import quiet_libraries

    quiet_libraries()
    # SIGTERM unwinds like Ctrl-C: runs end KILLED, trials FAIL, temporary outputs are removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def fail(exc: Exception) -> None:
    """One clear line for bad input, exit code 2."""
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2)


def answered(command: Callable) -> Callable:
    """Bad input (a settings file, a product, a model, a path) gets its message in one line and exit
    status 2, not a traceback; LC_DEBUG=1 shows the traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            if os.environ.get("LC_DEBUG"):
                raise
            fail(exc)

    return run
