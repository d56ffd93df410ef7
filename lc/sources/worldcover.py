"""ESA WorldCover tiles from ESA's public bucket: which tiles cover an area, and their download."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from lc.sources.http import (
    BACKOFF_S,
    RETRIES,
    TIMEOUT_S,
    AcquireError,
    BBox,
    NotFoundError,
    download,
    endpoint,
    file_digest,
    update_manifest,
    validate_bbox,
)

log = logging.getLogger(__name__)

WORLDCOVER_VERSIONS = {2020: "v100", 2021: "v200"}
WORLDCOVER_TILE_DEG = 3


def worldcover_version(year: int) -> str:
    """WorldCover algorithm version of a map year (2020: v100, 2021: v200)."""
    try:
        return WORLDCOVER_VERSIONS[year]
    except KeyError:
        raise ValueError(f"WorldCover exists for {sorted(WORLDCOVER_VERSIONS)}, not {year}") from None


def _tile_starts(lo: float, hi: float) -> range:
    """Lower edges of the 3° tiles that overlap [lo, hi) (a box edge on a border adds nothing)."""
    step = WORLDCOVER_TILE_DEG
    return range(math.floor(lo / step) * step, math.ceil(hi / step) * step, step)


def _tile_id(lat: int, lon: int) -> str:
    """'N36E021' for the tile whose south-west corner is (lat, lon)."""
    return f"{'N' if lat >= 0 else 'S'}{abs(lat):02d}{'E' if lon >= 0 else 'W'}{abs(lon):03d}"


def worldcover_tiles(bbox: BBox, year: int) -> list[str]:
    """File names of the WorldCover tiles covering `bbox` (W, S, E, N), south to north."""
    version = worldcover_version(year)
    w, s, e, n = validate_bbox(bbox)
    return [
        f"ESA_WorldCover_10m_{year}_{version}_{_tile_id(lat, lon)}_Map.tif"
        for lat in _tile_starts(s, n)
        for lon in _tile_starts(w, e)
    ]


def tiles_in(folder: Path) -> list[Path]:
    """Every WorldCover map tile in ``folder``, by ESA's file naming, sorted."""
    return sorted(Path(folder).glob("ESA_WorldCover_*_Map.tif"))


def worldcover_url(name: str, year: int, base_url: str | None = None) -> str:
    """URL of tile `name` in ESA's bucket layout: <base>/<version>/<year>/map/<name>."""
    return f"{endpoint('worldcover', base_url)}/{worldcover_version(year)}/{year}/map/{name}"


def check_tiff(path: Path) -> None:
    """Refuse a file that does not start like a (Big)TIFF, e.g. a saved error page."""
    with path.open("rb") as f:
        head = f.read(4)
    if head not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise AcquireError(f"{path.name} is not a GeoTIFF")


def fetch_worldcover(
    bbox: BBox,
    year: int,
    out: Path,
    base_url: str | None = None,
    *,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    timeout: float = TIMEOUT_S,
    progress: bool = True,
) -> list[Path]:
    """Download the WorldCover tiles covering `bbox` into `out`; tiles absent upstream are skipped.

    Records version, year, URL, size and sha256 of each tile (and the absent ones) in
    `out/ESA_WorldCover_10m_<year>_<version>_manifest.json`.
    """
    out = Path(out)
    version = worldcover_version(year)
    manifest = out / f"ESA_WorldCover_10m_{year}_{version}_manifest.json"
    header = {"source": "ESA WorldCover", "version": version, "year": year}
    paths = []
    for name in worldcover_tiles(bbox, year):
        url = worldcover_url(name, year, base_url)
        try:
            path = download(
                url, out / name, retries=retries, backoff=backoff, timeout=timeout,
                verify=check_tiff, progress=progress,
            )
        except NotFoundError:
            log.warning("%s: no such tile upstream (HTTP 404: open sea?), skipped", name)
            update_manifest(manifest, header, "missing", name, {"url": url, "reason": "HTTP 404"})
            continue
        entry = {"url": url, "size": path.stat().st_size, "sha256": file_digest(path, "sha256")}
        update_manifest(manifest, header, "tiles", name, entry)
        paths.append(path)
    return paths
