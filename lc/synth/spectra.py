"""Spectra for synthetic scenes: surface reflectance, the atmosphere (L1C) and the sensor.

Surface reflectance comes from per-class spectra for all 13 bands, varied between objects
(brightness, vegetation vigour, crop state, turbidity) and within them (texture, canopy
shadow, roof materials), and shaded by the terrain. The sensor integrates the 10 m surface
over each band's native pixel and blurs it with its point-spread function, which mixes
pixels at class borders. Top-of-atmosphere reflectance adds path radiance (Rayleigh, falling
as lambda^-4, and aerosol, as lambda^-1.3) and two-way transmittance to the surface signal,
with a haze (aerosol optical thickness) that varies across the scene, gas absorption
(water vapour at B09/B10) and thin cirrus seen by B10.
"""

from __future__ import annotations

import cv2
import numpy as np

from lc.sentinel2.bands import BAND_NAMES, BY_NAME, rayleigh_optical_depth
from lc.sentinel2.resample import block_mean
from lc.synth.landscape import CROP_STATES, WATER, Landscape, smooth_noise

# Endmembers: what a 10 m pixel is a mixture of (the urban one is mixed from MATERIALS).
#               B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    "green":   (0.030, 0.034, 0.075, 0.035, 0.110, 0.330, 0.420, 0.450, 0.465, 0.460, 0.100, 0.220, 0.100),
    "dry":     (0.070, 0.080, 0.115, 0.135, 0.175, 0.230, 0.260, 0.280, 0.290, 0.290, 0.090, 0.360, 0.260),
    "soil":    (0.085, 0.100, 0.135, 0.170, 0.200, 0.220, 0.235, 0.248, 0.258, 0.260, 0.085, 0.340, 0.285),
    "water":   (0.060, 0.052, 0.048, 0.030, 0.020, 0.012, 0.010, 0.008, 0.007, 0.005, 0.002, 0.004, 0.003),
    "shadow":  (0.020, 0.018, 0.020, 0.015, 0.025, 0.060, 0.075, 0.080, 0.082, 0.080, 0.030, 0.040, 0.020),
}
TURBID = (0.070, 0.068, 0.080, 0.070, 0.062, 0.030, 0.024, 0.020, 0.016, 0.010, 0.003, 0.006, 0.004)
# Roof and street materials of the urban endmember, mixed in 2 px 'buildings'.
MATERIALS = {
    "tiles":    (0.070, 0.075, 0.090, 0.150, 0.190, 0.210, 0.225, 0.235, 0.245, 0.245, 0.080, 0.300, 0.260),
    "concrete": (0.170, 0.190, 0.210, 0.225, 0.240, 0.250, 0.258, 0.265, 0.270, 0.270, 0.090, 0.300, 0.280),
    "asphalt":  (0.060, 0.062, 0.068, 0.072, 0.078, 0.082, 0.085, 0.088, 0.090, 0.090, 0.040, 0.100, 0.095),
}
# Dirichlet concentrations of each kind of surface over the endmembers (green, dry, soil, urban,
# water, shadow): objects draw their mean cover from these, pixels scatter around their object's.
# The distributions overlap (green crops and grassland, ploughed fields and bare ground, sparse
# shrub and grass), so one pixel's spectrum does not tell its class: shape and context do.
COVER: dict[str, tuple[float, ...]] = {
    "tree":     (7.0, 1.2, 0.8, 0.01, 0.01, 1.6),
    "shrub":    (4.0, 2.0, 3.0, 0.01, 0.01, 0.8),
    "grass":    (6.0, 2.5, 1.2, 0.01, 0.01, 0.3),
    "ripening": (2.0, 6.0, 2.5, 0.01, 0.01, 0.2),
    "ploughed": (0.6, 1.2, 8.0, 0.01, 0.01, 0.3),
    "stubble":  (0.8, 4.0, 4.0, 0.01, 0.01, 0.2),
    "built":    (2.5, 0.8, 2.0, 3.5, 0.01, 0.8),
    "water":    (0.01, 0.01, 0.01, 0.01, 12.0, 0.01),
    "wetland":  (5.0, 1.5, 0.6, 0.01, 3.0, 0.3),
}
COVER["green"] = COVER["meadow"] = COVER["grass"]  # a green crop looks like grassland...
COVER["bare"] = COVER["ploughed"]  # ...and a ploughed field like bare ground
# Within-object scatter: lower is patchier (shrubs grow in clumps with soil between them).
PIXEL_CONCENTRATION = {"shrub": 3.0}
DEFAULT_CONCENTRATION = 12.0
CLASS_COVER = {10: "tree", 20: "shrub", 30: "grass", 50: "built", 60: "bare", 80: "water", 90: "wetland"}
# Direction in which vegetation vigour moves the green endmember (red edge and NIR up, red down).
VIGOUR = np.array([-0.004, -0.006, -0.004, -0.012, -0.010, 0.022, 0.040, 0.045, 0.045, 0.040, 0.0, -0.020, -0.015], np.float32)

