"""Wall-to-wall agreement of a map with reference labels on the same grid (WorldCover, or a
scene's labels): confusion matrix, per-class IoU, kappa and the class areas of both, streamed by
strips of rows.

This compares two maps at every pixel; it is not an accuracy assessment in the sense of
Olofsson et al. (2014), which needs a probability sample of reference points
(``lc.mapping.sampled``). So its areas are counts, with no intervals.

Conventions: ``codes`` are WorldCover class codes (``lc.worldcover``); 0 is no data. A
confusion matrix from :class:`ConfusionAccumulator` has rows = reference (truth) and columns =
map (prediction), in ``codes`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from lc.metrics import metrics_from_confusion, model_class_metrics
from lc.raster import pixel_area_m2, write_json_atomic
from lc.worldcover import CODES, NODATA, class_name

_CHUNK = 1 << 22  # pixels per bincount pass: bounds the temporaries of update() to ~40 MB


class ConfusionAccumulator:
    """Confusion matrix (rows = reference, columns = map) built up from pairs of code arrays.

    Pixels where either array is ``nodata`` are not counted in the matrix. ``map_counts``
    counts every mapped pixel (map != nodata), with or without reference: the map-class
    areas that the stratified area estimator needs.
    """

    def __init__(self, codes: Sequence[int], nodata: int = NODATA) -> None:
        self.codes = tuple(int(c) for c in codes)
        self.nodata = int(nodata)
        bad = [c for c in self.codes if not 0 <= c <= 255 or c == self.nodata]
        if bad or len(set(self.codes)) != len(self.codes) or not 0 <= self.nodata <= 255:
            raise ValueError(f"codes must be distinct uint8 values other than nodata={nodata}: {list(codes)}")
        self._pairs = np.zeros((256, 256), dtype=np.int64)  # [truth value, map value]

    def update(self, truth: np.ndarray, pred: np.ndarray) -> None:
        """Add the pixels of two aligned uint8 code arrays (any shape, same shape)."""
        if truth.shape != pred.shape:
            raise ValueError(f"truth and map differ in shape: {truth.shape} vs {pred.shape}")
        if truth.dtype != np.uint8 or pred.dtype != np.uint8:
            raise TypeError(f"truth and map must be uint8 code arrays, got {truth.dtype} and {pred.dtype}")
        pairs = _pair_histogram(truth.reshape(-1), pred.reshape(-1))
        self._check_codes(pairs)
        self._pairs += pairs

    @property
    def matrix(self) -> np.ndarray:
        """int64 (K, K) counts, rows = reference, columns = map, in ``codes`` order."""
        idx = np.array(self.codes, dtype=np.intp)
        return self._pairs[np.ix_(idx, idx)].copy()

    @property
    def map_counts(self) -> np.ndarray:
        """int64 (K,) mapped pixels per class, including those without reference."""
        return self._pairs[:, list(self.codes)].sum(axis=0)

    def _check_codes(self, pairs: np.ndarray) -> None:
        known = {*self.codes, self.nodata}
        for what, counts in (("truth", pairs.sum(axis=1)), ("map", pairs.sum(axis=0))):
            unknown = sorted(set(np.flatnonzero(counts).tolist()) - known)
            if unknown:
                raise ValueError(
                    f"{what} holds codes that are not classes here: {unknown} "
                    f"(classes: {list(self.codes)}, nodata: {self.nodata})"
                )


def _pair_histogram(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(256, 256) counts of (truth, map) value pairs of two flat uint8 arrays, in chunks."""
    hist = np.zeros(1 << 16, dtype=np.int64)
    for start in range(0, truth.size, _CHUNK):
        pair = truth[start : start + _CHUNK].astype(np.uint16)
        pair <<= 8
        pair |= pred[start : start + _CHUNK]
        hist += np.bincount(pair, minlength=1 << 16)
    return hist.reshape(256, 256)


