"""The ``lc`` command: thin wiring of the pipeline functions (docs/architecture.md lists them).
The mapping commands live in ``lc.cli.mapping``, ``lc acquire`` in ``lc.cli.acquire``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lc.cli.app import answered, app, fail


@app.command()
@answered
def synth(
    out: Path,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    size: Annotated[Optional[int], typer.Option(help="scene edge in 10 m pixels (multiple of 6) [default: 768, "
                                                     "384 with --region]")] = None,
    region: Annotated[bool, typer.Option(help="a region instead: five overlapping L2A products across the "
                                              "UTM 34/35 border")] = False,
) -> None:
    """Write realistic synthetic L1C/L2A SAFE products and their WorldCover tiles into OUT."""
    from lc.synth.products import DEFAULT_SIZE, synthesize
    from lc.synth.region import REGION_SIZE, synthesize_region

    manifest = (synthesize_region(out, seed=seed, size=size or REGION_SIZE) if region
                else synthesize(out, seed=seed, size=size or DEFAULT_SIZE))
    for p in manifest["products"]:
        typer.echo(f"{p['role']:>13}  {p['path']}")
    typer.echo(f"{'worldcover':>13}  {', '.join(manifest['worldcover'])}")


@app.command()
@answered
def prepare(
    product: Annotated[Path, typer.Argument(help=".SAFE folder or .zip")],
    out: Annotated[Path, typer.Option("--out", help="scene bundle folder to write")],
    worldcover: Annotated[Optional[list[Path]], typer.Option(help="WorldCover tile(s); repeat for several")] = None,
    sharpen: Annotated[str, typer.Option(help="nearest | bilinear | cubic | sharpen")] = "sharpen",
    label_resampling: Annotated[str, typer.Option(help="nearest | mode")] = "nearest",
    overwrite: bool = False,
) -> None:
    """Product (+ WorldCover) -> scene bundle: image.tif, label.tif, scene.json on the 10 m grid."""
    from lc.sentinel2.prepare import prepare as run

    run(product, out, worldcover or [], method=sharpen, overwrite=overwrite, label_resampling=label_resampling)
    typer.echo(f"scene bundle written to {out}")


@app.command()
@answered
def data(
    config: Path,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides")] = None,
    overwrite: bool = False,
) -> None:
    """Make an experiment's raw products (synthetic or acquired) and prepare its scenes."""
    from lc.config import load_config
    from lc.sources.experiment import make_data

    try:
        scenes = make_data(load_config(config, overrides), overwrite=overwrite)
    except RuntimeError as exc:  # an acquisition that cannot reach its sources
        fail(exc)
    for scene in scenes:
        typer.echo(f"scene  {scene}")


@app.command()
@answered
def train(
    config: Path,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides, e.g. train.lr=3e-4")] = None,
) -> None:
    """Train one configuration; the run (metrics, figures, model) goes to MLflow."""
    from lc.config import load_config
    from lc.tracking.train import train as run

    cfg = load_config(config, overrides)
    result = run(cfg)
    typer.echo(f"run {result.run_id}: val mIoU {result.val['miou']:.3f}, test mIoU {result.test['miou']:.3f}, "
               f"{result.epochs} epochs in {result.seconds:.0f} s; model {result.model_uri}")


@app.command()
@answered
def baseline(
    config: Path,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key.path=value overrides")] = None,
    model: Annotated[Optional[str], typer.Option(help="use this model's harmonisation (e.g. models:/landcover/Production)")] = None,
    pixels: Annotated[int, typer.Option(help="training pixels drawn for gradient boosting")] = 300_000,
) -> None:
    """Per-pixel gradient boosting on the same splits and harmonisation, scored like a U-Net, in MLflow."""
    from lc.config import load_config
    from lc.mapping.baseline import run_baseline
    from lc.sources.experiment import experiment_products
    from lc.tracking.models import load_contract

    extra = [f"data.harmonisation={load_contract(model)[1].harmonisation}"] if model else []
    cfg = load_config(config, [*(overrides or []), *extra])
    try:
        areas = [cfg.scenes_dir / p.scene for p in experiment_products(cfg, "predict")]
    except FileNotFoundError:
        areas = []
    area = next((a for a in areas if (a / "label.tif").exists()), None)
    result = run_baseline(cfg, area, pixels)
    line = f"baseline run {result.run_id}: val mIoU {result.val['miou']:.3f}, test mIoU {result.test['miou']:.3f}"
    if result.new_area is not None:
        line += f", {area.name} mIoU {result.new_area['miou']:.3f} (OA {result.new_area['overall_accuracy']:.3f})"
    typer.echo(f"{line}; harmonisation {cfg.data.harmonisation}, {result.seconds:.0f} s")


