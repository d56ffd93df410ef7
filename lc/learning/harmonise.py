"""Level harmonisation: make top-of-atmosphere (L1C) and surface (L2A) inputs comparable.

Models train on L1C and must work on L2A. Each method maps a scene's reflectance
(x 10000) per band using statistics of that same scene only, so it applies identically at
training and at prediction time:

- ``none``: reflectance as is (the model sees the L1C/L2A difference).
- ``scene_standardise``: per band, (x - scene mean) / scene std; removes additive path
  radiance and multiplicative transmittance differences, but also shifts with the scene's
  class composition.
- ``land_standardise``: ``scene_standardise`` over the scene's land only (pixels whose NDWI,
  (B03 - B08) / (B03 + B08), is below 0; McFeeters 1996): open water, far darker than land in
  the near infrared, no longer sets the statistics, so a scene with and one without a lake or
  the sea are standardised alike. Scenes with under 10% land fall back to every pixel.
- ``dark_object``: per band, x - the scene's dark-object value (its 1st percentile), the
  classic dark-object subtraction of path radiance (Chavez 1988); keeps reflectance units.
- ``atmospheric``: an image-based atmospheric correction of L1C to surface reflectance; L2A,
  corrected already, is kept as is, so what the model sees of a surface does not depend on what
  else the scene holds. Per band, the Rayleigh path reflectance and two-way transmittance follow
  from the metadata's mean sun and viewing zenith angles; the aerosol path reflectance is the
  blue band's dark object (less the Rayleigh path and a 1% dark surface), carried to the other
  bands with an Angstrom exponent (Chavez's improved dark-object subtraction, 1988), which needs
  no dark target in the near infrared (water) but only dark vegetation or shadow in the blue.

Missing bands (B10 in L2A) are filled after normalisation with 0, the training mean: the
model is taught to cope with that by the radiometric augmentation's B10 dropout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from lc.sentinel2.bands import BY_NAME, rayleigh_optical_depth

METHODS = ("none", "scene_standardise", "land_standardise", "dark_object", "atmospheric")
Z_SCORES = ("scene_standardise", "land_standardise")  # the methods whose output is per-scene z-scores
DARK_PERCENTILE = 1.0
HAZE_BAND = "B02"  # the aerosol's dark object: dark vegetation and shadow are dark in the blue
DARK_SURFACE = 100.0  # reflectance x 10000 of the blue band's dark object at the surface (Chavez 1996: 1%)
ANGSTROM = 1.3  # aerosol path reflectance falls as wavelength^-1.3 (continental aerosol)
MIN_LAND = 0.1  # the share of land pixels below which land_standardise uses every pixel
MAX_AEROSOL = 1500.0  # a blue aerosol path reflectance above 0.15 is a bright scene, not haze: capped
# Continental aerosol: single-scattering albedo x phase function in Sentinel-2's backscatter geometry,
# and the share of its extinction that leaves the beam (forward scattering stays in it: 1 - 0.9 x 0.82)
AEROSOL_ALBEDO_PHASE = 0.2
AEROSOL_LOSS = 0.26


@dataclass(frozen=True)
class SceneStats:
    """Per-band statistics of one scene's valid pixels (reflectance x 10000)."""

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dark: tuple[float, ...]
    land_mean: tuple[float, ...]  # over land pixels (NDWI < 0), or every pixel where land is scarce
    land_std: tuple[float, ...]
    level: str = ""  # L1C | L2A, from the scene's scene.json (``with_scene``)
    sun_zenith: float | None = None  # degrees, the tile's mean
    view_zenith: float | None = None  # degrees; None: nadir

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SceneStats:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def with_scene(self, scene_json: dict) -> SceneStats:
        """These statistics with the level and angles of the scene bundle's ``scene.json``."""
        angles = scene_json.get("angles") or {}
        return replace(self, level=scene_json.get("level", ""), sun_zenith=angles.get("sun_zenith"),
                       view_zenith=angles.get("view_zenith"))


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
    land = valid[land_pixels(valid, bands)]
    if len(land) < MIN_LAND * len(valid):
        land = valid
    mean, std = _mean_std(valid)
    land_mean, land_std = _mean_std(land)
    return SceneStats(
        bands=tuple(bands), mean=mean, std=std,
        dark=tuple(float(np.percentile(valid[:, j], DARK_PERCENTILE)) for j in range(valid.shape[1])),
        land_mean=land_mean, land_std=land_std,
    )


