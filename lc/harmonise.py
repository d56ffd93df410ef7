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


def scene_statistics(sample: np.ndarray, bands: tuple[str, ...]) -> SceneStats:
    """Statistics from a (n_pixels, n_bands) sample of a scene (0 = no data rows dropped)."""
    valid = sample[(sample > 0).all(axis=1)].astype(np.float64)
    if len(valid) == 0:
        raise ValueError("the scene has no valid pixels")
    return SceneStats(
        bands=tuple(bands),
        mean=tuple(map(float, valid.mean(axis=0))),
        std=tuple(map(float, np.maximum(valid.std(axis=0), 1.0))),
        dark=tuple(map(float, np.percentile(valid, DARK_PERCENTILE, axis=0))),
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