@app.command()
@answered
def study(
    space: Annotated[Path, typer.Argument(help="search space YAML under studies/")],
    n_trials: Annotated[int, typer.Option(help="trials the study should hold when done (resumes)")] = 50,
    study_name: Annotated[Optional[str], typer.Option(help="default: the space's name")] = None,
    storage: Annotated[Optional[str], typer.Option(help="journal file path or RDB URL (postgresql://…)")] = None,
    workers: Annotated[int, typer.Option(help="worker processes on this machine")] = 1,
    refit: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE on top of the space's refit settings "
                                                           "(repeatable), e.g. train.max_epochs=6")] = None,
    refit_recipe: Annotated[Optional[bool], typer.Option(
        "--refit-recipe/--no-refit-recipe", help="refit the experiment's recipe too and register it where it "
        "validates better (default: the space's refit_recipe)")] = None,
) -> None:
    """Run or resume an Optuna study; every trial is an MLflow run; the best model is registered."""
    import yaml

    from lc.tracking.study import run_study

    pairs = [item.partition("=") for item in refit or []]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ValueError(f"--refit takes KEY=VALUE, got {refit}")
    result = run_study(space, n_trials, storage=storage, workers=workers, study_name=study_name,
                       refit={key: yaml.safe_load(value) for key, _, value in pairs}, refit_recipe=refit_recipe)
    best = result.best_trial if any(t.value is not None for t in result.trials) else None
    typer.echo(f"study {result.study_name}: {len(result.trials)} trials" +
               (f"; best #{best.number} val mIoU {best.value:.3f}" if best else ""))


@app.command()
@answered
def register(
    space: Annotated[Path, typer.Option(help="the study's search space YAML")] = Path("studies/demo.yaml"),
    study_name: Annotated[Optional[str], typer.Option("--study", help="default: the space's name")] = None,
    storage: Annotated[Optional[str], typer.Option(help="journal file path or RDB URL")] = None,
    force: Annotated[bool, typer.Option(help="promote even if production is better")] = False,
) -> None:
    """Register the study's best model (its refit, where the space asks for one) as a version of `landcover`."""
    from lc.tracking.refit import register_best
    from lc.tracking.space import load_spec
    from lc.tracking.storage import default_storage, existing_study

    spec = load_spec(space)
    study = existing_study(spec, storage or default_storage(spec), study_name)
    result = register_best(spec, study, force=force)
    if result is None:
        typer.echo("the best trial is being refitted by another process; that process registers the model", err=True)
        raise typer.Exit(1)
    typer.echo(f"landcover version {result.version}: val mIoU {result.metric:.4f}; "
               f"{'promoted to production' if result.promoted else 'not promoted'}: {result.reason}")


@app.command()
@answered
def report(
    space: Annotated[Path, typer.Option(help="the study's search space YAML")] = Path("studies/demo.yaml"),
    study_name: Annotated[Optional[str], typer.Option("--study", help="default: the space's name")] = None,
    storage: Annotated[Optional[str], typer.Option(help="journal file path or RDB URL")] = None,
    map_tif: Annotated[Optional[Path], typer.Option("--map", help="an evaluated map of the new area")] = None,
    out: Annotated[Optional[Path], typer.Option(help="default: reports/<study>/")] = None,
    region: Annotated[Optional[Path], typer.Option(help="the out folder of a mapped region (`lc map`)")] = None,
) -> None:
    """Figures (PNG + SVG, with their data as CSV), report.md and a self-contained report.html."""
    from lc.reporting.report import build_report

    folder = build_report(space, out, map_tif if map_tif and map_tif.exists() else None, study_name, storage,
                          region=region)
    typer.echo(f"report: {folder / 'report.html'}  (and report.md; compare runs with `make ui`)")


@app.command()
@answered
def ui(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    space: Annotated[Optional[Path], typer.Option(help="the study whose trials the links show [default: "
                                                   "studies/demo.yaml where it exists]")] = None,
    study_name: Annotated[Optional[str], typer.Option("--study", help="default: the space's name")] = None,
) -> None:
    """The MLflow UI over the project's store (one worker: light on a laptop), with links to a
    study's trials: a table of the useful columns, best first, and their curves compared in charts."""
    import os
    import shutil
    import sys

    from lc.config import load_config
    from lc.tracking import store
    from lc.tracking.space import load_spec
    from lc.tracking.views import trials_view

    uri = store.configure()
    demo = Path("studies/demo.yaml")
    space = space or (demo if demo.exists() else None)
    spec = load_spec(space) if space else None
    study = study_name or (spec.name if spec else None)
    view = trials_view(load_config(spec.experiment).mlflow_experiment, study) if spec else None
    base = f"http://{host}:{port}"
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    args = [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    typer.echo(f"MLflow UI on {base}  (store {uri}); Ctrl-C stops it")
    if spec is None:
        typer.echo("no study space here: `lc ui --space SPACE` prints links to a study's trials")
    elif view is None:
        typer.echo(f"no runs yet for study {study!r}: run `lc study {space}` first")
    else:
        typer.echo(f"trials of study {study!r}:  {view.table(base)}\ntheir curves compared:  {view.charts(base)}")
    sys.stdout.flush()  # execv drops what is still buffered
    os.execv(mlflow_bin, args)


def _mount_commands() -> None:
    import lc.cli.mapping  # noqa: F401 - registers predict, map, sample, evaluate on the app
    from lc.cli.acquire import app as acquire_app

    app.add_typer(acquire_app, name="acquire", help="Download WorldCover tiles and Sentinel-2 products (network).")


_mount_commands()

if __name__ == "__main__":
    app()
