"""``lc evaluate``: a map against reference labels at every pixel of the map's own grid
(wall-to-wall agreement), streamed by strips.

WorldCover tiles are reprojected to the map grid exactly as ``prepare`` does it (nearest,
mosaicked) strip by strip into ``<map>.truth.tif``; then ``lc.mapping.accuracy.evaluate_rasters``
gives the agreement metrics and class areas, and the figures are drawn beside the map. The
sample-based assessment is ``lc.mapping.sampled``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from lc.mapping.accuracy import evaluate_rasters
from lc.raster import Grid, atomic_output, open_classmap, write_category_names
from lc.sentinel2.groundtruth import check_truth_covers, labels_for_grid

STRIP_ROWS = 1024


def truth_path(map_tif: Path) -> Path:
    return map_tif.with_name(map_tif.stem + ".truth.tif")


def truth_on_map_grid(map_tif: Path, worldcover: list[Path]) -> Path:
    """Write the ground truth reprojected onto the map's grid, a strip at a time."""
    out = truth_path(map_tif)
    with rasterio.open(map_tif) as mp:
        grid = Grid(mp.crs, mp.transform, mp.height, mp.width)
        check_truth_covers(worldcover, grid)
        with atomic_output(out, overwrite=True) as tmp:
            with open_classmap(tmp, grid.crs, grid.transform, grid.width, grid.height) as dst:
                for row in range(0, grid.height, STRIP_ROWS):
                    window = Window(0, row, grid.width, min(STRIP_ROWS, grid.height - row))
                    strip = Grid(grid.crs, mp.window_transform(window), int(window.height), grid.width)
                    labels, _ = labels_for_grid(list(worldcover), strip)
                    labels[mp.read(1, window=window) == 0] = 0  # no map, no reference
                    dst.write(labels, 1, window=window)
            write_category_names(tmp)
    return out


def evaluate_map(map_tif: Path, *, worldcover: list[Path] | None = None, truth: Path | None = None,
                 out_json: Path | None = None, figures: bool = True,
                 model_classes: list[int] | None = None) -> dict:
    """Agreement metrics, class areas and figures of a map against WorldCover tiles or a label raster.

    ``model_classes`` (default: the ``classes`` that ``lc predict`` recorded in ``<map>.json``)
    adds the metrics of the classes the model can predict, as training scores them.
    """
    from lc.figures import plot_confusion_matrix, plot_map_comparison
    from lc.mapping.area_figures import plot_class_areas

    map_tif = Path(map_tif)
    if (worldcover is None) == (truth is None):
        raise ValueError("give either WorldCover tiles or a truth raster on the map's grid")
    truth = truth_on_map_grid(map_tif, worldcover) if worldcover else Path(truth)
    out_json = Path(out_json or map_tif.with_name(map_tif.stem + ".metrics.json"))
    record = map_tif.with_name(map_tif.stem + ".json")
    if model_classes is None and record.exists():
        model_classes = json.loads(record.read_text()).get("classes")
    report = evaluate_rasters(map_tif, truth, out_json, model_classes=model_classes)
    if figures:
        stem = map_tif.with_name(map_tif.stem)
        codes = report["class_order"]
        cm = np.asarray(report["confusion_matrix"])
        for normalise in (False, True):
            suffix = "_normalised" if normalise else ""
            plot_confusion_matrix(cm, codes, Path(f"{stem}.confusion{suffix}.png"), normalise=normalise,
                                  title=f"{map_tif.name} vs ground truth{' (row-normalised)' if normalise else ''}")
        plot_class_areas(report, Path(f"{stem}.areas.png"))
        plot_map_comparison(map_tif, truth, Path(f"{stem}.comparison.png"))
    return report
