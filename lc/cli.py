"""The ``lc`` command: thin wiring of the pipeline functions (DESIGN §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="landcover: Sentinel-2 land-cover mapping with a U-Net.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _fail(exc: Exception) -> None:
    """One clear line for bad input, exit code 2."""
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Path,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    size: Annotated[int, typer.Option(help="scene edge in 10 m pixels (multiple of 6)")] = 768,
) -> None:
    """Write realistic synthetic L1C/L2A SAFE products and their WorldCover tiles into OUT."""
    from lc.synth import synthesize

    manifest = synthesize(out, seed=seed, size=size)
    for p in manifest["products"]:
        typer.echo(f"{p['role']:>13}  {p['path']}")
    typer.echo(f"{'worldcover':>13}  {', '.join(manifest['worldcover'])}")


@app.command()
def prepare(
    product: Annotated[Path, typer.Argument(help=".SAFE folder or .zip")],
    out: Annotated[Path, typer.Option("--out", help="scene bundle folder to write")],
    worldcover: Annotated[Optional[list[Path]], typer.Option(help="WorldCover tile(s); repeat for several")] = None,
    sharpen: Annotated[str, typer.Option(help="nearest | bilinear | cubic | sharpen")] = "sharpen",
    label_resampling: Annotated[str, typer.Option(help="nearest | mode")] = "nearest",
    overwrite: bool = False,
) -> None:
    """Product (+ WorldCover) -> scene bundle: image.tif, label.tif, scene.json on the 10 m grid."""
    from lc.prepare import prepare as run
    from lc.safe import ProductError

    try:
        run(product, out, worldcover or [], method=sharpen, overwrite=overwrite, label_resampling=label_resampling)
    except (ProductError, FileExistsError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(f"scene bundle written to {out}")


@app.command()
def data(
    config: Path,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides")] = None,
    overwrite: bool = False,
) -> None:
    """Make an experiment's raw products (synthetic or acquired) and prepare its scenes."""
    from lc.config import load_config
    from lc.sources import make_data

    try:
        scenes = make_data(load_config(config, overrides), overwrite=overwrite)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(exc)
    for scene in scenes:
        typer.echo(f"scene  {scene}")


@app.command()
def train(
    config: Path,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides, e.g. train.lr=3e-4")] = None,
) -> None:
    """Train one configuration; the run (metrics, figures, model) goes to MLflow."""
    from lc.config import load_config
    from lc.train import train as run

    cfg = load_config(config, overrides)
    result = run(cfg)
    typer.echo(f"run {result.run_id}: val mIoU {result.val['miou']:.3f}, test mIoU {result.test['miou']:.3f}, "
               f"{result.epochs} epochs in {result.seconds:.0f} s; model {result.model_uri}")


def _mount_acquire() -> None:
    from lc.cli_acquire import app as acquire_app

    app.add_typer(acquire_app, name="acquire", help="Download WorldCover tiles and Sentinel-2 products (network).")


_mount_acquire()

if __name__ == "__main__":
    app()
