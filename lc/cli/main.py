"""The ``lc`` command: thin wiring of the pipeline functions (docs/architecture.md lists them)."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

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


def _fail(exc: Exception) -> None:
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
            _fail(exc)

    return run


@app.command()
@answered
def synth(
    out: Path,
    seed: Annotated[int, typer.Option(help="generator seed")] = 0,
    size: Annotated[int, typer.Option(help="scene edge in 10 m pixels (multiple of 6)")] = 768,
) -> None:
    """Write realistic synthetic L1C/L2A SAFE products and their WorldCover tiles into OUT."""
    from lc.synth.products import synthesize

    manifest = synthesize(out, seed=seed, size=size)
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
        _fail(exc)
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
) -> None:
    """Run or resume an Optuna study; every trial is an MLflow run; the best model is registered."""
    import yaml

    from lc.tracking.study import run_study

    pairs = [item.partition("=") for item in refit or []]
    if any(not key or not sep for key, sep, _ in pairs):
        raise ValueError(f"--refit takes KEY=VALUE, got {refit}")
    result = run_study(space, n_trials, storage=storage, workers=workers, study_name=study_name,
                       refit={key: yaml.safe_load(value) for key, _, value in pairs})
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
def predict(
    source: Annotated[Optional[Path], typer.Argument(help="a product (.SAFE/.zip) or a scene bundle folder")] = None,
    experiment: Annotated[Optional[Path], typer.Option(help="no SOURCE: map the experiment's area to predict")] = None,
    model: Annotated[str, typer.Option(help="MLflow model URI")] = "models:/landcover/Production",
    out: Annotated[Path, typer.Option(help="map to write (Cloud-Optimised GeoTIFF)")] = Path("map.tif"),
    worldcover: Annotated[Optional[list[Path]], typer.Option(help="ground-truth tile(s): evaluate the map")] = None,
    worldcover_dir: Annotated[Optional[Path], typer.Option(help="take every WorldCover tile in this folder")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    tile: Annotated[Optional[int], typer.Option(help="tile edge, px (default: the experiment's predict.chip_size)")] = None,
    overlap: Annotated[Optional[int], typer.Option(help="tile overlap, px (default: predict.overlap)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="tiles per batch (default: predict.batch_size)")] = None,
    overwrite: bool = False,
    allow_pickle: Annotated[bool, typer.Option(help="load a model stored as a pickle (runs code from it)")] = False,
) -> None:
    """Map a product or scene with a registered model (streaming, blended tiles), then evaluate it."""
    from lc.config import PredictConfig, load_config
    from lc.mapping.predict import predict as run

    tiles = list(worldcover or []) + (sorted(worldcover_dir.glob("ESA_WorldCover_*_Map.tif")) if worldcover_dir else [])
    settings = load_config(experiment).predict if experiment else PredictConfig()
    if source is None:
        if experiment is None:
            raise ValueError("give a product or scene, or --experiment CONFIG")
        source, tiles = _predict_product(experiment, tiles)
    summary = run(model, source, out, worldcover=tiles or None, device=device,
                  tile=settings.chip_size if tile is None else tile,
                  overlap=settings.overlap if overlap is None else overlap,
                  batch_size=settings.batch_size if batch_size is None else batch_size, overwrite=overwrite,
                  allow_pickle=allow_pickle)
    typer.echo(f"map {summary['map']}  (confidence {summary['confidence']}, quick-look {summary['quicklook']})")
    if "metrics" in summary:
        m = summary["metrics"]
        own = m["model_classes_metrics"]
        typer.echo(f"agreement with the reference at every pixel: OA {m['overall_accuracy']:.3f}, macro mIoU {m['miou']:.3f} over classes "
                   f"{m['miou_classes']} ({own['miou']:.3f} over the model's {own['miou_classes']}), kappa {m['kappa']:.3f}"
                   f" -> {out.with_name(out.stem + '.metrics.json')}")


def _predict_product(experiment: Path, tiles: list[Path]) -> tuple[Path, list[Path]]:
    from lc.config import load_config
    from lc.sources.experiment import experiment_products

    products = experiment_products(load_config(experiment), "predict")
    if not products:
        raise ValueError(f"{experiment}: its data holds no product to predict")
    return products[0].path, tiles or products[0].worldcover


@app.command()
@answered
def sample(
    map_tif: Annotated[Path, typer.Argument(help="a map written by `lc predict`")],
    out: Annotated[Path, typer.Option(help="points to write: .gpkg, .geojson or .csv")] = Path("points.gpkg"),
    n: Annotated[Optional[int], typer.Option(help="sample size (or give --target-se)")] = None,
    target_se: Annotated[Optional[float], typer.Option(help="derive n from this standard error of overall "
                                                            "accuracy (Olofsson et al. 2014, eq. 13)")] = None,
    expected_accuracy: Annotated[float, typer.Option(help="user's accuracy expected of every class, for "
                                                          "--target-se")] = 0.8,
    min_per_class: Annotated[int, typer.Option(help="at least this many points a map class")] = 50,
    seed: int = 0,
    overwrite: bool = False,
) -> None:
    """A stratified random sample of a map's pixels for accuracy assessment (strata = map classes)."""
    from lc.mapping.points import design_path, draw_sample

    design = draw_sample(map_tif, out, n=n, target_se=target_se, expected_users_accuracy=expected_accuracy,
                         min_per_stratum=min_per_class, seed=seed, overwrite=overwrite)
    per_class = ", ".join(f"{s.code}: {s.sample_size}" for s in design.strata)
    typer.echo(f"{design.n} points -> {out} (design: {design_path(out)}); points per map class {per_class}")


