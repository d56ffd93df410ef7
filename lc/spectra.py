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

from lc.bands import BANDS, BAND_NAMES, BY_NAME
from lc.landscape import BUILT, CROP_STATES, TREE, WATER, Landscape, smooth_noise

#            B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B10    B11    B12
SPECTRA: dict[str, tuple[float, ...]] = {
    "tree":     (0.030, 0.032, 0.055, 0.032, 0.085, 0.220, 0.265, 0.285, 0.300, 0.300, 0.080, 0.150, 0.070),
    "shrub":    (0.050, 0.060, 0.085, 0.095, 0.135, 0.195, 0.225, 0.245, 0.255, 0.255, 0.090, 0.270, 0.180),
    "grass":    (0.040, 0.048, 0.085, 0.062, 0.125, 0.255, 0.300, 0.320, 0.330, 0.330, 0.090, 0.240, 0.140),
    "green":    (0.038, 0.040, 0.080, 0.042, 0.115, 0.320, 0.395, 0.425, 0.440, 0.440, 0.100, 0.230, 0.110),
    "ripening": (0.060, 0.068, 0.100, 0.108, 0.152, 0.222, 0.252, 0.270, 0.280, 0.280, 0.090, 0.320, 0.220),
    "ploughed": (0.075, 0.088, 0.118, 0.148, 0.178, 0.198, 0.215, 0.228, 0.238, 0.240, 0.080, 0.320, 0.262),
    "stubble":  (0.082, 0.098, 0.132, 0.158, 0.188, 0.218, 0.238, 0.250, 0.260, 0.262, 0.085, 0.345, 0.270),
    "meadow":   (0.040, 0.046, 0.082, 0.058, 0.122, 0.262, 0.310, 0.330, 0.340, 0.340, 0.090, 0.235, 0.132),
    "built":    (0.100, 0.108, 0.118, 0.128, 0.148, 0.160, 0.170, 0.178, 0.182, 0.182, 0.070, 0.215, 0.195),
    "bare":     (0.115, 0.138, 0.180, 0.220, 0.250, 0.268, 0.280, 0.292, 0.300, 0.300, 0.100, 0.380, 0.320),
    "water":    (0.060, 0.052, 0.048, 0.030, 0.020, 0.012, 0.010, 0.008, 0.007, 0.005, 0.002, 0.004, 0.003),
    "turbid":   (0.070, 0.068, 0.080, 0.070, 0.062, 0.030, 0.024, 0.020, 0.016, 0.010, 0.003, 0.006, 0.004),
    "wetland":  (0.038, 0.040, 0.060, 0.048, 0.090, 0.165, 0.195, 0.210, 0.220, 0.215, 0.060, 0.140, 0.070),
}
CLASS_SPECTRUM = {10: "tree", 20: "shrub", 30: "grass", 50: "built", 60: "bare", 80: "water", 90: "wetland"}
# Roof and street materials mixed inside built-up pixels.
MATERIALS = {
    "tiles":    (0.070, 0.075, 0.090, 0.150, 0.190, 0.210, 0.225, 0.235, 0.245, 0.245, 0.080, 0.300, 0.260),
    "concrete": (0.170, 0.190, 0.210, 0.225, 0.240, 0.250, 0.258, 0.265, 0.270, 0.270, 0.090, 0.300, 0.280),
    "asphalt":  (0.060, 0.062, 0.068, 0.072, 0.078, 0.082, 0.085, 0.088, 0.090, 0.090, 0.040, 0.100, 0.095),
}
# Direction in which vegetation vigour moves a spectrum (red edge and NIR up, red and SWIR down).
VIGOUR = np.array([-0.004, -0.006, -0.004, -0.014, -0.010, 0.022, 0.040, 0.045, 0.045, 0.040, 0.0, -0.030, -0.028], np.float32)
VEGETATED = ("tree", "shrub", "grass", "green", "meadow", "wetland")

# Atmosphere: gas transmittance per band (two-way, nadir view), B09/B10 are water-vapour bands.
GAS_TRANSMITTANCE = dict(zip(BAND_NAMES, (0.98, 0.98, 0.95, 0.96, 0.96, 0.98, 0.98, 0.97, 0.98, 0.55, 0.04, 0.96, 0.92)))
NOISE_SIGMA = {10: 0.0025, 20: 0.0018, 60: 0.0012}  # sensor noise in reflectance units


