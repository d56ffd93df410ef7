"""Bringing 20 m and 60 m bands to the 10 m grid: interpolation or sharpening.

``sharpen`` (the default, best on Wald's protocol: bench/bench_sharpen.py) is regression-based
detail injection from the 10 m bands; ``nearest``, ``bilinear`` and ``cubic`` are plain
interpolation. All are pixel-area aligned.
"""

from __future__ import annotations

import cv2
import numpy as np

RESAMPLERS = ("nearest", "bilinear", "cubic", "sharpen")
DEFAULT_RESAMPLER = "sharpen"  # best on Wald's protocol (bench/bench_sharpen.py, README)
SAMPLES = 200_000  # pixels the injection weights are fitted on
_CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def fill_nodata(band: np.ndarray, valid: np.ndarray, passes: int = 3) -> np.ndarray:
    """Extend valid values a few pixels into no-data (float32), so interpolation kernels at
    the border of the swath see plausible values instead of zeros."""
    if valid.all():
        return band.astype(np.float32)
    values = np.where(valid, band, 0).astype(np.float32)
    weight = valid.astype(np.float32)
    for _ in range(passes):
        total = cv2.blur(values, (3, 3), borderType=cv2.BORDER_REFLECT)
        count = cv2.blur(weight, (3, 3), borderType=cv2.BORDER_REFLECT)
        grow = (weight == 0) & (count > 0)
        values[grow] = total[grow] / count[grow]
        weight[grow] = 1
    return values


def upsample(band: np.ndarray, factor: int, method: str) -> np.ndarray:
    """Resample a native band to ``factor`` x finer pixels, pixel-area aligned (float32)."""
    h, w = band.shape
    return cv2.resize(band.astype(np.float32), (w * factor, h * factor), interpolation=_CV2_INTERPOLATION[method])


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (float32)."""
    h, w = array.shape
    return cv2.resize(array.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)


class DetailInjector:
    """Sharpen coarse bands with detail from the fine bands (regression-based injection).

    For each coarse band a synthetic 'pan' is the least-squares combination of the fine
    bands that best predicts the band at its own resolution; the pan's high-pass detail
    (pan minus the same pan degraded and re-expanded bicubically) is added to the bicubic
    upsampling of the band. Built once per resolution ratio: the detail of each fine band
    is computed once, so each band then costs one upsampling and a weighted sum.
    """

    def __init__(self, fine: np.ndarray, valid: np.ndarray, factor: int):
        self.factor = factor
        self.degraded = np.stack([block_mean(b, factor) for b in fine])  # (k, h, w)
        self.detail = np.empty_like(fine)
        for i, (band, low) in enumerate(zip(fine, self.degraded)):
            np.subtract(band, upsample(low, factor, "cubic"), out=self.detail[i])
        self.valid_coarse = block_mean(valid.astype(np.float32), factor) > 0.999

    def __call__(self, coarse: np.ndarray) -> np.ndarray:
        weights = injection_weights(self.degraded, self.valid_coarse, coarse)
        return inject(upsample(coarse, self.factor, "cubic"), weights, self.detail)


def injection_weights(degraded: np.ndarray, valid_coarse: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Least-squares weights (one per fine band, then the intercept) that predict the coarse band
    from the degraded fine bands (k, h, w), fitted on about ``SAMPLES`` evenly spaced valid pixels."""
    index = np.flatnonzero(valid_coarse)
    index = index[:: max(1, len(index) // SAMPLES)]
    x = degraded.reshape(len(degraded), -1)[:, index].T
    design = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    weights, *_ = np.linalg.lstsq(design, coarse.reshape(-1)[index], rcond=None)
    return weights


def inject(ten: np.ndarray, weights: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """Add the weighted detail of the fine bands (k, H, W) to an upsampled coarse band, in place."""
    for weight, band in zip(weights[:-1], detail):
        cv2.scaleAdd(band, float(weight), ten, dst=ten)  # no full-size temporaries
    return ten


def sharpen(coarse: np.ndarray, factor: int, fine: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One coarse band to the fine grid with detail injected from ``fine`` (k, H, W)."""
    return DetailInjector(fine, valid, factor)(coarse)
