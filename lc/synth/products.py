"""Realistic synthetic Sentinel-2 products and WorldCover tiles: the offline default.

``synthesize(out)`` writes, deterministically per seed: four L1C training products of areas
in UTM zone 34 with different climates (Epirus as a folder with baseline 03.01; Thessaly
zipped with baseline 05.00 and a no-data swath edge; Macedonia zipped, 04.00; Pieria as a
folder, 02.09), the L2A product of the Thessaly acquisition (to measure L1C -> L2A
harmonisation and to train on both levels), an L2A product of another area in UTM zone 35
(Thrace, the area to map), an L2A product of a fifth area in UTM zone 34 with a drier climate
than any training area (Attica, validation only: models are chosen on ground they never saw),
the WorldCover 2021 tiles covering them (Epirus straddles two 3-degree tiles), the generator's
10 m truth per product, and ``synth.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject, transform_bounds
from tqdm import tqdm

from lc.raster import atomic_output, write_classmap
from lc.sentinel2.bands import BANDS, LEVEL_BANDS
from lc.synth.landscape import BARE, BUILT, WATER, Landscape, make_landscape
from lc.synth.safe_metadata import ProductInfo
from lc.synth.safe_writer import dn_from_reflectance, write_product
from lc.synth.spectra import haze_fields, surface_reflectance, to_native, top_of_atmosphere

WORLDCOVER_PIXEL = 1 / 12000  # degrees
WORLDCOVER_VERSION = {2020: "v100", 2021: "v200"}
DEFAULT_SIZE = 768


@dataclass(frozen=True)
class Area:
    """A piece of land: where it is and what its climate does to the landscape."""

    name: str
    tile: str
    epsg: int
    ulx: float
    uly: float
    aridity: float
    vigour: float
    soil: float
    aot: float


@dataclass(frozen=True)
class ProductSpec:
    """One product to write over an area."""

    area: Area
    level: str
    baseline: str
    sensing: datetime
    spacecraft: str
    relative_orbit: int
    absolute_orbit: int
    role: str  # train | harmonisation | predict
    zipped: bool = False
    swath_edge: bool = False

    @property
    def scene(self) -> str:
        """Name of the scene bundle ``lc data`` prepares from this product."""
        return f"{self.area.name}_{self.level}"


EPIRUS = Area("epirus", "34SEJ", 32634, 499980.0, 4400040.0, aridity=0.15, vigour=0.0, soil=0.0, aot=0.12)
THESSALY = Area("thessaly", "34SFJ", 32634, 600000.0, 4400040.0, aridity=0.35, vigour=-0.15, soil=0.06, aot=0.18)
THRACE = Area("thrace", "35TML", 32635, 399960.0, 4600020.0, aridity=0.1, vigour=0.2, soil=-0.05, aot=0.1)
MACEDONIA = Area("macedonia", "34TEK", 32634, 499980.0, 4500000.0, aridity=0.05, vigour=0.1, soil=-0.02, aot=0.15)
PIERIA = Area("pieria", "34TFK", 32634, 600000.0, 4500000.0, aridity=0.25, vigour=0.05, soil=0.03, aot=0.09)
# validation only: a climate outside the training areas' range (drier, sparser vegetation), on the side away from Thrace's
ATTICA = Area("attica", "34SGH", 32634, 699960.0, 4300020.0, aridity=0.4, vigour=-0.25, soil=0.09, aot=0.14)
TRAIN_TIME = datetime(2021, 9, 25, 9, 20, 29)
DEFAULT_PRODUCTS: tuple[ProductSpec, ...] = (
    ProductSpec(EPIRUS, "L1C", "03.01", TRAIN_TIME, "Sentinel-2B", 93, 23912, "train"),
    ProductSpec(THESSALY, "L1C", "05.00", TRAIN_TIME, "Sentinel-2B", 93, 23912, "train", zipped=True, swath_edge=True),
    ProductSpec(THESSALY, "L2A", "05.00", TRAIN_TIME, "Sentinel-2B", 93, 23912, "harmonisation", swath_edge=True),
    ProductSpec(THRACE, "L2A", "05.10", datetime(2021, 9, 27, 9, 10, 19), "Sentinel-2A", 50, 32718, "predict"),
    ProductSpec(MACEDONIA, "L1C", "04.00", TRAIN_TIME, "Sentinel-2B", 93, 23912, "train", zipped=True),
    ProductSpec(PIERIA, "L1C", "02.09", TRAIN_TIME, "Sentinel-2B", 93, 23912, "train"),
    ProductSpec(ATTICA, "L2A", "05.10", datetime(2021, 9, 24, 9, 5, 41), "Sentinel-2A", 7, 32675, "validation"),
)


def _area_seed(seed: int, area: Area) -> int:
    return seed * 7919 + sum(ord(c) * (i + 1) for i, c in enumerate(area.name))


def worldcover_name(lat0: int, lon0: int, year: int) -> str:
    """ESA's tile name after the south-west corner, e.g. ``..._N36E021_Map.tif``."""
    ns = f"{'N' if lat0 >= 0 else 'S'}{abs(lat0):02d}"
    ew = f"{'E' if lon0 >= 0 else 'W'}{abs(lon0):03d}"
    return f"ESA_WorldCover_10m_{year}_{WORLDCOVER_VERSION[year]}_{ns}{ew}_Map.tif"


