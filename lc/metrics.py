"""Accuracy metrics of a confusion matrix: shared by training (per epoch) and map assessment.

A confusion matrix has rows = reference (truth) and columns = map (prediction), in the order
of its class ``codes`` (WorldCover codes). Every undefined value is null, so results are
valid JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lc.worldcover import class_name


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den, NaN where den is 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def json_float(x: Any) -> Any:
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
    iou = ratio(tp, tp + fp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    precision, recall = ratio(tp, predicted), ratio(tp, support)
    chance = float(ratio(support.astype(float) @ predicted, float(n) ** 2))
    agreement = float(ratio(tp.sum(), n))
    per_class = {
        str(code): {
            "name": class_name(code),
            "iou": json_float(iou[k]),
            "f1": json_float(f1[k]),
            "precision": json_float(precision[k]),
            "recall": json_float(recall[k]),
            "support": int(support[k]),
            "predicted": int(predicted[k]),
        }
        for k, code in enumerate(codes)
    }
    return {
        "overall_accuracy": json_float(agreement),
        "miou": json_float(iou[present].mean()) if present.any() else None,
        "macro_f1": json_float(f1[present].mean()) if present.any() else None,
        "kappa": json_float(ratio(agreement - chance, 1.0 - chance)),
        "n_pixels": n,
        "n_classes_present": int(present.sum()),
        "miou_classes": [code for code, p in zip(codes, present) if p],  # the classes the macro means run over
        "per_class": per_class,
        "class_order": codes,
        "class_names": [class_name(c) for c in codes],
        "rows": "reference",
        "columns": "map",
        "confusion_matrix": cm.tolist(),
    }


def model_class_metrics(cm: np.ndarray, codes: Sequence[int], model_classes: Sequence[int]) -> dict:
    """Metrics over the classes a model can predict only, as training scores it: reference
    pixels of other classes are left out (training ignores them), and so are the classes."""
    keep = [i for i, code in enumerate(codes) if code in set(model_classes)]
    return metrics_from_confusion(np.asarray(cm)[np.ix_(keep, keep)], [codes[i] for i in keep])
