"""Level harmonisation: make top-of-atmosphere (L1C) and surface (L2A) inputs comparable.

Models train on L1C and must work on L2A. Each method maps a scene's reflectance
(x 10000) per band using statistics of that same scene only, so it applies identically at
training and at prediction time:

- ``none``: reflectance as is (the model sees the L1C/L2A difference).
- ``scene_standardise``: per band, (x - scene mean) / scene std; removes additive path
  radiance and multiplicative transmittance differences, but also shifts with the scene's
  class composition.
- ``dark_object``: per band, x - the scene's dark-object value (its 1st percentile), the
  classic dark-object subtraction of path radiance (Chavez 1988); keeps reflectance units.

Missing bands (B10 in L2A) are filled after normalisation with 0, the training mean: the
model is taught to cope with that by the radiometric augmentation's B10 dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("none", "scene_standardise", "dark_object")
DARK_PERCENTILE = 1.0


@dataclass(frozen=True)
class SceneStats:
    """Per-band statistics of one scene's valid pixels (reflectance x 10000)."""

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dark: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SceneStats:
        return cls(**{k: tuple(v) for k, v in d.items()})


def sample_stride(height: int, width: int, max_pixels: int = 2_000_000) -> int:
    """Pixel stride of the scene-statistics sample: every 4th pixel, fewer on big scenes.

    Training and prediction sample a scene the same way, so they see the same statistics.
    """
    return max(4, math.ceil(math.sqrt(height * width / max_pixels)))


def scene_statistics(sample: np.ndarray, bands: tuple[str, ...]) -> SceneStats:
    """Statistics from a (n_pixels, n_bands) sample of a scene (0 = no data rows dropped)."""
    valid = sample[(sample > 0).all(axis=1)]
    if len(valid) == 0:
        raise ValueError("the scene has no valid pixels")
    columns = [valid[:, j] for j in range(valid.shape[1])]  # band by band: no float copy of the sample
    return SceneStats(
        bands=tuple(bands),
        mean=tuple(float(c.mean(dtype=np.float64)) for c in columns),
        std=tuple(max(float(c.std(dtype=np.float64)), 1.0) for c in columns),
        dark=tuple(float(np.percentile(c, DARK_PERCENTILE)) for c in columns),
    )


def harmonise_affine(method: str, stats: SceneStats) -> tuple[np.ndarray, np.ndarray]:
    """Every method is per-band affine: harmonised = x * scale + offset (``stats.bands`` order)."""
    n = len(stats.bands)
    if method == "none":
        return np.ones(n, np.float32), np.zeros(n, np.float32)
    if method == "scene_standardise":
        std = np.asarray(stats.std, np.float32)
        return 1 / std, -np.asarray(stats.mean, np.float32) / std
    if method == "dark_object":
        return np.ones(n, np.float32), -np.asarray(stats.dark, np.float32)
    raise ValueError(f"unknown harmonisation {method!r}; choose from {METHODS}")


def harmonise(x: np.ndarray, method: str, stats: SceneStats) -> np.ndarray:
    """Apply ``method`` to ``x`` (..., n_bands) float32, bands last, in ``stats.bands`` order."""
    scale, offset = harmonise_affine(method, stats)
    return x * scale + offset