# Atmosphere: gas transmittance per band (two-way, nadir view), B09/B10 are water-vapour bands.
GAS_TRANSMITTANCE = dict(zip(BAND_NAMES, (0.98, 0.98, 0.95, 0.96, 0.96, 0.98, 0.98, 0.97, 0.98, 0.55, 0.04, 0.96, 0.92)))
NOISE_SIGMA = {10: 0.0025, 20: 0.0018, 60: 0.0012}  # sensor noise in reflectance units


def _cover_kind(land: Landscape) -> tuple[np.ndarray, list[str]]:
    """Per pixel, the index of its kind of surface (class, or crop state for fields)."""
    kinds = list(COVER)
    kind = np.full(land.classes.shape, -1, np.int8)
    for code, name in CLASS_COVER.items():
        kind[land.classes == code] = kinds.index(name)
    fields = land.crop_state >= 0
    kind[fields] = np.asarray([kinds.index(s) for s in CROP_STATES], np.int8)[land.crop_state[fields]]
    if (kind < 0).any():
        raise ValueError("landscape has pixels of a class without a cover")
    return kind, kinds


def cover_fractions(land: Landscape, rng: np.random.Generator) -> np.ndarray:
    """Endmember fractions (6, H, W): per object from its kind, per pixel around its object."""
    kind, kinds = _cover_kind(land)
    alpha = np.asarray([COVER[k] for k in kinds], np.float32)  # (kinds, 6)
    n_obj = int(land.objects.max()) + 1
    obj_kind = np.zeros(n_obj, np.int64)
    obj_kind[land.objects.reshape(-1)] = kind.reshape(-1)
    obj_cover = rng.gamma(alpha[obj_kind])  # (objects, 6), then normalised: Dirichlet per object
    obj_cover /= obj_cover.sum(axis=1, keepdims=True)
    concentration = np.asarray([PIXEL_CONCENTRATION.get(k, DEFAULT_CONCENTRATION) for k in kinds], np.float32)
    shape = np.maximum(obj_cover[land.objects] * concentration[kind][..., None], 1e-3)  # (H, W, 6)
    pixels = rng.gamma(shape).astype(np.float32)
    pixels = np.stack([cv2.GaussianBlur(pixels[..., j], (0, 0), 0.6) for j in range(pixels.shape[-1])])  # clumps
    return pixels / pixels.sum(axis=0, keepdims=True)


