"""Rasters shared by every stage: grids, atomic outputs and WorldCover-coded class-map GeoTIFFs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from lc.worldcover import NODATA, category_names, colormap

CLASSMAP_PROFILE = {
    "driver": "GTiff",
    "dtype": "uint8",
    "count": 1,
    "nodata": NODATA,
    "tiled": True,
    "blockxsize": 512,
    "blockysize": 512,
    "compress": "deflate",
}


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


@contextlib.contextmanager
def atomic_output(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    Works for files and folders. Nothing is left behind when the block raises.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        staged = tmp_dir / final.name
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"nothing was written for {final}")
        trash = tmp_dir / ".old"
        if final.exists():
            os.replace(final, trash)
        try:
            os.replace(staged, final)
        except OSError:
            if trash.exists():
                os.replace(trash, final)  # put the previous output back
            raise
        for sidecar in tmp_dir.glob(f"{final.name}.*"):
            os.replace(sidecar, final.parent / sidecar.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON (no NaN) to a temporary file beside ``path``, flushed to disk, then rename it
    over ``path``: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering [0, length) with the last tile snapped inside."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def pixel_area_m2(src: rasterio.DatasetReader) -> float:
    """Area of one pixel in m^2 from the transform; the CRS must be projected."""
    if src.crs is None or not src.crs.is_projected:
        raise ValueError(f"{src.name}: areas need a projected CRS, got {src.crs}")
    t = src.transform
    return abs(t.a * t.e - t.b * t.d) * src.crs.linear_units_factor[1] ** 2


def write_category_names(path: Path) -> Path:
    """Write GDAL's PAM sidecar (``.aux.xml``) naming the WorldCover classes of band 1."""
    categories = "".join(f"<Category>{escape(name)}</Category>" for name in category_names())
    sidecar = path.with_name(path.name + ".aux.xml")
    sidecar.write_text(
        f'<PAMDataset><PAMRasterBand band="1"><CategoryNames>{categories}</CategoryNames>'
        "</PAMRasterBand></PAMDataset>\n"
    )
    return sidecar


def open_classmap(path: Path, crs: CRS, transform: Affine, width: int, height: int,
                  compress: str = "deflate") -> rasterio.io.DatasetWriter:
    """Open a tiled uint8 class-map GeoTIFF for (windowed) writing, with the colour table."""
    profile = {**CLASSMAP_PROFILE, "compress": compress}
    dst = rasterio.open(path, "w", crs=crs, transform=transform, width=width, height=height, **profile)
    dst.write_colormap(1, colormap())
    dst.set_band_description(1, "WorldCover class code")
    dst.update_tags(1, **{f"CLASS_{code}": name for code, name in enumerate(category_names()) if name})
    return dst


def write_classmap(path: Path, array: np.ndarray, crs: CRS, transform: Affine) -> None:
    """Write a whole uint8 class map (tiled GeoTIFF, colour table, class names)."""
    with open_classmap(path, crs, transform, array.shape[1], array.shape[0]) as dst:
        dst.write(array.astype(np.uint8), 1)
    write_category_names(path)


def to_cog(src: Path, dst: Path, category_names: bool = True) -> None:
    """Copy a raster to a Cloud-Optimised GeoTIFF (nearest overviews keep class codes)."""
    rasterio.shutil.copy(
        src, dst, driver="COG", compress="deflate", overview_resampling="nearest", blocksize=512,
        num_threads="all_cpus",
    )
    if category_names:
        write_category_names(dst)