@dataclass
class AreaTruth:
    """The generated land of one area on a 10 m UTM grid that extends past the scene."""

    classes: np.ndarray
    transform: Affine
    crs: CRS
    margin: int  # pixels of land around the scene

    def scene(self, array: np.ndarray) -> np.ndarray:
        m = self.margin
        return array[..., m:-m, m:-m]

    def lonlat_bounds(self, inset: int) -> tuple[float, float, float, float]:
        """Longitude/latitude box of the grid shrunk by ``inset`` pixels on every side."""
        h, w = self.classes.shape
        west, north = self.transform @ (inset, inset)
        east, south = self.transform @ (w - inset, h - inset)
        return transform_bounds(self.crs, "EPSG:4326", west, south, east, north, densify_pts=21)


def generate_area(area: Area, size: int, seed: int) -> tuple[AreaTruth, Landscape]:
    """Landscape of an area, over the scene plus a margin for the ground-truth tiles."""
    margin = max(32, size // 10)
    land = make_landscape((size + 2 * margin, size + 2 * margin), _area_seed(seed, area), area.aridity)
    transform = from_origin(area.ulx - margin * 10, area.uly + margin * 10, 10, 10)
    return AreaTruth(land.classes, transform, CRS.from_epsg(area.epsg), margin), land


def _swath_valid(shape_10m: tuple[int, int], resolution: int) -> np.ndarray:
    """Valid pixels of a product whose swath ends before the tile's south-east corner."""
    f = resolution // 10
    h, w = shape_10m[0] // f, shape_10m[1] // f
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 0.5) / w + (yy + 0.5) / h < 1.72


