"""A small synthetic region to map: adjacent, overlapping L2A products on both sides of the UTM
zone 34/35 border (24°E), cut from one landscape so that overlaps show the same land.

Like MGRS tiles (109.8 km every 100 km), neighbouring products of one zone overlap by about
9% of their width; the product east of the border, in zone 35, overlaps the zone-34 products
that reach past 24°E. Land and surface reflectance are generated once on a zone-34 grid and
resampled onto the zone-35 product's grid (nearest for classes, bilinear for reflectance).
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from tqdm import tqdm

from lc.raster import atomic_output, write_classmap
from lc.synth.landscape import make_landscape
from lc.synth.products import Area, AreaTruth, ProductSpec, _native_dn, _scl, product_info, write_worldcover
from lc.synth.safe_writer import write_product
from lc.synth.spectra import surface_reflectance

REGION_SIZE = 384  # px a product side
OVERLAP = 0.09  # of a side, as MGRS tiles
SENSING = datetime(2021, 9, 27, 9, 10, 19)
CLIMATE = {"aridity": 0.12, "vigour": 0.15, "soil": -0.03, "aot": 0.1}
# 24°E near 41°N in each zone's coordinates, and the region's north edge
BORDER_X = {32634: 752_300.0, 32635: 247_700.0}
NORTH = 4_546_000.0


def region_areas(size: int) -> list[Area]:
    """Two columns by two rows of products in zone 34, the east column reaching past 24°E, and
    one product in zone 35 beside the north row."""
    step = 10.0 * round(size * (1 - OVERLAP))
    x0 = BORDER_X[32634] - step - 10.0 * round(size * 0.8)  # the east column reaches 20% of a side past 24°E
    areas = [Area(f"region_{row}{col}", f"34T{'GH'[col]}{'LK'[row]}", 32634, x0 + col * step, NORTH - row * step,
                  **CLIMATE) for row in range(2) for col in range(2)]
    west_35 = BORDER_X[32635] - 10.0 * round(size * 0.2)  # and the zone-35 product as far west of it
    return areas + [Area("region_east", "35TKF", 32635, west_35, NORTH, **CLIMATE)]


def synthesize_region(out: Path, seed: int = 0, size: int = REGION_SIZE) -> dict:
    """Write the region's L2A products, their WorldCover tiles, truths and ``synth.json``."""
    if size % 6:
        raise ValueError(f"--size must be a multiple of 6 (the 60 m bands), got {size}")
    out.mkdir(parents=True, exist_ok=True)
    areas = region_areas(size)
    margin = size // 2  # room for the zone-35 product, turned ~2° against the zone-34 grid
    x0, y0 = areas[0].ulx, NORTH
    width = int((max(a.ulx for a in areas if a.epsg == 32634) - x0) / 10) + 2 * size + 2 * margin
    height = int((y0 - min(a.uly for a in areas)) / 10) + size + 2 * margin
    land = make_landscape((height, width), seed * 7919 + 101, CLIMATE["aridity"])
    grid = from_origin(x0 - margin * 10, y0 + margin * 10, 10, 10)
    truth = AreaTruth(land.classes, grid, CRS.from_epsg(32634), margin)
    tiles = write_worldcover([truth], out)
    reflectance = surface_reflectance(land, seed * 7919 + 103, CLIMATE["vigour"], CLIMATE["soil"])
    manifest = {"seed": seed, "size": size, "region": True, "worldcover": [p.name for p in tiles], "products": []}
    (out / "truth").mkdir(exist_ok=True)
    for i, area in enumerate(tqdm(areas, desc="synth region", unit="product")):
        spec = ProductSpec(area, "L2A", "05.10", SENSING, "Sentinel-2A", 50, 32718, "region")
        classes, sr = _cut(land.classes, reflectance, grid, area, size)
        path = write_product(out, product_info(spec), _native_dn(spec, sr, seed * 7919 + 200 + i), scl=_scl(classes, None))
        truth_path = out / "truth" / f"{spec.scene}.tif"
        with atomic_output(truth_path, overwrite=True) as tmp:
            write_classmap(tmp, classes, CRS.from_epsg(area.epsg), from_origin(area.ulx, area.uly, 10, 10))
        manifest["products"].append({"path": path.name, "level": "L2A", "baseline": spec.baseline, "role": "region",
                                     "scene": spec.scene, "area": asdict(replace(area)), "zipped": False,
                                     "worldcover": manifest["worldcover"], "truth": f"truth/{truth_path.name}"})
    with atomic_output(out / "synth.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest


def _cut(classes: np.ndarray, reflectance: np.ndarray, grid, area: Area, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The land and surface reflectance of one product's 10 m grid."""
    target = from_origin(area.ulx, area.uly, 10, 10)
    out_classes = np.zeros((size, size), np.uint8)
    out_sr = np.zeros((reflectance.shape[0], size, size), np.float32)
    common = {"src_transform": grid, "src_crs": CRS.from_epsg(32634), "dst_transform": target,
              "dst_crs": CRS.from_epsg(area.epsg)}
    reproject(classes, out_classes, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0, **common)
    reproject(reflectance.astype(np.float32), out_sr, resampling=Resampling.bilinear, **common)
    if (out_classes == 0).any():
        raise ValueError(f"{area.name}: the generated land does not cover the product")
    return out_classes, out_sr
