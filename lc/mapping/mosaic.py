"""One region map from many tile maps: a VRT mosaic per CRS, and the rule that says which tile a
place belongs to where tiles overlap.

The rule, as for MGRS tiles (109.8 km every 100 km):

- **Within a CRS** each tile keeps the part of it nearer its own centre than a neighbour's:
  the overlap with a neighbour beside it (east/west, or north/south) is cut at the midline
  between the two centres, on the 10 m grid both share. A VRT per CRS lays out these cells.
- **Across UTM zones** a place belongs to the tile of the zone its longitude falls in, where
  such a tile covers it. Both zones' mosaics show the strip where they overlap; the region's
  metrics and class areas count every place once, by this rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window

from lc.raster import atomic_output
from lc.worldcover import colormap


@dataclass(frozen=True)
class TileMap:
    """A mapped tile: its class map, grid and the cell of it that the mosaic keeps."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def open(cls, path: Path) -> TileMap:
        with rasterio.open(path) as src:
            return cls(Path(path), src.crs, src.transform, src.width, src.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the tile's CRS (north-up grids)."""
        west, north = self.transform.c, self.transform.f
        return west, north + self.height * self.transform.e, west + self.width * self.transform.a, north

    @property
    def centre(self) -> tuple[float, float]:
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2

    @property
    def zone(self) -> int | None:
        """The UTM zone of a WGS 84 / UTM CRS (EPSG 326zz or 327zz), else None."""
        epsg = self.crs.to_epsg() or 0
        return epsg % 100 if 32601 <= epsg <= 32760 else None


def _pixel_edge(value: float, origin: float, size: float) -> int:
    """The pixel edge nearest ``value``, rounding halves up, so two tiles on one grid agree."""
    return math.floor((value - origin) / size + 0.5)


def cell_window(tile: TileMap, tiles: Sequence[TileMap]) -> Window:
    """The window of ``tile`` nearer its centre than any same-CRS neighbour's beside it."""
    west, south, east, north = tile.bounds
    cx, cy = tile.centre
    for other in tiles:
        if other.path == tile.path or other.crs != tile.crs:
            continue
        ow, os_, oe, on = other.bounds
        if ow >= east or oe <= west or os_ >= north or on <= south:
            continue
        ox, oy = other.centre
        if abs(ox - cx) >= abs(oy - cy):
            mid = (cx + ox) / 2
            east, west = (min(east, mid), west) if ox > cx else (east, max(west, mid))
        else:
            mid = (cy + oy) / 2
            north, south = (min(north, mid), south) if oy > cy else (north, max(south, mid))
    t = tile.transform
    col0, col1 = _pixel_edge(west, t.c, t.a), _pixel_edge(east, t.c, t.a)
    row0, row1 = _pixel_edge(north, t.f, t.e), _pixel_edge(south, t.f, t.e)
    return Window(col0, row0, max(0, col1 - col0), max(0, row1 - row0))


def write_vrt(tiles: Sequence[TileMap], out: Path) -> Path:
    """A VRT mosaic of same-CRS tiles on one 10 m grid, each contributing its cell."""
    if len({t.crs for t in tiles}) != 1:
        raise ValueError("a VRT mosaic holds tiles of one CRS")
    size = tiles[0].transform.a
    if any(t.transform.a != size or t.transform.e != -size for t in tiles):
        raise ValueError("the tiles of a mosaic must share one north-up pixel size")
    west = min(t.bounds[0] for t in tiles)
    north = max(t.bounds[3] for t in tiles)
    width = round((max(t.bounds[2] for t in tiles) - west) / size)
    height = round((north - min(t.bounds[1] for t in tiles)) / size)
    sources = []
    for tile in tiles:
        cell = cell_window(tile, tiles)
        dx = round((tile.transform.c - west) / size) + cell.col_off
        dy = round((north - tile.transform.f) / size) + cell.row_off
        sources.append(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(str(tile.path.resolve()))}</SourceFilename>'
            f"<SourceBand>1</SourceBand><SrcRect xOff=\"{cell.col_off}\" yOff=\"{cell.row_off}\" xSize=\"{cell.width}\" "
            f'ySize="{cell.height}"/><DstRect xOff="{dx}" yOff="{dy}" xSize="{cell.width}" ySize="{cell.height}"/>'
            f"<NODATA>0</NODATA></ComplexSource>")
    colours = "".join(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>' for _, (r, g, b, a) in sorted(colormap().items()))
    geo = f"{west}, {size}, 0, {north}, 0, {-size}"
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(tiles[0].crs.to_wkt())}</SRS>'
           f"<GeoTransform>{geo}</GeoTransform><VRTRasterBand dataType=\"Byte\" band=\"1\"><NoDataValue>0</NoDataValue>"
           f"<ColorInterp>Palette</ColorInterp><ColorTable>{colours}</ColorTable>{''.join(sources)}"
           f"</VRTRasterBand></VRTDataset>\n")
    with atomic_output(out, overwrite=True) as staged:
        staged.write_text(xml)
    return out


