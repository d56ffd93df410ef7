"""ESA WorldCover legend: codes, names, colours, and code <-> class-index lookup tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NODATA = 0


@dataclass(frozen=True)
class LandCoverClass:
    code: int
    name: str
    colour: str  # '#rrggbb'

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


WORLDCOVER: tuple[LandCoverClass, ...] = (
    LandCoverClass(10, "Tree cover", "#006400"),
    LandCoverClass(20, "Shrubland", "#ffbb22"),
    LandCoverClass(30, "Grassland", "#ffff4c"),
    LandCoverClass(40, "Cropland", "#f096ff"),
    LandCoverClass(50, "Built-up", "#fa0000"),
    LandCoverClass(60, "Bare / sparse vegetation", "#b4b4b4"),
    LandCoverClass(70, "Snow and ice", "#f0f0f0"),
    LandCoverClass(80, "Permanent water bodies", "#0064c8"),
    LandCoverClass(90, "Herbaceous wetland", "#0096a0"),
    LandCoverClass(95, "Mangroves", "#00cf75"),
    LandCoverClass(100, "Moss and lichen", "#fae6a0"),
)
BY_CODE: dict[int, LandCoverClass] = {c.code: c for c in WORLDCOVER}
CODES: tuple[int, ...] = tuple(c.code for c in WORLDCOVER)


def class_name(code: int) -> str:
    """The legend name of a WorldCover code, or the code itself for classes outside the legend."""
    return BY_CODE[code].name if code in BY_CODE else str(code)


def colormap() -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table for uint8 WorldCover rasters (0 = no data, transparent)."""
    table = {i: (0, 0, 0, 0) for i in range(256)}
    for c in WORLDCOVER:
        table[c.code] = (*c.rgb, 255)
    return table


def category_names() -> list[str]:
    """GDAL category names indexed by pixel value, as in ESA's WorldCover files."""
    names = [""] * 256
    names[NODATA] = "No data"
    for c in WORLDCOVER:
        names[c.code] = c.name
    return names


def code_to_index_lut(codes: Sequence[int], ignore_index: int) -> np.ndarray:
    """A 256-entry uint8 table: WorldCover code -> class index (``ignore_index`` elsewhere)."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    lut[list(codes)] = np.arange(len(codes))
    return lut


def index_to_code_lut(codes: Sequence[int]) -> np.ndarray:
    """Class index -> WorldCover code (uint8)."""
    return np.asarray(codes, dtype=np.uint8)