def land_pixels(pixels: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    """Which of ``pixels`` (n, bands) are land: NDWI (B03 - B08) / (B03 + B08) below 0."""
    green, nir = (pixels[:, bands.index(b)].astype(np.float32) for b in ("B03", "B08"))
    return green < nir


def _mean_std(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    columns = [pixels[:, j] for j in range(pixels.shape[1])]  # band by band: no float copy of the sample
    return (tuple(float(c.mean(dtype=np.float64)) for c in columns),
            tuple(max(float(c.std(dtype=np.float64)), 1.0) for c in columns))


def harmonise_affine(method: str, stats: SceneStats) -> tuple[np.ndarray, np.ndarray]:
    """Every method is per-band affine: harmonised = x * scale + offset (``stats.bands`` order)."""
    n = len(stats.bands)
    if method == "none":
        return np.ones(n, np.float32), np.zeros(n, np.float32)
    if method in Z_SCORES:
        mean, std = (stats.mean, stats.std) if method == "scene_standardise" else (stats.land_mean, stats.land_std)
        std = np.asarray(std, np.float32)
        return 1 / std, -np.asarray(mean, np.float32) / std
    if method == "dark_object":
        return np.ones(n, np.float32), -np.asarray(stats.dark, np.float32)
    if method == "atmospheric":
        return atmospheric_correction(stats)
    raise ValueError(f"unknown harmonisation {method!r}; choose from {METHODS}")


def harmonise(x: np.ndarray, method: str, stats: SceneStats) -> np.ndarray:
    """Apply ``method`` to ``x`` (..., n_bands) float32, bands last, in ``stats.bands`` order."""
    scale, offset = harmonise_affine(method, stats)
    return x * scale + offset


def atmospheric_correction(stats: SceneStats) -> tuple[np.ndarray, np.ndarray]:
    """``atmospheric`` as scale and offset: surface = (toa - rayleigh path - aerosol path) / transmittance, the
    two-way transmittance of the Rayleigh and the aerosol optical depths."""
    n = len(stats.bands)
    if stats.level == "L2A":
        return np.ones(n, np.float32), np.zeros(n, np.float32)
    if stats.level != "L1C" or stats.sun_zenith is None:
        raise ValueError(f"the atmospheric harmonisation needs an L1C or L2A scene with its sun angle (level "
                         f"{stats.level or 'unknown'}, sun zenith {stats.sun_zenith}); prepare the product again")
    if HAZE_BAND not in stats.bands:
        raise ValueError(f"the atmospheric harmonisation needs band {HAZE_BAND}; the scene has {stats.bands}")
    mu_s = np.cos(np.radians(stats.sun_zenith))
    mu_v = np.cos(np.radians(stats.view_zenith or 0.0))
    phase = 0.75 * (1 + (mu_s * mu_v) ** 2)  # Rayleigh phase function, backscatter seen from above
    wavelength = np.array([BY_NAME[b].wavelength for b in stats.bands])
    tau = np.array([rayleigh_optical_depth(w) for w in wavelength])
    rayleigh = 10000 * tau * phase / (4 * mu_s * mu_v)
    transmittance = np.exp(-0.5 * tau * (1 / mu_s + 1 / mu_v))
    haze = stats.bands.index(HAZE_BAND)
    aerosol_blue = stats.dark[haze] - rayleigh[haze] - transmittance[haze] * DARK_SURFACE
    aerosol = np.clip(aerosol_blue, 0.0, MAX_AEROSOL) * (wavelength / wavelength[haze]) ** -ANGSTROM
    aerosol_depth = aerosol / 10000 * 4 * mu_s * mu_v / AEROSOL_ALBEDO_PHASE  # single scattering, inverted
    transmittance = transmittance * np.exp(-AEROSOL_LOSS * aerosol_depth * (1 / mu_s + 1 / mu_v))
    return (1 / transmittance).astype(np.float32), (-(rayleigh + aerosol) / transmittance).astype(np.float32)