def _rivals(tile: TileMap, tiles: Sequence[TileMap]) -> list[TileMap]:
    """The tiles of other UTM zones that may claim part of ``tile``."""
    return [t for t in tiles if t.crs != tile.crs and t.zone is not None and tile.zone is not None and t.zone != tile.zone]


def _claimed(tile: TileMap, rivals: Sequence[TileMap], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where points (``x``, ``y`` in ``tile``'s CRS) belong to a rival: their longitude lies in the
    rival's zone and the rival covers them."""
    claimed = np.zeros(np.shape(x), dtype=bool)
    if not rivals:
        return claimed
    lon, _ = Transformer.from_crs(tile.crs, "EPSG:4326", always_xy=True).transform(x, y)
    zone = np.floor((np.asarray(lon) + 180) / 6).astype(int) + 1
    for rival in rivals:
        theirs = zone == rival.zone
        if theirs.any():
            rx, ry = Transformer.from_crs(tile.crs, rival.crs, always_xy=True).transform(x[theirs], y[theirs])
            w, s, e, n = rival.bounds
            claimed[theirs] |= (rx >= w) & (rx < e) & (ry > s) & (ry <= n)
    return claimed


def owned_strips(tile: TileMap, tiles: Sequence[TileMap], rows: int = 1024) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, mask) by strips of ``tile``: True where the region counts this tile's pixel (its
    cell, and across zones only where no tile of the pixel's own zone covers it)."""
    cell = cell_window(tile, tiles)
    rivals = _rivals(tile, tiles)
    for row in range(int(cell.row_off), int(cell.row_off + cell.height), rows):
        window = Window(cell.col_off, row, cell.width, min(rows, int(cell.row_off + cell.height) - row))
        mask = np.ones((int(window.height), int(window.width)), dtype=bool)
        if rivals:
            cols, lines = np.meshgrid(np.arange(window.width) + window.col_off + 0.5, np.arange(window.height) + row + 0.5)
            mask &= ~_claimed(tile, rivals, *(tile.transform @ (cols, lines)))
        yield window, mask


def owned_pixels(tiles: Sequence[TileMap]) -> Iterator[tuple[int, Window, np.ndarray]]:
    """(tile index, window, class codes) of every tile by strips, 0 where another tile owns the place."""
    for k, tile in enumerate(tiles):
        with rasterio.open(tile.path) as src:
            for window, owned in owned_strips(tile, tiles):
                strip = src.read(1, window=window)
                strip[~owned] = 0
                yield k, window, strip


def locate(tiles: Sequence[TileMap], x: np.ndarray, y: np.ndarray, crs: CRS) -> tuple[np.ndarray, ...]:
    """(tile index, row, col) of the tile that owns each point (``x``, ``y`` in ``crs``); -1 where none does."""
    owner = np.full(np.shape(x), -1)
    rows, cols = np.full(np.shape(x), -1), np.full(np.shape(x), -1)
    for k, tile in enumerate(tiles):
        tx, ty = (np.asarray(v) for v in Transformer.from_crs(crs, tile.crs, always_xy=True).transform(x, y))
        r, c = (np.floor(v).astype(int) for v in (~tile.transform @ (tx, ty))[::-1])
        cell = cell_window(tile, tiles)
        inside = ((r >= cell.row_off) & (r < cell.row_off + cell.height) & (c >= cell.col_off)
                  & (c < cell.col_off + cell.width) & (owner < 0))
        inside[inside] &= ~_claimed(tile, _rivals(tile, tiles), tx[inside], ty[inside])
        owner[inside], rows[inside], cols[inside] = k, r[inside], c[inside]
    return owner, rows, cols


def map_tiles(source: Path) -> list[TileMap]:
    """A class map GeoTIFF as one tile, or the finished maps of a region (an ``lc map`` out folder)."""
    source = Path(source)
    if not source.is_dir():
        return [TileMap.open(source)]
    state = source / "region.json"
    if not state.exists():
        raise FileNotFoundError(f"{source}: neither a map nor a mapped region (no region.json)")
    done = [Path(e["map"]) for e in json.loads(state.read_text())["products"].values() if e["status"] == "done"]
    if not done:
        raise ValueError(f"{state}: no product of the region is mapped")
    return [TileMap.open(p) for p in done]
