"""Product -> scene bundle: 10 m reflectance stack, ground truth on the same grid, scene.json.

Digital numbers become ``reflectance x 10000`` with the product's own offset and
quantification value (so values mean the same for every baseline); the 20 m and 60 m bands
are brought to the 10 m grid by one of ``RESAMPLERS``; WorldCover tiles are mosaicked and
reprojected to the scene grid with nearest (or mode) resampling. The bundle is written to a
temporary folder and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError, WindowError
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from tqdm import tqdm

from lc.bands import BY_NAME, TEN_M
from lc.geotiff import atomic_output, write_classmap
from lc.legend import NODATA
from lc.safe import ProductError, SafeProduct, open_product

REFLECTANCE_SCALE = 10000
SATURATED = 65535
RESAMPLERS = ("nearest", "bilinear", "cubic", "sharpen")
DEFAULT_RESAMPLER = "sharpen"  # best on Wald's protocol (bench/bench_sharpen.py, README)
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
_CV2_INTERPOLATION = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and shape."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, north = self.transform @ (0, 0)
        east, south = self.transform @ (self.width, self.height)
        return (min(west, east), min(south, north), max(west, east), max(south, north))


def product_grid(product: SafeProduct, resolution: int = 10) -> Grid:
    """The tile grid at ``resolution`` as the granule metadata (MTD_TL.xml) defines it."""
    ulx, uly = product.tile.geoposition[resolution]
    rows, cols = product.tile.size[resolution]
    return Grid(CRS.from_user_input(product.tile.crs), Affine(resolution, 0, ulx, 0, -resolution, uly), rows, cols)


def read_band(product: SafeProduct, band: str) -> np.ndarray:
    """Decode one band at its native resolution, checked against the tile metadata."""
    path = product.band_files[band]
    grid = product_grid(product, BY_NAME[band].resolution)
    try:
        with rasterio.open(path) as src:
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


def _fill_nodata(band: np.ndarray, valid: np.ndarray, passes: int = 3) -> np.ndarray:
    """Extend valid values a few pixels into no-data (float32), so interpolation kernels at
    the border of the swath see plausible values instead of zeros."""
    if valid.all():
        return band.astype(np.float32)
    values = np.where(valid, band, 0).astype(np.float32)
    weight = valid.astype(np.float32)
    for _ in range(passes):
        total = cv2.blur(values, (3, 3), borderType=cv2.BORDER_REFLECT)
        count = cv2.blur(weight, (3, 3), borderType=cv2.BORDER_REFLECT)
        grow = (weight == 0) & (count > 0)
        values[grow] = total[grow] / count[grow]
        weight[grow] = 1
    return values


def upsample(band: np.ndarray, factor: int, method: str) -> np.ndarray:
    """Resample a native band to ``factor`` x finer pixels, pixel-area aligned (float32)."""
    h, w = band.shape
    return cv2.resize(band.astype(np.float32), (w * factor, h * factor), interpolation=_CV2_INTERPOLATION[method])


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks (float32)."""
    h, w = array.shape
    return cv2.resize(array.astype(np.float32), (w // factor, h // factor), interpolation=cv2.INTER_AREA)


class DetailInjector:
    """Sharpen coarse bands with detail from the fine bands (regression-based injection).

    For each coarse band a synthetic 'pan' is the least-squares combination of the fine
    bands that best predicts the band at its own resolution; the pan's high-pass detail
    (pan minus the same pan degraded and re-expanded bicubically) is added to the bicubic
    upsampling of the band. Built once per resolution ratio: the detail of each fine band
    is computed once, so each band then costs one upsampling and a weighted sum.
    """

    def __init__(self, fine: np.ndarray, valid: np.ndarray, factor: int):
        self.factor = factor
        self.degraded = np.stack([block_mean(b, factor) for b in fine])  # (k, h, w)
        self.detail = np.empty_like(fine)
        for i, (band, low) in enumerate(zip(fine, self.degraded)):
            np.subtract(band, upsample(low, factor, "cubic"), out=self.detail[i])
        self.valid_coarse = block_mean(valid.astype(np.float32), factor) > 0.999

    def __call__(self, coarse: np.ndarray) -> np.ndarray:
        x = self.degraded[:, self.valid_coarse].T
        step = max(1, len(x) // 200_000)
        design = np.concatenate([x[::step], np.ones((len(x[::step]), 1), np.float32)], axis=1)
        weights, *_ = np.linalg.lstsq(design, coarse[self.valid_coarse][::step], rcond=None)
        ten = upsample(coarse, self.factor, "cubic")
        for weight, detail in zip(weights[:-1], self.detail):
            cv2.scaleAdd(detail, float(weight), ten, dst=ten)  # in place: no full-size temporaries
        return ten


def sharpen(coarse: np.ndarray, factor: int, fine: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One coarse band to the fine grid with detail injected from ``fine`` (k, H, W)."""
    return DetailInjector(fine, valid, factor)(coarse)


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
    fine = np.stack([_fill_nodata(native[b], native[b] > 0, passes=12) for b in TEN_M]) if method == "sharpen" else None
    for band in TEN_M:
        array = native.pop(band)
        array[~valid] = 0
        yield band, array
    for factor in (2, 6):  # coarse bands of one ratio in parallel threads (numpy/OpenCV release the GIL)
        bands = [b for b in native if BY_NAME[b].resolution == 10 * factor]
        injector = DetailInjector(fine, valid, factor) if method == "sharpen" else None

        def to_ten_metres(band: str) -> np.ndarray:
            array = native.pop(band)
            filled = _fill_nodata(array, array > 0)
            ten = injector(filled) if injector else upsample(filled, factor, method)
            np.rint(ten, out=ten)
            np.clip(ten, 1, SATURATED - 1, out=ten)
            out = ten.astype(np.uint16)
            out[~valid] = 0
            return out

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            yield from zip(bands, pool.map(to_ten_metres, bands))
        del injector


def labels_for_grid(
    worldcover: list[Path], grid: Grid, resampling: str = "nearest"
) -> tuple[np.ndarray, list[str]]:
    """Mosaic WorldCover tiles onto ``grid`` (uint8 codes, 0 where no tile covers)."""
    labels = np.zeros((grid.height, grid.width), np.uint8)
    used = []
    for tif in worldcover:
        try:
            src = rasterio.open(tif)
        except RasterioIOError as exc:
            raise ProductError(f"{tif}: cannot be read as a GeoTIFF ({exc})") from exc
        with src:
            west, south, east, north = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
            pad = 2 * abs(src.transform.a)
            window = from_bounds(west - pad, south - pad, east + pad, north + pad, src.transform)
            try:
                window = window.round_offsets().round_lengths().intersection(Window(0, 0, src.width, src.height))
            except WindowError:
                continue  # this tile does not reach the scene
            part = np.zeros_like(labels)
            reproject(
                src.read(1, window=window), part, src_transform=src.window_transform(window), src_crs=src.crs,
                src_nodata=NODATA, dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=NODATA,
                resampling=Resampling[resampling],
            )
        labels = np.where(labels == NODATA, part, labels)
        used.append(Path(tif).name)
    return labels, used


def _provenance(path: Path) -> dict:
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
                "product": _provenance(Path(product_path)),
                "worldcover": [_provenance(p) for p in worldcover],
                "prepared": datetime.now(timezone.utc).isoformat(),
            },
        }
        (staging / "scene.json").write_text(json.dumps(scene, indent=1))
    return out