def surface_reflectance(land: Landscape, seed: int, vigour: float = 0.0, soil: float = 0.0) -> np.ndarray:
    """Surface reflectance (13, H, W) at 10 m. ``vigour``/``soil`` shift the whole area."""
    rng = np.random.default_rng(seed)
    h, w = land.classes.shape
    n_obj = int(land.objects.max()) + 1
    fractions = cover_fractions(land, rng)
    obj_vigour = rng.normal(vigour, 0.5, n_obj).astype(np.float32)
    obj_soil = rng.normal(1 + soil, 0.1, n_obj).astype(np.float32)  # soil colour/brightness
    obj_turbid = rng.beta(1.2, 3.0, n_obj).astype(np.float32)

    green = _column(ENDMEMBERS["green"]) + VIGOUR[:, None, None] * obj_vigour[land.objects]
    soil_em = _column(ENDMEMBERS["soil"]) * obj_soil[land.objects]
    turbid = obj_turbid[land.objects]
    water = (1 - turbid) * _column(ENDMEMBERS["water"]) + turbid * _column(TURBID)
    urban = _materials(rng, (h, w))
    sr = (fractions[0] * green + fractions[1] * _column(ENDMEMBERS["dry"]) + fractions[2] * soil_em
          + fractions[3] * urban + fractions[4] * water + fractions[5] * _column(ENDMEMBERS["shadow"]))

    texture = 1 + 0.03 * smooth_noise(rng, (h, w), 3) + rng.normal(0, 0.015, (h, w)).astype(np.float32)
    factor = texture * np.where(land.classes == WATER, 1.0, land.shading)
    sr *= factor[None]
    return np.clip(sr, 0.0005, 1.2).astype(np.float32)


def _column(spectrum: tuple[float, ...]) -> np.ndarray:
    """A spectrum as a (13, 1, 1) float32 array, to broadcast over (13, H, W)."""
    return np.asarray(spectrum, np.float32)[:, None, None]


def _materials(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """The urban endmember (13, H, W): roof and street materials mixed in 2 px 'buildings'."""
    h, w = shape
    weights = rng.dirichlet((1.2, 1.0, 1.0), size=((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    weights = weights.repeat(2, 0).repeat(2, 1)[:h, :w]
    stack = np.stack([np.asarray(MATERIALS[m], np.float32) for m in ("tiles", "concrete", "asphalt")])
    return np.einsum("hwm,mb->bhw", weights, stack)


def to_native(band_10m: np.ndarray, band: str, rng: np.random.Generator) -> np.ndarray:
    """What the sensor records of a 10 m surface band: pixel integration, PSF blur, noise."""
    res = BY_NAME[band].resolution
    native = block_mean(band_10m, res // 10)
    blurred = cv2.GaussianBlur(native, (0, 0), sigmaX=0.45, borderType=cv2.BORDER_REFLECT)
    return blurred + rng.normal(0, NOISE_SIGMA[res], blurred.shape).astype(np.float32)


def top_of_atmosphere(
    surface: np.ndarray, band: str, aot550: np.ndarray, cirrus: np.ndarray, sun_zenith_deg: float
) -> np.ndarray:
    """Top-of-atmosphere reflectance of one band from its surface reflectance (same grid)."""
    lam = BY_NAME[band].wavelength
    mu_s, mu_v = np.cos(np.radians(sun_zenith_deg)), 1.0
    tau_r = rayleigh_optical_depth(lam)
    tau_a = aot550 * (lam / 550.0) ** -1.3
    path = (tau_r * 0.75 + tau_a * 0.22) / (4 * mu_s * mu_v) * 1.6
    transmittance = np.exp(-(0.5 * tau_r + 0.35 * tau_a) * (1 / mu_s + 1 / mu_v)) * GAS_TRANSMITTANCE[band]
    toa = path * GAS_TRANSMITTANCE[band] ** 0.5 + transmittance * surface / (1 - 0.1 * surface)
    if band == "B10":
        toa = toa + cirrus
    return toa.astype(np.float32)


def haze_fields(shape: tuple[int, int], seed: int, mean_aot: float) -> tuple[np.ndarray, np.ndarray]:
    """Aerosol optical thickness at 550 nm and thin-cirrus reflectance fields at 10 m."""
    rng = np.random.default_rng(seed)
    scale = max(shape) / 2.5
    aot = mean_aot * np.exp(0.35 * smooth_noise(rng, shape, scale))
    cirrus = 0.004 * np.clip(smooth_noise(rng, shape, scale / 2) + 0.5, 0, None)
    return aot.astype(np.float32), cirrus.astype(np.float32)