KIND = "wall-to-wall agreement of two maps at every pixel (not a sample-based accuracy assessment)"


def agreement(acc: ConfusionAccumulator, pixel_area: float) -> dict:
    """Metrics and class areas of everything an accumulator has seen."""
    report = {"kind": KIND, **metrics_from_confusion(acc.matrix, acc.codes)}
    report["pixel_area_m2"] = float(pixel_area)
    reference = acc.matrix.sum(axis=1)
    report["class_areas"] = {
        str(code): {"name": class_name(code), "mapped_pixels": int(m), "mapped_ha": float(m * pixel_area / 1e4),
                    "reference_pixels": int(r), "reference_ha": float(r * pixel_area / 1e4)}
        for code, m, r in zip(acc.codes, acc.map_counts, reference)
    }
    return report


def evaluate_arrays(truth: np.ndarray, pred: np.ndarray, codes: Sequence[int], pixel_area: float) -> dict:
    """Metrics (see :func:`metrics_from_confusion`) plus ``class_areas`` of two code arrays.

    ``mapped_pixels`` counts every mapped pixel, also those without reference;
    ``reference_pixels`` those with both. ``pixel_area`` in m^2 (100 for Sentinel-2 10 m).
    """
    acc = ConfusionAccumulator(codes)
    acc.update(truth, pred)
    return agreement(acc, pixel_area)


def _check_same_grid(a: rasterio.DatasetReader, b: rasterio.DatasetReader) -> None:
    problems = []
    if (a.width, a.height) != (b.width, b.height):
        problems.append(f"size {a.width}x{a.height} vs {b.width}x{b.height}")
    if a.crs != b.crs:
        problems.append(f"CRS {a.crs} vs {b.crs}")
    if not a.transform.almost_equals(b.transform):
        problems.append(f"transform {tuple(a.transform)[:6]} vs {tuple(b.transform)[:6]}")
    if a.dtypes[0] != "uint8" or b.dtypes[0] != "uint8":
        problems.append(f"dtype {a.dtypes[0]} vs {b.dtypes[0]} (both must be uint8)")
    if problems:
        raise ValueError(f"{a.name} and {b.name} are not aligned uint8 rasters: " + "; ".join(problems))


def evaluate_rasters(map_tif: Path, truth_tif: Path, out_json: Path, block_rows: int = 1024,
                     model_classes: Sequence[int] | None = None) -> dict:
    """Evaluate a map GeoTIFF against ground truth on the same grid, streaming strips of rows.

    Both rasters are uint8 WorldCover codes (0 = no data) on the same grid; memory stays
    bounded by ``block_rows`` full-width rows of each. Writes ``out_json`` atomically and
    returns the same dict: :func:`evaluate_arrays`' keys plus ``map`` and ``truth`` paths.
    The macro means run over every class of the reference or the map (``miou_classes``);
    with ``model_classes`` (the classes the model can predict) the metrics of those classes
    alone, as training scores them, come as ``model_classes_metrics``.
    """
    acc = ConfusionAccumulator(CODES)
    with rasterio.open(map_tif) as mp, rasterio.open(truth_tif) as tr:
        _check_same_grid(mp, tr)
        pixel_area = pixel_area_m2(mp)
        for row in range(0, mp.height, block_rows):
            window = Window(0, row, mp.width, min(block_rows, mp.height - row))
            acc.update(tr.read(1, window=window), mp.read(1, window=window))
    report = {"map": str(map_tif), "truth": str(truth_tif), **agreement(acc, pixel_area)}
    if model_classes is not None:
        report["model_classes"] = [int(c) for c in model_classes]
        within = model_class_metrics(acc.matrix, acc.codes, model_classes)
        report["model_classes_metrics"] = {k: within[k] for k in ("overall_accuracy", "miou", "macro_f1", "kappa",
                                                                  "n_pixels", "miou_classes")}
    write_json_atomic(report, Path(out_json))
    return report
