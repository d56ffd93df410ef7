"""What a mapped region adds up to: a VRT mosaic and a quick-look per CRS, and, where the tiles
were compared with WorldCover, the region's agreement counting every place once
(``lc.mapping.mosaic`` gives the rule)."""

from __future__ import annotations

from pathlib import Path

import rasterio

from lc.mapping.accuracy import ConfusionAccumulator, agreement
from lc.mapping.assess import truth_path
from lc.mapping.mosaic import TileMap, owned_strips, write_vrt
from lc.raster import pixel_area_m2, write_json_atomic
from lc.worldcover import CODES


def finish_region(out: Path, maps: list[Path], evaluated: bool) -> dict:
    """Mosaics (``mosaic_<EPSG>.vrt`` + ``.png``) and ``region.metrics.json``; what was written."""
    from lc.figures import plot_map_quicklook

    tiles = [TileMap.open(m) for m in maps]
    mosaics = []
    for crs in sorted({t.crs.to_string() for t in tiles}):
        group = [t for t in tiles if t.crs.to_string() == crs]
        vrt = write_vrt(group, out / f"mosaic_{crs.replace(':', '').lower()}.vrt")
        plot_map_quicklook(vrt, vrt.with_suffix(".png"))
        mosaics.append(str(vrt))
    written: dict = {"mosaics": mosaics}
    if evaluated and tiles:
        written["agreement"] = str(region_agreement(tiles, out / "region.metrics.json"))
    return written


def region_agreement(tiles: list[TileMap], out_json: Path) -> Path:
    """Confusion, metrics and class areas over the region's tiles, each place counted once."""
    acc = ConfusionAccumulator(CODES)
    for tile in tiles:
        truth = truth_path(tile.path)
        if not truth.exists():
            raise ValueError(f"{tile.path}: no reference on its grid ({truth.name}); map it again with WorldCover")
        with rasterio.open(tile.path) as mp, rasterio.open(truth) as tr:
            area = pixel_area_m2(mp)
            for window, owned in owned_strips(tile, tiles):
                acc.update(tr.read(1, window=window)[owned], mp.read(1, window=window)[owned])
    report = {"tiles": [str(t.path) for t in tiles], "rule": "nearest tile centre within a CRS; across UTM zones, "
              "the tile of the zone the place's longitude falls in", **agreement(acc, area)}
    write_json_atomic(report, out_json)
    return out_json