def _spectrum(name: str) -> np.ndarray:
    return np.asarray(SPECTRA.get(name) or MATERIALS[name], np.float32)


def surface_reflectance(land: Landscape, seed: int, vigour: float = 0.0, soil: float = 0.0) -> np.ndarray:
    """Surface reflectance (13, H, W) at 10 m. ``vigour``/``soil`` shift the whole area."""
    rng = np.random.default_rng(seed)
    h, w = land.classes.shape
    n_obj = int(land.objects.max()) + 1
    obj_gain = rng.normal(0.0, 0.07, n_obj).astype(np.float32)
    obj_vigour = rng.normal(vigour, 0.45, n_obj).astype(np.float32)
    obj_turbid = rng.beta(1.2, 3.0, n_obj).astype(np.float32)

    kinds = list(SPECTRA)
    kind = np.full((h, w), -1, np.int8)
    for code, name in CLASS_SPECTRUM.items():
        kind[land.classes == code] = kinds.index(name)
    fields = land.crop_state >= 0
    kind[fields] = np.asarray([kinds.index(s) for s in CROP_STATES], np.int8)[land.crop_state[fields]]
    if (kind < 0).any():
        raise ValueError("landscape has pixels of a class without a spectrum")

    sr = np.zeros((len(BANDS), h, w), np.float32)
    for k in np.unique(kind):
        name, mask = kinds[k], kind == k
        sr[:, mask] = _spectrum(name)[:, None]
        if name in VEGETATED:
            sr[:, mask] += VIGOUR[:, None] * obj_vigour[land.objects[mask]][None]
        if name in ("ploughed", "stubble", "bare"):
            sr[:, mask] *= 1 + soil
    water = land.classes == WATER
    turbid = obj_turbid[land.objects[water]]
    sr[:, water] = (1 - turbid) * _spectrum("water")[:, None] + turbid * _spectrum("turbid")[:, None]
    built = land.classes == BUILT
    sr[:, built] = _materials(rng, built)

    gain = 1 + obj_gain[land.objects]
    texture = 1 + 0.04 * smooth_noise(rng, (h, w), 3) + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    canopy = np.where(land.classes == TREE, 1 + rng.normal(0, 0.06, (h, w)), 1).astype(np.float32)
    factor = gain * texture * canopy * np.where(water, 1.0, land.shading)
    sr *= factor[None]
    return np.clip(sr, 0.0005, 1.2)


def _materials(rng: np.random.Generator, built: np.ndarray) -> np.ndarray:
    """Roof/street/garden mixtures for built-up pixels, in 2 px 'buildings'."""
    h, w = built.shape
    weights = rng.dirichlet((1.2, 1.0, 1.0, 0.5), size=((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    weights = weights.repeat(2, 0).repeat(2, 1)[:h, :w][built]
    stack = np.stack([_spectrum("tiles"), _spectrum("concrete"), _spectrum("asphalt"), _spectrum("grass")])
    return (weights @ stack).T


def to_native(band_10m: np.ndarray, band: str, rng: np.random.Generator) -> np.ndarray:
    """What the sensor records of a 10 m surface band: pixel integration, PSF blur, noise."""
    res = BY_NAME[band].resolution
    native = block_mean(band_10m, res // 10)
    blurred = cv2.GaussianBlur(native, (0, 0), sigmaX=0.45, borderType=cv2.BORDER_REFLECT)
    return blurred + rng.normal(0, NOISE_SIGMA[res], blurred.shape).astype(np.float32)


def rayleigh_optical_depth(wavelength_nm: float) -> float:
    """Rayleigh optical thickness at sea level (Hansen & Travis 1974)."""
    lam = wavelength_nm / 1000.0
    return 0.008569 * lam**-4 * (1 + 0.0113 * lam**-2 + 0.00013 * lam**-4)


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


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (shape must divide)."""
    if factor == 1:
        return array
    h, w = array.shape
    return array.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
