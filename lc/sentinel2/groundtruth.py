"""Ground truth on a scene's grid: WorldCover tiles (EPSG:4326) mosaicked and reprojected
with nearest (or mode) resampling, never bilinear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError, WindowError
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from lc.raster import Grid
from lc.sentinel2.safe import ProductError
from lc.worldcover import NODATA


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


def check_truth_covers(worldcover: list[Path], grid: Grid) -> None:
    """Fail early, naming the tiles, when no ground truth covers the grid."""
    factor = max(1, max(grid.width, grid.height) // 256)
    coarse = Grid(grid.crs, grid.transform @ Affine.scale(factor), max(1, grid.height // factor), max(1, grid.width // factor))
    labels, _ = labels_for_grid(list(worldcover), coarse)
    if not labels.any():
        names = ", ".join(str(p) for p in worldcover)
        raise ProductError(f"ground truth {names} does not cover the scene (CRS {grid.crs}, bounds {grid.bounds})")
