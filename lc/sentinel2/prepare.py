"""Product -> scene bundle: 10 m reflectance stack, ground truth on the same grid, scene.json.

Digital numbers become ``reflectance x 10000`` with the product's own offset and
quantification value (so values mean the same for every baseline); the 20 m and 60 m bands
are brought to the 10 m grid by one of ``lc.sentinel2.resample.RESAMPLERS``; WorldCover tiles
are mosaicked and reprojected to the scene grid (``lc.sentinel2.groundtruth``). The bundle is
written to a temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from tqdm import tqdm

from lc.raster import Grid, atomic_output, write_classmap
from lc.sentinel2.bands import BY_NAME, TEN_M
from lc.sentinel2.groundtruth import labels_for_grid
from lc.sentinel2.resample import DEFAULT_RESAMPLER, RESAMPLERS, DetailInjector, fill_nodata, upsample
from lc.sentinel2.safe import ProductError, SafeProduct, open_product
from lc.worldcover import NODATA

REFLECTANCE_SCALE = 10000
SATURATED = 65535
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


def read_band(product: SafeProduct, band: str) -> np.ndarray:
    """Decode one band at its native resolution, checked against manifest.safe and the tile metadata.

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
            return src.read(1)
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


def _decode_all(product: SafeProduct) -> dict[str, np.ndarray]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {band: pool.submit(read_band, product, band) for band in product.bands}
        return {
            band: to_reflectance(f.result(), product, band)
            for band, f in tqdm(futures.items(), desc="decode bands", unit="band", leave=False)
        }


def reflectance_stack(product: SafeProduct, method: str = DEFAULT_RESAMPLER):
    """Yield (band, uint16 10 m reflectance x 10000) for every band, finest bands first.

    The first item is ``("valid", mask)``: pixels valid in every band (nearest-upsampled).
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampling method {method!r}; choose from {RESAMPLERS}")
    native = _decode_all(product)
    grid = product_grid(product)
    valid = np.ones((grid.height, grid.width), bool)
    for band, array in native.items():
        f = BY_NAME[band].resolution // 10
        band_valid = array > 0
        valid &= band_valid if f == 1 else band_valid.repeat(f, 0).repeat(f, 1)
    yield "valid", valid
    # the fine bands' own no-data would pull their degraded copies, hence the detail, at swath edges
    fine = np.stack([fill_nodata(native[b], native[b] > 0, passes=12) for b in TEN_M]) if method == "sharpen" else None
    for band in TEN_M:
        array = native.pop(band)
        array[~valid] = 0
        yield band, array
    for factor in (2, 6):  # coarse bands of one ratio in parallel threads (numpy/OpenCV release the GIL)
        bands = [b for b in native if BY_NAME[b].resolution == 10 * factor]
        injector = DetailInjector(fine, valid, factor) if method == "sharpen" else None
        bring = partial(_to_ten_metres, native=native, valid=valid, factor=factor, method=method, injector=injector)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            yield from zip(bands, pool.map(bring, bands))
        del injector, bring  # the injector's full-size detail arrays: freed before the next ratio


def _to_ten_metres(band: str, *, native: dict[str, np.ndarray], valid: np.ndarray, factor: int, method: str,
                   injector: DetailInjector | None) -> np.ndarray:
    """One coarse band (taken out of ``native``) on the 10 m grid, uint16, 0 outside ``valid``."""
    array = native.pop(band)
    filled = fill_nodata(array, array > 0)
    ten = injector(filled) if injector else upsample(filled, factor, method)
    np.rint(ten, out=ten)
    np.clip(ten, 1, SATURATED - 1, out=ten)
    out = ten.astype(np.uint16)
    out[~valid] = 0
    return out


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
    with atomic_output(out, overwrite=overwrite) as staging:
        staging.mkdir()
        stack = reflectance_stack(product, method)
        _, valid = next(stack)
        with rasterio.open(
            staging / "image.tif", "w", width=grid.width, height=grid.height, count=len(product.bands),
            crs=grid.crs, transform=grid.transform, **IMAGE_PROFILE,
        ) as dst:
            for band, array in tqdm(stack, total=len(product.bands), desc="bands to 10 m", unit="band"):
                index = product.bands.index(band) + 1
                dst.write(array, index)
                dst.set_band_description(index, band)
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
