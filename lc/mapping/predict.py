"""Map a scene with a registered model: ``lc predict`` (product or scene in, map out).

The model's contract (band order, harmonisation, normalisation, classes) drives everything;
the scene goes through ``lc.mapping.tiling`` (blended tiles, bounded memory); no-data in
gives no-data out. Outputs are Cloud-Optimised GeoTIFFs, written atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from lc.learning.contract import ModelContract
from lc.learning.hardware import inference_dtype, precision_name
from lc.learning.harmonise import SceneStats, sample_stride, scene_statistics
from lc.mapping.tiling import TiledPredictor, pick_device
from lc.raster import Grid, atomic_output, open_classmap, to_cog, write_json_atomic
from lc.worldcover import index_to_code_lut

log = logging.getLogger(__name__)
CONFIDENCE_NODATA = 255
GDAL_CACHE_MB = 128  # GDAL's block cache would otherwise grow to 5% of RAM with the scene


def scene_stats_streaming(src: rasterio.DatasetReader, stride: int, rows_per_read: int = 512) -> SceneStats:
    """Scene statistics from every ``stride``-th pixel, read a strip at a time."""
    rows_per_read -= rows_per_read % stride
    parts = []
    for row in range(0, src.height, rows_per_read):
        window = Window(0, row, src.width, min(rows_per_read, src.height - row))
        parts.append(src.read(window=window)[:, ::stride, ::stride].reshape(src.count, -1).T)
    return scene_statistics(np.concatenate(parts), tuple(src.descriptions))


def _open_confidence(path: Path, grid: Grid):
    return rasterio.open(path, "w", driver="GTiff", dtype="uint8", count=1, nodata=CONFIDENCE_NODATA, tiled=True,
                         blockxsize=512, blockysize=512, crs=grid.crs, transform=grid.transform,
                         width=grid.width, height=grid.height)


def confidence_path(map_tif: Path) -> Path:
    return map_tif.with_name(map_tif.stem + ".confidence.tif")


def predict_scene(model: torch.nn.Module, contract: ModelContract, scene: Path, out: Path, *, device: str = "auto",
                  tile: int = 256, overlap: int = 64, batch_size: int = 8, overwrite: bool = False,
                  precision: str = "auto") -> Path:
    """Write MAP.tif (COG, WorldCover codes) and MAP.confidence.tif for a scene bundle; ``precision``:
    see :func:`lc.learning.hardware.inference_dtype`."""
    lut = index_to_code_lut(contract.codes)
    for target in (out, confidence_path(out)):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(scene / "image.tif") as src:
        contract.check_scene_bands(tuple(src.descriptions), scene)
        grid = Grid(src.crs, src.transform, src.height, src.width)
        stats = scene_stats_streaming(src, sample_stride(src.height, src.width)).with_scene(
            json.loads((scene / "scene.json").read_text()))
        predictor = TiledPredictor(model, contract, device, tile, overlap, batch_size, precision)
        with atomic_output(out, overwrite=True) as map_tmp, atomic_output(confidence_path(out), overwrite=True) as conf_tmp:
            staging = map_tmp.with_name("stream.tif")  # uncompressed: the COG copy compresses once
            conf_staging = conf_tmp.with_name("stream.tif")
            with open_classmap(staging, grid.crs, grid.transform, grid.width, grid.height, compress="none") as dst, \
                    _open_confidence(conf_staging, grid) as conf:

                def write(row: int, index: np.ndarray, probability: np.ndarray, nodata: np.ndarray) -> None:
                    classes = lut[index]
                    classes[nodata] = 0
                    confidence = np.rint(probability * 100).astype(np.uint8)
                    confidence[nodata] = CONFIDENCE_NODATA
                    window = Window(0, row, grid.width, len(classes))
                    dst.write(classes, 1, window=window)
                    conf.write(confidence, 1, window=window)

                predictor.run(src, stats, write)
            to_cog(staging, map_tmp)
            to_cog(conf_staging, conf_tmp, category_names=False)
            for staged in (staging, conf_staging):
                staged.unlink()
    return out


def record_path(map_tif: Path) -> Path:
    """``MAP.json``: the model and version a map was made with, written once the map is finished."""
    return map_tif.with_name(map_tif.stem + ".json")


def evaluation_outputs(map_tif: Path) -> list[Path]:
    """Files the evaluations write beside a map (``lc.mapping.assess``, ``lc.mapping.sampled``): never left from
    an older map."""
    stem = map_tif.with_name(map_tif.stem)
    names = ("truth.tif", "truth.tif.aux.xml", "metrics.json", "areas.png", "areas.csv", "comparison.png",
             "comparison.csv", "confusion.png", "confusion.csv", "confusion_normalised.png", "confusion_normalised.csv",
             "assessment.json", "assessment_areas.png", "assessment_areas.csv", "assessment_accuracy.png",
             "assessment_accuracy.csv")
    return [Path(f"{stem}.{name}") for name in names]


def predict(model_uri: str, source: Path, out: Path, *, worldcover: list[Path] | None = None, device: str = "auto",
            tile: int = 256, overlap: int = 64, batch_size: int = 8, overwrite: bool = False,
            allow_pickle: bool = False, precision: str = "auto") -> dict:
    """``lc predict``: a product (prepared on the fly) or a scene bundle -> map (+ evaluation).

    Beside ``MAP.tif``: ``MAP.json`` records the model URI and the version it resolved to, and the
    precision the network ran in; an evaluation of an earlier map at the same path is removed,
    never paired with the new map.
    """
    from lc.figures import plot_map_quicklook
    from lc.mapping.assess import evaluate_map
    from lc.sentinel2.groundtruth import check_truth_covers
    from lc.sentinel2.prepare import prepare
    from lc.tracking.models import load_model, resolve_model

    out = Path(out)
    for target in (out, confidence_path(out)):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    model, contract = load_model(model_uri, allow_pickle)
    source = Path(source)
    temporary = None
    if not (source / "image.tif").exists():
        temporary = out.parent / f".{out.stem}.scene"
        shutil.rmtree(temporary, ignore_errors=True)
        scene = prepare(source, temporary, method=contract.resampling)
    else:
        scene = source
    try:
        if worldcover:
            with rasterio.open(scene / "image.tif") as src:
                check_truth_covers(worldcover, Grid(src.crs, src.transform, src.height, src.width))
        for stale in [record_path(out), *evaluation_outputs(out)]:
            stale.unlink(missing_ok=True)
        predict_scene(model, contract, scene, out, device=device, tile=tile, overlap=overlap,
                      batch_size=batch_size, overwrite=overwrite, precision=precision)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    plot_map_quicklook(out, out.with_suffix(".png"))
    summary = {"map": str(out), "confidence": str(confidence_path(out)), "quicklook": str(out.with_suffix(".png")),
               "model": model_uri, **resolve_model(model_uri), "source": str(source), "classes": list(contract.codes),
               "precision": precision_name(inference_dtype(precision, pick_device(device)))}
    metrics = evaluate_map(out, worldcover=worldcover, model_classes=list(contract.codes)) if worldcover else None
    write_json_atomic(summary, record_path(out))  # last: a map with its record is finished
    return summary | ({"metrics": metrics} if metrics else {})
