"""Quality of bringing coarse bands to a finer grid: Wald's protocol, ERGAS and SAM."""

from __future__ import annotations

import numpy as np

from lc.sentinel2.resample import block_mean, sharpen, upsample


def ergas(reference: np.ndarray, estimate: np.ndarray, ratio: float) -> float:
    """ERGAS (Wald 2000): 100 * (h/l) * sqrt(mean_k (RMSE_k / mean_k)^2); lower is better.

    ``reference``/``estimate`` are (bands, H, W); ``ratio`` is fine/coarse pixel size (0.5).
    """
    rmse = np.sqrt(((reference - estimate) ** 2).mean(axis=(1, 2)))
    means = reference.mean(axis=(1, 2))
    return float(100 * ratio * np.sqrt(np.mean((rmse / means) ** 2)))


def sam_degrees(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean spectral angle between reference and estimate pixel vectors, in degrees."""
    dot = (reference * estimate).sum(axis=0)
    norms = np.linalg.norm(reference, axis=0) * np.linalg.norm(estimate, axis=0)
    angle = np.arccos(np.clip(dot / np.maximum(norms, 1e-12), -1, 1))
    return float(np.degrees(angle).mean())


def wald_protocol(fine: np.ndarray, coarse: np.ndarray, method: str) -> dict[str, float]:
    """Degrade the fine (k, H, W) and coarse (m, H/2, W/2) bands by 2, bring the degraded
    coarse bands back with ``method`` using the degraded fine bands, and compare with the
    original coarse bands."""
    fine_low = np.stack([block_mean(b, 2) for b in fine])
    coarse_low = np.stack([block_mean(b, 2) for b in coarse])
    valid = np.ones(fine_low.shape[1:], bool)
    estimate = np.stack([
        sharpen(band, 2, fine_low, valid) if method == "sharpen" else upsample(band, 2, method)
        for band in coarse_low
    ])
    reference = coarse.astype(np.float32)
    return {"ergas": ergas(reference, estimate, 0.5), "sam": sam_degrees(reference, estimate)}
