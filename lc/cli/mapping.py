"""The mapping commands of ``lc``: predict a product, map a region, draw a sample, evaluate a map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lc.cli.app import answered, app


def worldcover_tiles(tiles: list[Path] | None, folder: Path | None) -> list[Path]:
    """The tiles named, and every WorldCover tile of ``folder``."""
    from lc.sources.worldcover import tiles_in

    return list(tiles or []) + (tiles_in(folder) if folder else [])


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
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 | fp16 (default: predict.precision)")] = None,
    overwrite: bool = False,
    allow_pickle: Annotated[bool, typer.Option(help="load a model stored as a pickle (runs code from it)")] = False,
) -> None:
    """Map a product or scene with a registered model (streaming, blended tiles), then evaluate it."""
    from lc.config import PredictConfig, load_config
    from lc.mapping.predict import predict as run

    tiles = worldcover_tiles(worldcover, worldcover_dir)
    settings = load_config(experiment).predict if experiment else PredictConfig()
    if source is None:
        if experiment is None:
            raise ValueError("give a product or scene, or --experiment CONFIG")
        source, tiles = _predict_product(experiment, tiles)
    summary = run(model, source, out, worldcover=tiles or None, device=device,
                  tile=settings.chip_size if tile is None else tile,
                  overlap=settings.overlap if overlap is None else overlap,
                  batch_size=settings.batch_size if batch_size is None else batch_size, overwrite=overwrite,
                  allow_pickle=allow_pickle, precision=precision or settings.precision)
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


@app.command("map")
@answered
def map_region(
    region: Annotated[Path, typer.Argument(help="region YAML (products, out, model, worldcover_dir)")],
    scheduler: Annotated[Optional[str], typer.Option(help="address of a running Dask scheduler "
                                                          "[default: a local cluster sized to this machine]")] = None,
    workers: Annotated[Optional[int], typer.Option(help="workers of the local cluster [default: by cores, "
                                                        "memory and GPUs]")] = None,
    model: Annotated[Optional[str], typer.Option(help="MLflow model URI [default: the region's]")] = None,
) -> None:
    """Map every product of a region on Dask (resumable: maps of this model version are kept), then a
    mosaic per CRS and the region's agreement with WorldCover."""
    from lc.mapping.region import map_region as run

    state = run(region, scheduler=scheduler, workers=workers, model=model, echo=typer.echo)
    failed = [name for name, e in state["products"].items() if e["status"] == "failed"]
    typer.echo(f"mosaics: {', '.join(state['mosaics'])}" + (f"; agreement: {state['agreement']}" if "agreement" in
                                                            state else ""))
    if failed:
        typer.echo(f"{len(failed)} product(s) failed (see region.json): {', '.join(failed)}", err=True)
        raise typer.Exit(1)


@app.command()
@answered
def sample(
    map_tif: Annotated[Path, typer.Argument(help="a map written by `lc predict`, or a region's folder "
                                                 "(`lc map`): one design over all its maps")],
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
    map_tif: Annotated[Path, typer.Argument(help="a map written by `lc predict` (with --points: or a region's "
                                                 "folder written by `lc map`)")],
    truth: Annotated[Optional[Path], typer.Option(help="reference labels (e.g. a scene's label.tif, "
                                                       "<map>.truth.tif)")] = None,
    worldcover: Annotated[Optional[list[Path]], typer.Option(help="WorldCover tile(s)")] = None,
    worldcover_dir: Annotated[Optional[Path], typer.Option(help="take every WorldCover tile in this folder")] = None,
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

        reference = ([truth] if truth else []) + worldcover_tiles(worldcover, worldcover_dir)
        a = assess_sample(map_tif, points, code_column=code_column, crs=crs, reference=reference or None,
                          out_json=out)
        oa = a["overall_accuracy"]
        typer.echo(f"{a['n_used']} of {a['n_points']} points ({a['design'].split(':')[0]}); reference: "
                   f"{a['reference_source']}\noverall accuracy {oa['estimate']:.3f} "
                   f"(95% CI {oa['ci95'][0]:.3f}-{oa['ci95'][1]:.3f})"
                   + "".join(f"; {k.replace('_', ' ')}: {v} left out" for k, v in a["excluded"].items() if v))
        return
    from lc.mapping.assess import evaluate_map

    if map_tif.is_dir():
        raise ValueError(f"{map_tif}: a region's agreement at every pixel is its region.metrics.json (lc map); "
                         f"give --points to assess it on a sample")
    m = evaluate_map(map_tif, worldcover=worldcover_tiles(worldcover, worldcover_dir) or None, truth=truth,
                     out_json=out)
    typer.echo(f"agreement with the reference at every pixel: OA {m['overall_accuracy']:.3f}, "
               f"macro mIoU {m['miou']:.3f}, kappa {m['kappa']:.3f}")
