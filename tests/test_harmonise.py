"""Level harmonisation: the atmospheric correction recovers surface reflectance from L1C, and it and the
standardisation over land do not move with what else a scene holds (water or none), where dark-object
subtraction and the standardisation over every pixel do."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from lc.config import Harmonisation
from lc.learning.harmonise import METHODS, harmonise, scene_statistics
from lc.sentinel2.bands import BAND_NAMES, LEVEL_BANDS
from lc.synth.spectra import ENDMEMBERS, top_of_atmosphere

SUN_ZENITH = 38.0


def surface(water_fraction: float, n: int = 20_000, seed: int = 0) -> np.ndarray:
    """(n, 13) surface reflectance: vegetation, soil and shadow, and optionally open water."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["green", "soil", "dry", "shadow", "water"], n,
                       p=np.array([0.5, 0.2, 0.2, 0.1, 0.0]) * (1 - water_fraction) + [0, 0, 0, 0, water_fraction])
    spectra = np.array([ENDMEMBERS[k] for k in kinds], np.float32)
    return spectra * rng.uniform(0.9, 1.1, (n, 1)).astype(np.float32)


def l1c(sr: np.ndarray, aot: float = 0.15) -> np.ndarray:
    """Top-of-atmosphere reflectance x 10000 of ``sr`` (the synthetic products' atmosphere, no cirrus)."""
    toa = [top_of_atmosphere(sr[:, i], b, np.full(len(sr), aot, np.float32), np.zeros(len(sr), np.float32),
                             SUN_ZENITH) for i, b in enumerate(BAND_NAMES)]
    return np.stack(toa, axis=1) * 10000


def stats_of(x: np.ndarray, level: str, bands=BAND_NAMES):
    return scene_statistics(x, tuple(bands)).with_scene({"level": level, "angles": {"sun_zenith": SUN_ZENITH,
                                                                                  "view_zenith": 0.0}})


def test_l1c_corrected_to_surface_reflectance():
    """Under a clear (AOT 0.08) and a hazy (0.25) atmosphere, the corrected L1C is within 0.02 of the surface
    and the two agree within 0.006 in the visible and near infrared, where uncorrected blue differs by 0.015."""
    sr = surface(0.1)
    bands = [BAND_NAMES.index(b) for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11")]
    toa = {aot: l1c(sr, aot) for aot in (0.08, 0.25)}
    corrected = {aot: harmonise(x, "atmospheric", stats_of(x, "L1C"))[:, bands] for aot, x in toa.items()}
    for x in corrected.values():
        assert np.abs(x - sr[:, bands] * 10000).mean(axis=0).max() < 200
    between = np.abs(corrected[0.08] - corrected[0.25]).mean(axis=0)
    assert between.max() < 60, between
    assert np.abs(toa[0.08] - toa[0.25])[:, bands[0]].mean() > 150


def test_correction_does_not_move_with_the_scenes_water():
    """The same atmosphere over a scene with 15% water and one without: the same correction. Dark-object
    subtraction's near-infrared offset jumps to the shadows' when the water is missing."""
    with_water, dry = (stats_of(l1c(surface(w)), "L1C") for w in (0.15, 0.0))
    nir = BAND_NAMES.index("B08")
    probe = np.full((1, 13), 3000.0, np.float32)
    atmospheric = [harmonise(probe, "atmospheric", s)[0] for s in (with_water, dry)]
    dark_object = [harmonise(probe, "dark_object", s)[0] for s in (with_water, dry)]
    assert np.abs(atmospheric[0] - atmospheric[1]).max() < 40
    assert abs(dark_object[0][nir] - dark_object[1][nir]) > 400


def test_l2a_is_surface_reflectance_already():
    sr = surface(0.0)[:, [BAND_NAMES.index(b) for b in LEVEL_BANDS["L2A"]]] * 10000
    stats = stats_of(sr, "L2A", LEVEL_BANDS["L2A"])
    np.testing.assert_array_equal(harmonise(sr, "atmospheric", stats), sr)


def test_needs_the_level_and_sun_angle():
    stats = scene_statistics(l1c(surface(0.1)), tuple(BAND_NAMES))
    with pytest.raises(ValueError, match="needs an L1C or L2A scene with its sun angle.*prepare the product again"):
        harmonise(np.ones((1, 13), np.float32), "atmospheric", stats)


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_land_standardise_does_not_move_with_the_scenes_water(level):
    """Standardised over land (NDWI < 0), a field reads the same in a scene with 15% water and one without;
    standardised over the whole scene, its z-scores move by up to a third of a standard deviation."""
    scenes = [surface(w, seed=s) for w, s in ((0.15, 1), (0.0, 2))]
    if level == "L1C":
        scenes = [l1c(sr) for sr in scenes]
    else:
        scenes = [sr * 10000 for sr in scenes]
    stats = [stats_of(x, level) for x in scenes]
    field = np.asarray(ENDMEMBERS["green"], np.float32)[None]
    field = l1c(field) if level == "L1C" else field * 10000
    land = [harmonise(field, "land_standardise", s)[0] for s in stats]
    whole = [harmonise(field, "scene_standardise", s)[0] for s in stats]
    assert np.abs(land[0] - land[1]).max() < 0.05, land
    assert np.abs(whole[0] - whole[1]).max() > 0.25, whole


def test_land_standardise_falls_back_to_every_pixel_over_the_sea():
    sea = surface(0.95) * 10000
    stats = stats_of(sea, "L2A")
    assert stats.land_mean == stats.mean and stats.land_std == stats.std


def test_the_config_offers_every_method():
    assert get_args(Harmonisation) == METHODS
