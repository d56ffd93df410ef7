"""Sample points on disk: ``lc sample`` writes them (GeoPackage, GeoJSON or CSV, with the design
beside them), ``lc evaluate --points`` reads them back labelled, and reference rasters are read
at them.

A points file names its points' reference class in a column of WorldCover codes. Files with a
CRS (GeoPackage, GeoJSON) are reprojected to the map's; a CSV gives ``lon``/``lat`` (WGS 84)
or ``x``/``y`` with ``--crs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.crs import CRS
from rasterio.transform import rowcol, xy
from rasterio.warp import transform as warp_transform

from lc.mapping.mosaic import TileMap, map_tiles, owned_pixels
from lc.mapping.sampling import SampleDesign, count_strata, design_for, draw_ranks, pick_pixels
from lc.raster import atomic_output, pixel_area_m2
from lc.worldcover import CODES, class_name

DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".csv": None}
WGS84 = CRS.from_epsg(4326)


def design_path(points: Path) -> Path:
    """The sample design recorded beside a points file: ``<points>.design.json``."""
    return points.with_name(points.name + ".design.json")


def _driver(path: Path) -> str | None:
    if path.suffix.lower() not in DRIVERS:
        raise ValueError(f"{path}: points are written as {', '.join(DRIVERS)}, not {path.suffix or 'no suffix'}")
    return DRIVERS[path.suffix.lower()]


def draw_sample(source: Path, out: Path, *, n: int | None = None, target_se: float | None = None,
                expected_users_accuracy: float = 0.8, min_per_stratum: int = 50, seed: int = 0,
                overwrite: bool = False) -> SampleDesign:
    """``lc sample``: a stratified random sample of a map's pixels (a GeoTIFF, or a mapped region:
    one design over all its tiles, each place counted once) written to ``out``.

    Each point carries ``point_id``, ``map_class`` (+ name), ``stratum``, ``inclusion_probability``,
    its ``tile`` and pixel (``row``, ``col``), coordinates ``x``/``y`` in the tile's CRS (``epsg``),
    ``lon``/``lat`` and an empty ``reference`` column to label. Points come in random order, so
    labelling them in file order reveals nothing of the map. The design goes to ``<out>.design.json``.
    The points' CRS is the map's, or WGS 84 for a region over several CRSs.
    """
    source, out = Path(source), Path(out)
    driver = _driver(out)
    tiles = map_tiles(source)
    area = pixel_area(tiles)
    counts = value_counts(tiles)
    crs = points_crs(tiles)
    design = design_for(str(source), crs.to_string(), area, counts, n=n, target_se=target_se, seed=seed,
                        expected_users_accuracy=expected_users_accuracy, min_per_stratum=min_per_stratum)
    ranks = draw_ranks(np.array([s.mapped_pixels for s in design.strata]),
                       np.array([s.sample_size for s in design.strata]), seed)
    offsets = np.cumsum([0] + [t.height for t in tiles])  # the tiles' rows, one after the other
    col_offsets = {}

    def stacked():
        for k, window, strip in owned_pixels(tiles):
            col_offsets[k] = int(window.col_off)
            yield int(offsets[k] + window.row_off), strip

    rows, cols, strata = pick_pixels(stacked(), [s.code for s in design.strata], ranks)
    order = np.random.default_rng([seed, 1]).permutation(rows.size)
    rows, cols, strata = rows[order], cols[order], strata[order]
    k = np.searchsorted(offsets, rows, side="right") - 1
    rows, cols = rows - offsets[k], cols + np.array([col_offsets[i] for i in k], dtype=np.int64)
    x, y, lon, lat = (np.zeros(rows.size) for _ in range(4))
    for i, tile in enumerate(tiles):
        at = k == i
        if at.any():
            x[at], y[at] = (np.asarray(v) for v in xy(tile.transform, rows[at], cols[at], offset="center"))
            lon[at], lat[at] = warp_transform(tile.crs, WGS84, x[at].tolist(), y[at].tolist())
    probability = {s.code: s.inclusion_probability for s in design.strata}
    table = pd.DataFrame({
        "point_id": np.arange(1, rows.size + 1), "map_class": strata,
        "map_class_name": [class_name(int(c)) for c in strata], "stratum": strata,
        "inclusion_probability": [probability[int(c)] for c in strata], "tile": [tiles[i].path.name for i in k],
        "epsg": [tiles[i].crs.to_epsg() for i in k], "row": rows, "col": cols, "x": x, "y": y, "lon": lon, "lat": lat,
        "reference": pd.array([None] * rows.size, dtype="Int64"),
    })
    geometry = gpd.points_from_xy(x, y) if crs != WGS84 else gpd.points_from_xy(lon, lat)
    with atomic_output(out, overwrite=overwrite) as staged:
        if driver is None:
            table.to_csv(staged, index=False)
        else:
            gpd.GeoDataFrame(table, geometry=geometry, crs=crs).to_file(staged, driver=driver, layer="points",
                                                                         engine="pyogrio")
        design_path(staged).write_text(design.model_dump_json(indent=2) + "\n")
    return design


def points_crs(tiles: list[TileMap]) -> CRS:
    """The CRS points of these maps are given in: theirs, or WGS 84 where they span several."""
    return tiles[0].crs if len({t.crs for t in tiles}) == 1 else WGS84


def pixel_area(tiles: list[TileMap]) -> float:
    areas = set()
    for tile in tiles:
        with rasterio.open(tile.path) as src:
            areas.add(pixel_area_m2(src))
    if len(areas) != 1:
        raise ValueError(f"the maps differ in pixel area ({sorted(areas)} m²): one sample needs one grid size")
    return areas.pop()


@dataclass
class Points:
    """Points read from a file, in a map's CRS: ids, coordinates, reference codes (NaN: not
    labelled) and, for points drawn by ``lc sample``, their stratum."""

    path: Path
    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray | None
    stratum: np.ndarray | None

    def __len__(self) -> int:
        return self.ids.size


def read_points(path: Path, map_crs: CRS, *, code_column: str | None = "reference", crs: str | None = None) -> Points:
    """Points of a GeoPackage/GeoJSON (any CRS) or CSV (``lon``/``lat``, or ``x``/``y`` with ``crs``).

    With ``code_column=None`` no reference column is read (a raster will give the labels).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such points file")
    if path.suffix.lower() == ".csv":
        table = pd.read_csv(path)
        x, y = _csv_coordinates(path, table, crs, map_crs)
    else:
        frame = gpd.read_file(path, engine="pyogrio")
        if frame.crs is None and crs is None:
            raise ValueError(f"{path}: the points have no CRS; pass --crs")
        frame = frame.set_crs(crs, allow_override=True) if crs else frame
        if not frame.geom_type.eq("Point").all():
            raise ValueError(f"{path}: every feature must be a point, found {sorted(set(frame.geom_type))}")
        frame = frame.to_crs(map_crs)
        table, x, y = frame, frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()
    if len(table) == 0:
        raise ValueError(f"{path}: holds no points")
    ids = table["point_id"].to_numpy() if "point_id" in table else np.arange(1, len(table) + 1)
    reference = None
    if code_column is not None:
        if code_column not in table:
            columns = [c for c in table.columns if c != "geometry"]
            raise ValueError(f"{path}: no column {code_column!r} of reference codes (columns: {columns}); "
                             f"name it with --code-column")
        reference = _reference_codes(path, ids, table[code_column])
    stratum = table["stratum"].to_numpy(dtype=float) if "stratum" in table else None
    return Points(path, ids, np.asarray(x, float), np.asarray(y, float), reference, stratum)


