"""`lc acquire`: download ESA WorldCover tiles and Sentinel-2 products (thin CLI)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from lc.sources import cdse, http
from lc.sources import worldcover as worldcover_source
from lc.sources.cdse import ProductHit
from lc.sources.http import AcquireError

app = typer.Typer(
    help="Download real inputs: ESA WorldCover tiles (public) and Sentinel-2 SAFE zips "
    "from the Copernicus Data Space Ecosystem (free account).",
    no_args_is_help=True,
)


class Level(str, Enum):
    L1C = "L1C"
    L2A = "L2A"


DateOpt = Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="YYYY-MM-DD, inclusive.")]
OutOpt = Annotated[Optional[Path], typer.Option(help="Folder for the files and the manifest.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="List what would be downloaded; fetch nothing.")]


@contextmanager
def _reported() -> Iterator[None]:
    """Turn expected failures into a one-line message and exit status 1."""
    try:
        yield
    except (AcquireError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None


def _require_out(out: Path | None) -> Path:
    if out is None:
        raise typer.BadParameter("needed unless --dry-run", param_hint="--out")
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _table(hits: Sequence[ProductHit]) -> str:
    """One line per product (date, cloud cover, size, name) and a total."""
    lines = [
        f"{h.date:%Y-%m-%d %H:%M}  {'?' if h.cloud_cover is None else f'{h.cloud_cover:5.1f}%':>6}"
        f"  {_size(h.size):>10}  {h.name}"
        for h in hits
    ]
    total = sum(h.size or 0 for h in hits)
    return "\n".join([*lines, f"{len(hits)} product(s), {_size(total)}"])


@app.command()
def worldcover(
    bbox: Annotated[str, typer.Option(help="W,S,E,N in degrees (EPSG:4326).")],
    year: Annotated[int, typer.Option(help="2020 (map v100) or 2021 (map v200).")] = 2021,
    out: OutOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """ESA WorldCover 3°x3° tiles covering BBOX (tiles absent upstream, i.e. sea, are skipped)."""
    with _reported():
        box = http.parse_bbox(bbox)
        names = worldcover_source.worldcover_tiles(box, year)
        if dry_run:
            typer.echo("\n".join(worldcover_source.worldcover_url(n, year) for n in names))
            return
        paths = worldcover_source.fetch_worldcover(box, year, _require_out(out))
        missing = sorted(set(names) - {p.name for p in paths})
        typer.echo(f"{len(paths)} tile(s) in {out}")
        if missing:
            typer.echo(f"absent upstream (no land), skipped: {', '.join(missing)}")


@app.command()
def sentinel2(
    start: DateOpt,
    end: DateOpt,
    level: Annotated[Level, typer.Option(help="Processing level.")],
    bbox: Annotated[Optional[str], typer.Option(help="W,S,E,N in degrees (EPSG:4326).")] = None,
    tile: Annotated[Optional[str], typer.Option(help="MGRS tile id, e.g. 34SEJ.")] = None,
    max_cloud: Annotated[Optional[float], typer.Option(help="Largest cloud cover, percent.")] = None,
    out: OutOpt = None,
    dry_run: DryRunOpt = False,
    all_baselines: Annotated[bool, typer.Option(
        "--all-baselines", help="Keep every processing baseline of an acquisition, not only the newest."
    )] = False,
) -> None:
    """Search CDSE for Sentinel-2 products and download them as SAFE zips.

    Downloading needs CDSE_USERNAME/CDSE_PASSWORD or ~/.netrc; --dry-run does not.
    """
    with _reported():
        hits = cdse.search_sentinel2(
            tile=tile, bbox=http.parse_bbox(bbox) if bbox else None, start=start.date(),
            end=end.date(), level=level.value, max_cloud=max_cloud,
        )
        if not all_baselines:
            hits = cdse.latest_baselines(hits)
        typer.echo(_table(hits))
        if dry_run:
            return
        paths = cdse.fetch_sentinel2(hits, _require_out(out))
        typer.echo(f"{len(paths)} product(s) in {out}")
