"""Augmentation policies (albumentations), chosen by name in the config.

Images are float32 (H, W, 13), already harmonised and normalised; masks are uint8 class
indices with ``ignore`` for unlabelled pixels. Geometric transforms move masks with the
image exactly (nearest interpolation, ``ignore`` where the image is padded).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.core.transforms_interface import ImageOnlyTransform  # noqa: E402

POLICIES = ("none", "flips", "spectral", "geometric", "radiometric")


class BandJitter(ImageOnlyTransform):
    """Per-band gain and offset jitter plus Gaussian noise (in normalised units)."""

    def __init__(self, gain: float = 0.05, offset: float = 0.1, noise: float = 0.05, p: float = 0.8):
        super().__init__(p=p)
        self.gain, self.offset, self.noise = gain, offset, noise

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        bands = data["image"].shape[-1]
        rng = self.py_random
        return {
            "gain": np.array([rng.gauss(1.0, self.gain) for _ in range(bands)], np.float32),
            "offset": np.array([rng.gauss(0.0, self.offset) for _ in range(bands)], np.float32),
            "seed": rng.randrange(2**31),
        }

    def apply(self, img: np.ndarray, gain: np.ndarray, offset: np.ndarray, seed: int, **_) -> np.ndarray:
        noise = np.random.default_rng(seed).normal(0.0, self.noise, img.shape).astype(np.float32)
        return img * gain + offset + noise


class DropBand(ImageOnlyTransform):
    """Replace one band by its fill value (as when B10 is missing from an L2A product)."""

    def __init__(self, index: int, fill: float = 0.0, p: float = 0.2):
        super().__init__(p=p)
        self.index, self.fill = index, fill

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        out = img.copy()
        out[..., self.index] = self.fill
        return out


def build_policy(name: str, chip_size: int, ignore: int, b10_index: int, b10_dropout: float) -> A.Compose:
    """The albumentations pipeline of a named policy."""
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    geometric = flips + [
        A.RandomResizedCrop(size=(chip_size, chip_size), scale=(0.6, 1.0), ratio=(0.8, 1.25), p=0.5),
        A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), border_mode=0,
                 fill=0.0, fill_mask=ignore, p=0.5),
    ]
    policies = {
        "none": [],
        "flips": flips,
        "spectral": flips + [BandJitter(gain=0.1, offset=0.25), DropBand(b10_index, 0.0, p=b10_dropout)],
        "geometric": geometric,
        "radiometric": geometric + [BandJitter(), DropBand(b10_index, 0.0, p=b10_dropout)],
    }
    if name not in policies:
        raise ValueError(f"unknown augmentation {name!r}; choose from {POLICIES}")
    return A.Compose(policies[name], seed=None)
