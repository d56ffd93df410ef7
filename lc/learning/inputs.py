"""What the model sees: scene pixels -> harmonised, normalised 13-band input; labels -> class indices.

Normalisation is the per-band mean and std of the *training* chips after harmonisation; it
travels with the model in its contract, so prediction feeds the model exactly as training did.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from lc.config import DataConfig
from lc.learning.harmonise import SceneStats, harmonise, harmonise_affine
from lc.learning.scenes import SceneArrays
from lc.learning.splits import Chip
from lc.sentinel2.bands import BAND_ID, BAND_NAMES

IGNORE = 255  # the class index of pixels without a class: no loss, no metric


class Normalisation(BaseModel):
    """Per-band mean/std (the 13 model bands, in model order) applied after harmonisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    bands: tuple[str, ...] = BAND_NAMES
    mean: tuple[float, ...]
    std: tuple[float, ...]


def to_model_bands(x: np.ndarray, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, n) in scene band order -> (H, W, 13) in model order, plus which bands are present."""
    out = np.zeros((*x.shape[:-1], len(BAND_NAMES)), np.float32)
    present = np.zeros(len(BAND_NAMES), bool)
    for j, band in enumerate(bands):
        out[..., BAND_ID[band]] = x[..., j]
        present[BAND_ID[band]] = True
    return out, present


def model_input(raw: np.ndarray, scene_bands: tuple[str, ...], stats: SceneStats, harmonisation: str,
                norm: Normalisation) -> np.ndarray:
    """Scene pixels (H, W, n) uint16 -> model input (H, W, 13) float32.

    Harmonise with the scene's own statistics, reorder to the 13 model bands, normalise
    with the training statistics, fill missing bands (B10 of L2A) and no-data with 0.
    Harmonisation and normalisation are both per-band affine, so they are applied as one.
    """
    h_scale, h_offset = harmonise_affine(harmonisation, stats)
    source = np.array([scene_bands.index(b) if b in scene_bands else 0 for b in BAND_NAMES])
    present = np.array([b in scene_bands for b in BAND_NAMES])
    mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    scale = np.where(present, h_scale[source] / std, 0).astype(np.float32)
    offset = np.where(present, (h_offset[source] - mean) / std, 0).astype(np.float32)
    x = raw[..., source].astype(np.float32)
    x *= scale
    x += offset
    x[(raw == 0).all(axis=-1)] = 0.0
    return x


def fit_normalisation(scenes: list[SceneArrays], chips: list[Chip], cfg: DataConfig, max_chips: int = 2000,
                      reflectance: bool = False) -> Normalisation:
    """Mean/std per model band over the valid pixels of training chips (after harmonisation).

    ``reflectance``: encoders pretrained on reflectance (SSL4EO) get x / 10000 instead.
    """
    if reflectance:
        return Normalisation(mean=(0.0,) * len(BAND_NAMES), std=(10000.0,) * len(BAND_NAMES))
    step = max(1, len(chips) // max_chips)
    total = np.zeros(len(BAND_NAMES))
    total_sq = np.zeros(len(BAND_NAMES))
    count = np.zeros(len(BAND_NAMES))
    c = cfg.chip_size
    for chip in chips[::step]:
        scene = scenes[chip.scene]
        raw = np.asarray(scene.image[chip.row : chip.row + c, chip.col : chip.col + c])
        valid = (raw > 0).all(axis=-1)
        x, present = to_model_bands(harmonise(raw[valid].astype(np.float32), cfg.harmonisation, scene.stats), scene.bands)
        total[present] += x[:, present].sum(axis=0)
        total_sq[present] += (x[:, present].astype(np.float64) ** 2).sum(axis=0)
        count[present] += len(x)
    seen = count > 0
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    std[~seen] = 1.0  # a band absent from all training chips (B10 of L2A) passes through as 0
    return Normalisation(mean=tuple(map(float, mean)), std=tuple(map(float, std)))
