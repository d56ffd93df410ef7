"""A product's bands on the 10 m grid, strip by strip, in memory bounded by the width.

Each band is decoded once (in parallel threads) and kept as reflectance in an uncompressed
scratch GeoTIFF at its native resolution. Everything after reads strips of rows from those:
the pixels valid in every band, the statistics that sharpening needs (the 10 m bands degraded
to 20 and 60 m, and the injection weights fitted on them), then the 10 m strips themselves.
A strip reads ``HALO`` rows of context on each side, enough for every filter on the way
(no-data filling, cubic interpolation), so the result is identical to treating the scene whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from lc.sentinel2.bands import BY_NAME, TEN_M
from lc.sentinel2.resample import RESAMPLERS, block_mean, fill_nodata, inject, injection_weights, upsample
from lc.sentinel2.safe import SafeProduct

STRIP_ROWS = 1536  # 10 m rows of a strip: a multiple of 6 (the 60 m pixels) and of 512 (the output's tiles)
HALO = 36  # 10 m rows of context: 3 fill passes and 2 cubic taps at 60 m (30 rows), 12 fill passes at 10 m
FACTORS = (2, 6)
FINE_FILL_PASSES = 12  # the fine bands' own no-data would pull their degraded copies, hence the detail, at swath edges
SATURATED = 65535
PIXEL_GRID = Affine(10, 0, 0, 0, -10, 0)  # scratch files are addressed by pixel; rasterio warns on an identity grid


class NativeBands:
    """The product's bands as reflectance at their native resolution, in scratch GeoTIFFs.

    ``decode(band)`` yields (first row, reflectance rows) windows of a band; bands are decoded
    in parallel threads, each a window at a time.
    """

    def __init__(self, product: SafeProduct, scratch: Path, decode) -> None:
        self.product, self.scratch = product, scratch
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            for _ in tqdm(pool.map(lambda band: self._keep(band, decode(band)), product.bands),
                          total=len(product.bands), desc="decode bands", unit="band", leave=False):
                pass

    def _keep(self, band: str, windows: Iterator[tuple[int, np.ndarray]]) -> None:
        rows, cols = self.product.tile.size[BY_NAME[band].resolution]
        with rasterio.open(self.path(band), "w", driver="GTiff", width=cols, height=rows, count=1, dtype="uint16",
                           transform=PIXEL_GRID) as dst:
            for row, array in windows:
                dst.write(array, 1, window=Window(0, row, cols, len(array)))

    def path(self, band: str) -> Path:
        return self.scratch / f"{band}.tif"

    def rows(self, band: str, start: int, stop: int) -> np.ndarray:
        """The band's native rows under 10 m rows [start, stop) (multiples of its factor), clipped to the scene."""
        f = BY_NAME[band].resolution // 10
        with rasterio.open(self.path(band)) as src:
            first, last = max(start // f, 0), min(stop // f, src.height)
            return src.read(1, window=Window(0, first, src.width, last - first))

    def whole(self, band: str) -> np.ndarray:
        with rasterio.open(self.path(band)) as src:
            return src.read(1)


def _strips(height: int) -> Iterator[tuple[int, int, int, int]]:
    """(first, stop) of each strip's own rows and of the rows read with their context."""
    for start in range(0, height, STRIP_ROWS):
        stop = min(start + STRIP_ROWS, height)
        yield start, stop, max(start - HALO, 0), min(stop + HALO, height)


def _valid(native: NativeBands, height: int, width: int) -> np.ndarray:
    """Pixels valid in every band (coarse bands nearest-upsampled), strip by strip."""
    valid = np.ones((height, width), bool)
    for start, stop, _, _ in _strips(height):
        for band in native.product.bands:
            f = BY_NAME[band].resolution // 10
            present = native.rows(band, start, stop) > 0
            valid[start:stop] &= present if f == 1 else present.repeat(f, 0).repeat(f, 1)
    return valid


def _filled_fine(native: NativeBands, read_start: int, read_stop: int) -> np.ndarray:
    """The 10 m bands (k, rows, W) of a strip with its context, their no-data filled."""
    return np.stack([fill_nodata(a, a > 0, passes=FINE_FILL_PASSES)
                     for a in (native.rows(b, read_start, read_stop) for b in TEN_M)])


class Sharpening:
    """What detail injection needs of the whole scene: the 10 m bands degraded to each coarse
    resolution, the pixels valid there, and each coarse band's injection weights."""

    def __init__(self, native: NativeBands, valid: np.ndarray) -> None:
        height, width = valid.shape
        self.degraded = {f: np.empty((len(TEN_M), height // f, width // f), np.float32) for f in FACTORS}
        valid_coarse = {f: np.empty((height // f, width // f), bool) for f in FACTORS}
        for start, stop, read_start, read_stop in _strips(height):
            fine = _filled_fine(native, read_start, read_stop)[:, start - read_start : stop - read_start]
            for f in FACTORS:
                self.degraded[f][:, start // f : stop // f] = [block_mean(b, f) for b in fine]
                valid_coarse[f][start // f : stop // f] = block_mean(valid[start:stop].astype(np.float32), f) > 0.999
        self.weights = {}
        for band in native.product.bands:
            f = BY_NAME[band].resolution // 10
            if f > 1:
                coarse = native.whole(band)
                self.weights[band] = injection_weights(self.degraded[f], valid_coarse[f], fill_nodata(coarse, coarse > 0))

    def detail(self, fine: np.ndarray, factor: int, start: int, stop: int, read_start: int) -> np.ndarray:
        """High-pass detail (k, rows, W) of the filled fine bands of a strip: each minus its degraded
        copy re-expanded bicubically."""
        first, last = max(start // factor - HALO // factor, 0), min(stop // factor + HALO // factor,
                                                                   self.degraded[factor].shape[1])
        out = fine[:, start - read_start : stop - read_start].copy()
        for band, low in zip(out, self.degraded[factor][:, first:last]):
            band -= upsample(low, factor, "cubic")[start - first * factor : stop - first * factor]
        return out


def ten_metre_strips(product: SafeProduct, method: str, scratch: Path,
                     decode) -> tuple[np.ndarray, Iterator[tuple[int, str, np.ndarray]]]:
    """The pixels valid in every band, and (first row, band, uint16 10 m rows) strip by strip,
    band by band (one band's strip in memory at a time).

    ``decode(band)`` yields (first row, reflectance rows) windows of a band at its native
    resolution; ``scratch`` holds the decoded bands while the strips are made.
    """
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resampling method {method!r}; choose from {RESAMPLERS}")
    native = NativeBands(product, scratch, decode)
    height, width = product.tile.size[10]
    valid = _valid(native, height, width)
    sharpening = Sharpening(native, valid) if method == "sharpen" else None

    def strips() -> Iterator[tuple[int, str, np.ndarray]]:
        for start, stop, read_start, read_stop in _strips(height):
            core = valid[start:stop]
            for band in TEN_M:
                yield start, band, np.where(core, native.rows(band, start, stop), 0).astype(np.uint16)
            fine = _filled_fine(native, read_start, read_stop) if sharpening else None
            for f in FACTORS:
                detail = sharpening.detail(fine, f, start, stop, read_start) if sharpening else None
                for band in (b for b in product.bands if BY_NAME[b].resolution == 10 * f):
                    coarse = native.rows(band, read_start, read_stop)
                    ten = upsample(fill_nodata(coarse, coarse > 0), f, "cubic" if sharpening else method)
                    ten = ten[start - read_start : stop - read_start]
                    if sharpening:
                        inject(ten, sharpening.weights[band], detail)
                    np.rint(ten, out=ten)
                    np.clip(ten, 1, SATURATED - 1, out=ten)
                    yield start, band, np.where(core, ten, 0).astype(np.uint16)
                del detail  # before the next factor's

    return valid, strips()
