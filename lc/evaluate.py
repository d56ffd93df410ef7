"""Map accuracy: confusion matrix, per-class and macro metrics, stratified area estimates.

Conventions: ``codes`` are WorldCover class codes (``lc.legend``); 0 is no data. A confusion
matrix from :class:`ConfusionAccumulator` has rows = reference (truth) and columns = map
(prediction), in ``codes`` order. The area estimator of Olofsson et al. (2014) works on the
transpose (rows = map class = stratum); :func:`area_estimates` makes the caller say which
orientation it passes.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from lc.legend import BY_CODE, CODES, NODATA

Z95 = 1.96  # the normal quantile the paper uses for 95% intervals
M2_PER_HA = 10_000.0
_CHUNK = 1 << 22  # pixels per bincount pass: bounds the temporaries of update() to ~40 MB


def class_name(code: int) -> str:
    """The legend name of a WorldCover code, or the code itself for classes outside the legend."""
    return BY_CODE[code].name if code in BY_CODE else str(code)


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


# --------------------------------------------------------------------------- metrics


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den, NaN where den is 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _json_value(x: Any) -> Any:
    """A float for JSON: None for NaN/inf (JSON has no NaN)."""
    x = float(x)
    return x if np.isfinite(x) else None


def metrics_from_confusion(cm: np.ndarray, codes: Sequence[int]) -> dict:
    """Accuracy metrics of a confusion matrix with rows = reference, columns = map.

    Overall accuracy, Cohen's kappa, and the macro (unweighted) means of IoU and F1 over the
    classes present in the reference or the map; a class absent from both has null metrics and
    is left out of the means. Precision is null for a class never mapped, recall for a class
    absent from the reference. Every undefined value is null (valid JSON).
    """
    cm = np.asarray(cm, dtype=np.int64)
    codes = [int(c) for c in codes]
    if cm.shape != (len(codes), len(codes)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {len(codes)} codes")
    n = int(cm.sum())
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    fp, fn = predicted - tp, support - tp
    iou = _ratio(tp, tp + fp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    chance = float(_ratio(support.astype(float) @ predicted, float(n) ** 2))
    agreement = float(_ratio(tp.sum(), n))
    per_class = {
        str(code): {
            "name": class_name(code),
            "iou": _json_value(iou[k]),
            "f1": _json_value(f1[k]),
            "precision": _json_value(precision[k]),
            "recall": _json_value(recall[k]),
            "support": int(support[k]),
            "predicted": int(predicted[k]),
        }
        for k, code in enumerate(codes)
    }
    return {
        "overall_accuracy": _json_value(agreement),
        "miou": _json_value(iou[present].mean()) if present.any() else None,
        "macro_f1": _json_value(f1[present].mean()) if present.any() else None,
        "kappa": _json_value(_ratio(agreement - chance, 1.0 - chance)),
        "n_pixels": n,
        "n_classes_present": int(present.sum()),
        "per_class": per_class,
        "class_order": codes,
        "class_names": [class_name(c) for c in codes],
        "rows": "reference",
        "columns": "map",
        "confusion_matrix": cm.tolist(),
    }


# ------------------------------------------------------------------- area estimation


def _interval(estimate: float, se: float, scale: float = 1.0) -> dict:
    """``{"estimate", "se", "ci95": [low, high]}`` (null where undefined), times ``scale``."""
    est, s = estimate * scale, se * scale
    return {
        "estimate": _json_value(est),
        "se": _json_value(s),
        "ci95": [_json_value(est - Z95 * s), _json_value(est + Z95 * s)],
    }


def area_estimates(
    counts: np.ndarray,
    map_pixel_counts: np.ndarray,
    pixel_area: float,
    codes: Sequence[int],
    *,
    reference_rows: bool,
) -> dict:
    """Stratified estimates of class areas and accuracies, strata = map classes.

    Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A.
    (2014). Good practices for estimating area and assessing accuracy of land change.
    Remote Sensing of Environment 148: 42-57; its section 5 is the worked example the tests
    reproduce. With ``n_ij`` the sample counts (map class
    i, reference class j), ``n_i.`` the sample size of stratum i, ``N_i`` its mapped pixels and
    ``W_i = N_i / sum(N)``:

    - area proportions ``p_ij = W_i n_ij / n_i.`` (eq. 4); from them overall accuracy
      ``O = sum_j p_jj``, user's accuracy ``U_i = p_ii / p_i.``, producer's ``P_j = p_jj / p_.j``;
    - ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)`` (eq. 5);
    - ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)`` (eq. 6);
    - ``V(P_j) = [N_j.^2 (1 - P_j)^2 U_j (1 - U_j) / (n_j. - 1)
      + P_j^2 sum_{i != j} N_i.^2 (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1)] / N_.j^2``
      with ``N_.j = sum_i N_i. n_ij / n_i.`` (eq. 7; computed with W in place of N, the same);
    - area proportion of reference class k ``p_.k = sum_i W_i n_ik / n_i.`` (eq. 9), its
      standard error ``S(p_.k) = sqrt(sum_i W_i^2 (n_ik/n_i.)(1 - n_ik/n_i.) / (n_i. - 1))``
      (eq. 10), and the area ``A_k = A p_.k`` with ``S(A_k) = A S(p_.k)`` (eqs. 9-11 together);
      every 95% interval is estimate +- 1.96 SE, unclipped, as in the paper.

    Strata that cannot follow these formulas are handled so, and listed in the result:

    - ``n_i. = 0`` with ``N_i > 0`` (``unsampled_strata``): nothing is known of what the stratum
      holds on the ground, so it is left out of the population: W is taken over the sampled
      strata, the estimated areas add up to their mapped area (``population_area_m2``) and the
      accuracies refer to them. Its user's accuracy is null.
    - ``n_i. = 1`` (``strata_without_variance``): its within-stratum variance cannot be
      estimated; its terms are left out of every variance sum (so those SEs are lower bounds)
      and its user's accuracy SE is null.

    Args:
        counts: (K, K) sample counts. With ``reference_rows=True`` rows are reference classes
            (the layout of :class:`ConfusionAccumulator`); with ``False`` rows are map classes,
            as in the paper's Table 8. Keyword-only and without default so that every caller
            states it.
        map_pixel_counts: (K,) mapped pixels of each class over the whole map.
        pixel_area: area of one pixel in m^2.
        codes: the K class codes, the order of rows, columns and counts.

    Note: with every labelled pixel of a scene as "sample" (not a random sample) the SEs
    describe the estimator's sampling variance only under that assumption; spatially
    clustered reference makes them optimistic.
    """
    n = np.asarray(counts, dtype=float)
    n = n.T if reference_rows else n
    mapped = np.asarray(map_pixel_counts, dtype=float)
    codes = [int(c) for c in codes]
    if n.shape != (len(codes), len(codes)) or mapped.shape != (len(codes),):
        raise ValueError(f"counts {n.shape} and map_pixel_counts {mapped.shape} must fit {len(codes)} codes")
    n_i = n.sum(axis=1)
    if np.any((n_i > 0) & (mapped <= 0)):
        raise ValueError("a class has samples but no mapped pixels: counts and map_pixel_counts disagree")
    sampled = n_i > 0
    population_px = mapped[sampled].sum()
    weight = np.where(sampled, _ratio(mapped, population_px), 0.0)
    f = np.nan_to_num(_ratio(n, n_i[:, None]))  # n_ij / n_i., 0 in unsampled strata
    p = weight[:, None] * f  # eq. 4
    p_ref = p.sum(axis=0)  # eq. 9
    users = _ratio(np.diag(p), weight)
    producers = _ratio(np.diag(p), p_ref)
    dof = np.where(n_i > 1, n_i - 1, np.inf)  # n_i. <= 1: no variance term (see docstring)
    stratum_var = f * (1 - f) / dof[:, None]  # (n_ij/n_i.)(1 - n_ij/n_i.)/(n_i. - 1)
    var_users = np.where(n_i > 1, np.diag(stratum_var), np.nan)  # eq. 6
    var_overall = np.nansum(weight**2 * var_users)  # eq. 5
    terms = weight[:, None] ** 2 * stratum_var
    var_p_ref = terms.sum(axis=0)  # eq. 10 squared
    own = weight**2 * (1 - producers) ** 2 * np.nan_to_num(var_users)
    others = terms.sum(axis=0, where=~np.eye(len(codes), dtype=bool))  # strata i != j
    var_producers = _ratio(own + producers**2 * others, p_ref**2)  # eq. 7
    per_class = {}
    for k, code in enumerate(codes):
        area_px, area_se = p_ref[k] * population_px, np.sqrt(var_p_ref[k]) * population_px
        per_class[str(code)] = {
            "name": class_name(code),
            "mapped_pixels": int(mapped[k]),
            "mapped_area_m2": float(mapped[k] * pixel_area),
            "mapped_area_ha": float(mapped[k] * pixel_area / M2_PER_HA),
            "sample_count": int(n_i[k]),
            "area_proportion": _interval(p_ref[k], np.sqrt(var_p_ref[k])),
            "area_pixels": _interval(area_px, area_se),
            "area_m2": _interval(area_px, area_se, pixel_area),
            "area_ha": _interval(area_px, area_se, pixel_area / M2_PER_HA),
            "users_accuracy": _interval(users[k], np.sqrt(var_users[k])),
            "producers_accuracy": _interval(producers[k], np.sqrt(var_producers[k])),
        }
    return {
        "method": "stratified estimator, strata = map classes (Olofsson et al. 2014, RSE 148:42-57)",
        "class_order": codes,
        "class_names": [class_name(c) for c in codes],
        "pixel_area_m2": float(pixel_area),
        "mapped_area_m2": float(mapped.sum() * pixel_area),
        "population_area_m2": float(population_px * pixel_area),
        "unsampled_strata": [c for c, m, s in zip(codes, mapped, sampled) if m > 0 and not s],
        "strata_without_variance": [c for c, k in zip(codes, n_i) if k == 1],
        "overall_accuracy": _interval(np.trace(p) if sampled.any() else np.nan, np.sqrt(var_overall)),
        "per_class": per_class,
        "error_matrix": {"rows": "map", "columns": "reference", "area_proportions": p.tolist()},
    }


# ------------------------------------------------------------------------ evaluation


def _report(acc: ConfusionAccumulator, pixel_area: float) -> dict:
    """Metrics and area estimates of everything an accumulator has seen."""
    report = metrics_from_confusion(acc.matrix, acc.codes)
    report["pixel_area_m2"] = float(pixel_area)
    report["area_estimates"] = area_estimates(
        acc.matrix, acc.map_counts, pixel_area, acc.codes, reference_rows=True
    )
    return report


def evaluate_arrays(truth: np.ndarray, pred: np.ndarray, codes: Sequence[int], pixel_area: float) -> dict:
    """Metrics (see :func:`metrics_from_confusion`) plus ``area_estimates`` of two code arrays.

    The map pixel counts behind the area estimates include every mapped pixel, also those
    without reference. ``pixel_area`` in m^2 (100 for Sentinel-2 10 m).
    """
    acc = ConfusionAccumulator(codes)
    acc.update(truth, pred)
    return _report(acc, pixel_area)


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


def _pixel_area_m2(src: rasterio.DatasetReader) -> float:
    """Area of one pixel in m^2 from the transform; the CRS must be projected."""
    if src.crs is None or not src.crs.is_projected:
        raise ValueError(f"{src.name}: area estimates need a projected CRS, got {src.crs}")
    metres = src.crs.linear_units_factor[1]
    t = src.transform
    return abs(t.a * t.e - t.b * t.d) * metres**2


def _write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def evaluate_rasters(map_tif: Path, truth_tif: Path, out_json: Path, block_rows: int = 1024) -> dict:
    """Evaluate a map GeoTIFF against ground truth on the same grid, streaming strips of rows.

    Both rasters are uint8 WorldCover codes (0 = no data) on the same grid; memory stays
    bounded by ``block_rows`` full-width rows of each. Writes ``out_json`` atomically and
    returns the same dict: :func:`evaluate_arrays`' keys plus ``map`` and ``truth`` paths.
    """
    acc = ConfusionAccumulator(CODES)
    with rasterio.open(map_tif) as mp, rasterio.open(truth_tif) as tr:
        _check_same_grid(mp, tr)
        pixel_area = _pixel_area_m2(mp)
        for row in range(0, mp.height, block_rows):
            window = Window(0, row, mp.width, min(block_rows, mp.height - row))
            acc.update(tr.read(1, window=window), mp.read(1, window=window))
    report = {"map": str(map_tif), "truth": str(truth_tif), **_report(acc, pixel_area)}
    _write_json_atomic(report, Path(out_json))
    return report