def _csv_coordinates(path: Path, table: pd.DataFrame, crs: str | None, map_crs: CRS) -> tuple[list, list]:
    if crs is not None and {"x", "y"} <= set(table.columns):
        return warp_transform(CRS.from_user_input(crs), map_crs, table["x"].tolist(), table["y"].tolist())
    if {"lon", "lat"} <= set(table.columns):
        return warp_transform(WGS84, map_crs, table["lon"].tolist(), table["lat"].tolist())
    if {"x", "y"} <= set(table.columns):
        raise ValueError(f"{path}: x/y columns need their CRS: pass --crs (e.g. --crs EPSG:32634), or give lon/lat")
    raise ValueError(f"{path}: needs lon/lat columns (WGS 84) or x/y with --crs; columns: {list(table.columns)}")


def _reference_codes(path: Path, ids: np.ndarray, column: pd.Series) -> np.ndarray:
    """Reference codes as floats, NaN where blank; an error naming the rows of any other value."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    blank = column.isna().to_numpy()
    bad = ~blank & ~np.isin(values, CODES)
    if bad.any():
        shown = ", ".join(f"point {i}: {v!r}" for i, v in zip(ids[bad][:5], column[bad][:5]))
        raise ValueError(f"{path}: {int(bad.sum())} reference value(s) are not WorldCover codes {list(CODES)} "
                         f"({shown}{', …' if bad.sum() > 5 else ''})")
    return np.where(blank, np.nan, values)


def values_at(rasters: list[Path], x: np.ndarray, y: np.ndarray, crs: CRS) -> np.ndarray:
    """Band 1 of the first raster covering each point (0 where none does); rasters in any CRS."""
    values = np.zeros(x.size, dtype=np.int64)
    todo = np.ones(x.size, dtype=bool)
    for raster in rasters:
        with rasterio.open(raster) as src:
            px, py = warp_transform(crs, src.crs, x[todo].tolist(), y[todo].tolist())
            r, c = (np.asarray(v) for v in rowcol(src.transform, px, py))
            inside = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
            index = np.flatnonzero(todo)[inside]
            values[index] = [v[0] for v in src.sample(zip(np.asarray(px)[inside], np.asarray(py)[inside]))]
            todo[index] = False
    return values


def read_design(points: Path) -> SampleDesign | None:
    """The design recorded beside a points file, if there is one."""
    path = design_path(Path(points))
    return SampleDesign.model_validate(json.loads(path.read_text())) if path.exists() else None


def value_counts(tiles: list[TileMap]) -> np.ndarray:
    """(256,) pixels of each uint8 value over the tiles, each place counted once (0: no data or
    owned by another tile)."""
    return count_strata((0, strip) for _, _, strip in owned_pixels(tiles))
