"""Product -> scene bundle: 10 m reflectance stack, ground truth on the same grid, scene.json.

Digital numbers become ``reflectance x 10000`` with the product's own offset and
quantification value (so values mean the same for every baseline); the 20 m and 60 m bands
are brought to the 10 m grid by one of ``lc.sentinel2.resample.RESAMPLERS``; WorldCover tiles
are mosaicked and reprojected to the scene grid (``lc.sentinel2.groundtruth``). The bundle is
written to a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from tqdm import tqdm

from lc.raster import Grid, atomic_output, write_classmap
from lc.sentinel2.bands import BY_NAME
from lc.sentinel2.groundtruth import labels_for_grid
from lc.sentinel2.resample import DEFAULT_RESAMPLER
from lc.sentinel2.safe import ProductError, SafeProduct, open_product
from lc.sentinel2.tenmetres import SATURATED, STRIP_ROWS, ten_metre_strips
from lc.worldcover import NODATA

REFLECTANCE_SCALE = 10000
DECODE_ROWS = 1024  # rows decoded at a time: one row of ESA's JPEG 2000 tiles
GDAL_CACHE_MB = 128  # GDAL's block cache would otherwise grow to 5% of the machine's memory

IMAGE_PROFILE = {
    "driver": "GTiff",
    "dtype": "uint16",
    "nodata": 0,
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "zstd",
    "zstd_level": 1,
    "predictor": 2,
    "interleave": "band",
    "num_threads": "all_cpus",
}


def product_grid(product: SafeProduct, resolution: int = 10) -> Grid:
    """The tile grid at ``resolution`` as the granule metadata (MTD_TL.xml) defines it."""
    ulx, uly = product.tile.geoposition[resolution]
    rows, cols = product.tile.size[resolution]
    return Grid(CRS.from_user_input(product.tile.crs), Affine(resolution, 0, ulx, 0, -resolution, uly), rows, cols)


def read_band(product: SafeProduct, band: str, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode one band at its native resolution, ``rows`` rows at a time (all at once by default),
    checked against manifest.safe and the tile metadata: (first row, DN array) per window.

    GDAL decodes with one thread here (bands are decoded in parallel instead): the JPEG 2000
    driver's own decoding threads report a truncated tile only as a logged message and leave
    zeros; on the calling thread the error stops the read.
    """
    path = product.band_files[band]
    grid = product_grid(product, BY_NAME[band].resolution)
    product.check_band_file(band)
    try:
        with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(path) as src:
            if (src.height, src.width) != (grid.height, grid.width):
                raise ProductError(
                    f"{path}: {src.height}x{src.width} pixels, but MTD_TL.xml says {grid.height}x{grid.width}"
                )
            if src.crs is not None and not np.allclose(
                (src.transform.c, src.transform.f), (grid.transform.c, grid.transform.f), atol=src.transform.a / 2
            ):
                raise ProductError(f"{path}: georeferencing disagrees with MTD_TL.xml")
            step = rows or src.height
            for row in range(0, src.height, step):
                yield row, src.read(1, window=Window(0, row, src.width, min(step, src.height - row)))
    except RasterioIOError as exc:
        raise ProductError(f"{path}: cannot be decoded — truncated or corrupt ({exc})") from exc


def to_reflectance(dn: np.ndarray, product: SafeProduct, band: str) -> np.ndarray:
    """DN -> uint16 reflectance x 10000 (0 = no data, 65535 = saturated, valid >= 1)."""
    meta = product.metadata
    if meta.quantification_value == REFLECTANCE_SCALE:  # the usual case: integer arithmetic, exact
        value = dn.astype(np.int32) + meta.offset(band)
    else:
        value = np.rint((dn.astype(np.float32) + meta.offset(band)) * (REFLECTANCE_SCALE / meta.quantification_value))
    out = np.clip(value, 1, SATURATED - 1).astype(np.uint16)
    out[dn == meta.nodata] = 0
    out[dn == meta.saturated] = SATURATED
    return out


def decoder(product: SafeProduct):
    """A band's reflectance at its native resolution, from the product's file, ``DECODE_ROWS`` rows at a time."""
    return lambda band: ((row, to_reflectance(dn, product, band)) for row, dn in read_band(product, band, DECODE_ROWS))


def provenance(path: Path) -> dict:
    """Where an input came from: its path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size if path.is_file() else None,
            "modified": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat()}


def prepare(
    product_path: Path,
    out: Path,
    worldcover: list[Path] | None = None,
    method: str = DEFAULT_RESAMPLER,
    overwrite: bool = False,
    label_resampling: str = "nearest",
) -> Path:
    """Write the scene bundle (image.tif, label.tif, scene.json) of a product into ``out``."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    product = open_product(product_path)
    grid = product_grid(product)
    worldcover = [Path(p) for p in worldcover or []]
    with (rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), atomic_output(out, overwrite=overwrite) as staging,
          tempfile.TemporaryDirectory(dir=out.parent) as scratch):
        staging.mkdir()
        valid, strips = ten_metre_strips(product, method, Path(scratch), decoder(product))
        with rasterio.open(
            staging / "image.tif", "w", width=grid.width, height=grid.height, count=len(product.bands),
            crs=grid.crs, transform=grid.transform, **IMAGE_PROFILE,
        ) as dst:
            for index, band in enumerate(product.bands, start=1):
                dst.set_band_description(index, band)
            total = -(-grid.height // STRIP_ROWS) * len(product.bands)
            for start, band, array in tqdm(strips, total=total, desc="bands to 10 m", unit="band strip"):
                dst.write(array, product.bands.index(band) + 1, window=Window(0, start, grid.width, len(array)))
        label_info = {}
        if worldcover:
            labels, used = labels_for_grid(worldcover, grid, label_resampling)
            covered = labels != NODATA
            if not covered.any():
                names = ", ".join(str(p) for p in worldcover)
                raise ProductError(f"ground truth {names} does not overlap the scene of {product_path}")
            labels[~valid] = NODATA
            write_classmap(staging / "label.tif", labels, grid.crs, grid.transform)
            codes, counts = np.unique(labels[labels != NODATA], return_counts=True)
            label_info = {
                "worldcover_tiles": used,
                "label_resampling": label_resampling,
                "label_coverage": float(covered[valid].mean()) if valid.any() else 0.0,
                "class_pixels": {str(c): int(n) for c, n in zip(codes, counts)},
            }
        meta = product.metadata
        scene = {
            "product_id": meta.product_uri.removesuffix(".SAFE"),
            "level": meta.level,
            "processing_baseline": meta.processing_baseline,
            "sensing_time": meta.sensing_time,
            "spacecraft": meta.spacecraft,
            "tile": product.tile.tile_id,
            "crs": grid.crs.to_string(),
            "transform": list(grid.transform)[:6],
            "width": grid.width,
            "height": grid.height,
            "bands": list(product.bands),
            "reflectance_scale": REFLECTANCE_SCALE,
            "radiometry": {
                "quantification_value": meta.quantification_value,
                "add_offset": meta.add_offset,
                "nodata": meta.nodata,
            },
            "angles": {"sun_zenith": product.tile.sun_zenith, "view_zenith": product.tile.view_zenith},
            "resampling": {"to_10m": method, "bands": {b: BY_NAME[b].resolution for b in product.bands}},
            "valid_fraction": float(valid.mean()),
            **label_info,
            "provenance": {
                "product": provenance(Path(product_path)),
                "worldcover": [provenance(p) for p in worldcover],
                "prepared": datetime.now(timezone.utc).isoformat(),
            },
        }
        (staging / "scene.json").write_text(json.dumps(scene, indent=1))
    return out