@app.command()
@answered
def evaluate(
    map_tif: Annotated[Path, typer.Argument(help="a map written by `lc predict`")],
    truth: Annotated[Optional[Path], typer.Option(help="reference labels (e.g. a scene's label.tif, "
                                                       "<map>.truth.tif)")] = None,
    worldcover: Annotated[Optional[list[Path]], typer.Option(help="WorldCover tile(s)")] = None,
    points: Annotated[Optional[Path], typer.Option(help="reference points: estimate accuracy and areas from "
                                                        "this sample (labels from --code-column, or from "
                                                        "--truth/--worldcover read at the points)")] = None,
    code_column: Annotated[str, typer.Option(help="the points' column of WorldCover codes")] = "reference",
    crs: Annotated[Optional[str], typer.Option(help="CRS of a CSV's x/y columns (e.g. EPSG:32634)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON to write (default: <map>.metrics.json, or "
                                                     "<map>.assessment.json with --points)")] = None,
) -> None:
    """Wall-to-wall agreement with a reference map (every pixel), or with --points accuracy and class
    areas estimated from a sample, with 95% intervals (Olofsson et al. 2014)."""
    if points is not None:
        from lc.mapping.sampled import assess_sample

        reference = ([truth] if truth else []) + list(worldcover or [])
        a = assess_sample(map_tif, points, code_column=code_column, crs=crs, reference=reference or None,
                          out_json=out)
        oa = a["overall_accuracy"]
        typer.echo(f"{a['n_used']} of {a['n_points']} points ({a['design'].split(':')[0]}); reference: "
                   f"{a['reference_source']}\noverall accuracy {oa['estimate']:.3f} "
                   f"(95% CI {oa['ci95'][0]:.3f}-{oa['ci95'][1]:.3f})"
                   + "".join(f"; {k.replace('_', ' ')}: {v} left out" for k, v in a["excluded"].items() if v))
        return
    from lc.mapping.assess import evaluate_map

    m = evaluate_map(map_tif, worldcover=worldcover or None, truth=truth, out_json=out)
    typer.echo(f"agreement with the reference at every pixel: OA {m['overall_accuracy']:.3f}, "
               f"macro mIoU {m['miou']:.3f}, kappa {m['kappa']:.3f}")


@app.command()
@answered
def report(
    space: Annotated[Path, typer.Option(help="the study's search space YAML")] = Path("studies/demo.yaml"),
    study_name: Annotated[Optional[str], typer.Option("--study", help="default: the space's name")] = None,
    storage: Annotated[Optional[str], typer.Option(help="journal file path or RDB URL")] = None,
    map_tif: Annotated[Optional[Path], typer.Option("--map", help="an evaluated map of the new area")] = None,
    out: Annotated[Optional[Path], typer.Option(help="default: reports/<study>/")] = None,
) -> None:
    """Figures (PNG + SVG, with their data as CSV), report.md and a self-contained report.html."""
    from lc.reporting.report import build_report

    folder = build_report(space, out, map_tif if map_tif and map_tif.exists() else None, study_name, storage)
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


def _mount_acquire() -> None:
    from lc.cli.acquire import app as acquire_app

    app.add_typer(acquire_app, name="acquire", help="Download WorldCover tiles and Sentinel-2 products (network).")


_mount_acquire()

if __name__ == "__main__":
    app()
