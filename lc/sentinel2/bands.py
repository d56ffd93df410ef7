"""Sentinel-2 bands: names, order, native resolutions, wavelengths (single source of truth).

The index order used everywhere is ESA's band order (``bandId`` 0..12 in the metadata).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """One MSI spectral band."""

    name: str  # our name, zero padded: B01 .. B12, B8A
    esa_name: str  # the metadata's physicalBand: B1 .. B12, B8A
    resolution: int  # native ground sampling distance in metres
    wavelength: float  # central wavelength in nm (Sentinel-2A)


BANDS: tuple[Band, ...] = (
    Band("B01", "B1", 60, 442.7),
    Band("B02", "B2", 10, 492.4),
    Band("B03", "B3", 10, 559.8),
    Band("B04", "B4", 10, 664.6),
    Band("B05", "B5", 20, 704.1),
    Band("B06", "B6", 20, 740.5),
    Band("B07", "B7", 20, 782.8),
    Band("B08", "B8", 10, 832.8),
    Band("B8A", "B8A", 20, 864.7),
    Band("B09", "B9", 60, 945.1),
    Band("B10", "B10", 60, 1373.5),
    Band("B11", "B11", 20, 1613.7),
    Band("B12", "B12", 20, 2202.4),
)

BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)
BY_NAME: dict[str, Band] = {b.name: b for b in BANDS}
ESA_TO_NAME: dict[str, str] = {b.esa_name: b.name for b in BANDS}
BAND_ID: dict[str, int] = {b.name: i for i, b in enumerate(BANDS)}

L1C_BANDS: tuple[str, ...] = BAND_NAMES
L2A_BANDS: tuple[str, ...] = tuple(n for n in BAND_NAMES if n != "B10")
LEVEL_BANDS: dict[str, tuple[str, ...]] = {"L1C": L1C_BANDS, "L2A": L2A_BANDS}

TEN_M: tuple[str, ...] = tuple(b.name for b in BANDS if b.resolution == 10)
RESOLUTIONS: tuple[int, ...] = (10, 20, 60)


def bands_at(resolution: int) -> tuple[str, ...]:
    """Names of the bands whose native resolution is ``resolution`` metres."""
    return tuple(b.name for b in BANDS if b.resolution == resolution)


def rayleigh_optical_depth(wavelength_nm: float) -> float:
    """Rayleigh optical thickness of the atmosphere at sea level (Hansen & Travis 1974)."""
    lam = wavelength_nm / 1000.0
    return 0.008569 * lam**-4 * (1 + 0.0113 * lam**-2 + 0.00013 * lam**-4)