def _native_dn(spec: ProductSpec, sr: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Digital numbers of every band of the product at its native resolution."""
    rng = np.random.default_rng(seed)
    shape = sr.shape[1:]
    info = product_info(spec)
    aot, cirrus = haze_fields(shape, seed + 1, spec.area.aot)
    l2a_gain = rng.normal(1.0, 0.025, len(BANDS))  # residual error of the atmospheric correction
    l2a_bias = rng.normal(0.0, 0.002, len(BANDS))
    native = {}
    for i, band in enumerate(BANDS):
        if band.name not in LEVEL_BANDS[spec.level]:
            continue
        surface = to_native(sr[i], band.name, rng)
        if spec.level == "L1C":
            f = band.resolution // 10
            reflectance = top_of_atmosphere(surface, band.name, aot[f // 2 :: f, f // 2 :: f], cirrus[f // 2 :: f, f // 2 :: f], info.sun_zenith)
        else:
            reflectance = surface * l2a_gain[i] + l2a_bias[i]
        valid = _swath_valid(shape, band.resolution) if spec.swath_edge else None
        native[band.name] = dn_from_reflectance(reflectance, info, valid)
    return native


def _scl(classes: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """A scene classification layer (Sen2Cor codes) consistent with the land."""
    scl = np.full(classes.shape, 4, np.uint8)  # vegetation
    scl[np.isin(classes, (BUILT, BARE))] = 5  # not vegetated
    scl[classes == WATER] = 6
    if valid is not None:
        scl[~valid] = 0
    return scl


def product_info(spec: ProductSpec) -> ProductInfo:
    """The identity ESA would give the product of ``spec``."""
    return ProductInfo(
        level=spec.level, baseline=spec.baseline, tile=spec.area.tile, epsg=spec.area.epsg,
        ulx=spec.area.ulx, uly=spec.area.uly, sensing=spec.sensing, spacecraft=spec.spacecraft,
        relative_orbit=spec.relative_orbit, absolute_orbit=spec.absolute_orbit,
        sun_zenith=round(44.0 - (spec.area.uly - 4.4e6) / 1.1e5, 3),
    )


def _cells(bounds: tuple[float, float, float, float]) -> list[tuple[int, int]]:
    """(lat0, lon0) of the 3-degree WorldCover tiles a lon/lat box touches."""
    w, s, e, n = bounds
    lats = range(math.floor(s / 3) * 3, math.floor(n / 3) * 3 + 1, 3)
    lons = range(math.floor(w / 3) * 3, math.floor(e / 3) * 3 + 1, 3)
    return [(lat, lon) for lat in lats for lon in lons]


def write_worldcover(truths: list[AreaTruth], out: Path, year: int = 2021) -> list[Path]:
    """WorldCover tiles (EPSG:4326, 1/12000 degree, ESA naming) covering every area's scene
    with a margin. A tile holds the window of ESA's 3-degree tile that the areas need."""
    windows: dict[tuple[int, int], list[tuple[float, float, float, float]]] = {}
    for truth in truths:
        bounds = truth.lonlat_bounds(truth.margin // 2)  # the tiles reach half-way into the margin
        for cell in _cells(bounds):
            windows.setdefault(cell, []).append(bounds)
    written = []
    for (lat0, lon0), boxes in sorted(windows.items()):
        west = max(lon0, min(b[0] for b in boxes))
        south = max(lat0, min(b[1] for b in boxes))
        east = min(lon0 + 3, max(b[2] for b in boxes))
        north = min(lat0 + 3, max(b[3] for b in boxes))
        col0 = math.floor((west - lon0) / WORLDCOVER_PIXEL)
        row0 = math.floor((lat0 + 3 - north) / WORLDCOVER_PIXEL)
        width = math.ceil((east - lon0) / WORLDCOVER_PIXEL) - col0
        height = math.ceil((lat0 + 3 - south) / WORLDCOVER_PIXEL) - row0
        transform = Affine(WORLDCOVER_PIXEL, 0, lon0 + col0 * WORLDCOVER_PIXEL, 0, -WORLDCOVER_PIXEL, lat0 + 3 - row0 * WORLDCOVER_PIXEL)
        tile = np.zeros((height, width), np.uint8)
        for truth in truths:
            part = np.zeros_like(tile)
            reproject(truth.classes, part, src_transform=truth.transform, src_crs=truth.crs, src_nodata=0,
                      dst_transform=transform, dst_crs="EPSG:4326", dst_nodata=0, resampling=Resampling.nearest)
            tile = np.where(tile == 0, part, tile)
        path = out / worldcover_name(lat0, lon0, year)
        with atomic_output(path, overwrite=True) as tmp:
            write_classmap(tmp, tile, CRS.from_epsg(4326), transform)
        written.append(path)
    return written


def _covering_tiles(truth: AreaTruth, tiles: list[Path]) -> list[str]:
    names = {worldcover_name(lat, lon, 2021) for lat, lon in _cells(truth.lonlat_bounds(truth.margin))}
    return sorted(p.name for p in tiles if p.name in names)


def synthesize(
    out: Path, seed: int = 0, size: int = DEFAULT_SIZE, products: tuple[ProductSpec, ...] = DEFAULT_PRODUCTS
) -> dict:
    """Write the products, WorldCover tiles, truths and ``synth.json`` into ``out``."""
    if size % 6:
        raise ValueError(f"--size must be a multiple of 6 (the 60 m bands), got {size}")
    out.mkdir(parents=True, exist_ok=True)
    areas = {spec.area.name: spec.area for spec in products}
    generated = {name: generate_area(area, size, seed) for name, area in areas.items()}
    tiles = write_worldcover([truth for truth, _ in generated.values()], out)
    manifest = {"seed": seed, "size": size, "worldcover": [p.name for p in tiles], "products": []}
    (out / "truth").mkdir(exist_ok=True)
    surfaces = {}
    for spec in tqdm(products, desc="synth products", unit="product"):
        truth, land = generated[spec.area.name]
        area_seed = _area_seed(seed, spec.area)
        if spec.area.name not in surfaces:
            full = surface_reflectance(land, area_seed + 11, spec.area.vigour, spec.area.soil)
            surfaces[spec.area.name] = truth.scene(full)
        sr = surfaces[spec.area.name]
        classes = truth.scene(truth.classes)
        valid = _swath_valid(classes.shape, 10) if spec.swath_edge else None
        native = _native_dn(spec, sr, area_seed + 23)  # same acquisition -> same noise for L1C and L2A
        scl = _scl(classes, valid) if spec.level == "L2A" else None
        path = write_product(out, product_info(spec), native, zipped=spec.zipped, scl=scl)
        truth_path = out / "truth" / f"{spec.scene}.tif"
        with atomic_output(truth_path, overwrite=True) as tmp:
            write_classmap(tmp, np.where(valid, classes, 0) if valid is not None else classes, truth.crs,
                           from_origin(spec.area.ulx, spec.area.uly, 10, 10))
        manifest["products"].append({
            "path": path.name, "level": spec.level, "baseline": spec.baseline, "role": spec.role,
            "scene": spec.scene, "area": asdict(spec.area), "zipped": spec.zipped,
            "worldcover": _covering_tiles(truth, tiles), "truth": f"truth/{truth_path.name}",
        })
    with atomic_output(out / "synth.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest
