"""``lc evaluate MAP --points``: accuracy and class areas estimated from a sample of reference
points, with the stratified estimator of Olofsson et al. (2014) (``lc.mapping.areas``).

Points drawn by ``lc sample`` carry their stratum (the map class they were drawn from); any
other points (a survey, a systematic grid) are post-stratified by the map class under them,
which the estimator allows for simple random and systematic samples. Every point left out is
counted by reason; a point that contradicts the map or the design stops the assessment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lc.mapping.areas import area_estimates
from lc.mapping.mosaic import locate, map_tiles
from lc.mapping.points import pixel_area, points_crs, read_design, read_points, value_counts, values_at
from lc.raster import write_json_atomic
from lc.worldcover import CODES, NODATA

log = logging.getLogger(__name__)
STRATIFIED = "stratified random sample, strata = map classes (lc sample)"
POST_STRATIFIED = ("post-stratified: the points carry no stratum, so the map class under each point is its stratum "
                   "(valid for simple random or systematic samples)")


def assessment_path(source: Path) -> Path:
    """``MAP.assessment.json`` beside a map, ``region.assessment.json`` in a mapped region's folder."""
    source = Path(source)
    return source / "region.assessment.json" if source.is_dir() else source.with_name(source.stem + ".assessment.json")


def assess_sample(source: Path, points: Path, *, code_column: str = "reference", crs: str | None = None,
                  reference: list[Path] | None = None, out_json: Path | None = None, figures: bool = True) -> dict:
    """Sample-based estimates of the accuracy and class areas of a map (a GeoTIFF, or a mapped
    region, each place counted once), written as JSON (+ figures).

    The reference class of each point comes from ``code_column`` of the points file, or, with
    ``reference`` rasters (WorldCover tiles, a label raster), from the first raster covering it.
    """
    source, points = Path(source), Path(points)
    tiles = map_tiles(source)
    area = pixel_area(tiles)
    frame = points_crs(tiles)
    pts = read_points(points, frame, code_column=None if reference else code_column, crs=crs)
    owner, rows, cols = locate(tiles, pts.x, pts.y, frame)
    inside = owner >= 0
    mapped_class = np.zeros(len(pts), dtype=np.int64)
    for k, tile in enumerate(tiles):
        at = owner == k
        if at.any():
            mapped_class[at] = values_at([tile.path], pts.x[at], pts.y[at], frame)
    labels = values_at(reference, pts.x, pts.y, frame).astype(float) if reference else pts.reference
    if reference:
        unknown = sorted(set(labels[labels != NODATA].astype(int).tolist()) - set(CODES))
        if unknown:
            raise ValueError(f"{reference[0]}: reference values that are not WorldCover codes: {unknown}")
        labels[labels == NODATA] = np.nan
    _check_duplicates(pts.path, pts.ids, owner * (1 << 20) + rows, cols, inside)
    design = read_design(points)
    counts_all = value_counts(tiles)[list(CODES)]
    _check_strata(pts, mapped_class, inside, design, counts_all, source)

    excluded = {
        "outside_map": int((~inside).sum()),
        "map_no_data": int((inside & (mapped_class == NODATA)).sum()),
        "no_reference": int((inside & (mapped_class != NODATA) & np.isnan(labels)).sum()),
    }
    used = inside & (mapped_class != NODATA) & ~np.isnan(labels)
    for reason, k in excluded.items():
        if k:
            log.warning("%s: %d of %d points left out (%s)", points, k, len(pts), reason.replace("_", " "))
    if not used.any():
        raise ValueError(f"{points}: no point has both a mapped class and a reference class ({excluded})")
    index = {c: k for k, c in enumerate(CODES)}
    counts = np.zeros((len(CODES), len(CODES)), dtype=np.int64)  # rows = map, columns = reference
    np.add.at(counts, ([index[int(c)] for c in mapped_class[used]], [index[int(c)] for c in labels[used]]), 1)
    estimates = area_estimates(counts, counts_all, area, CODES, reference_rows=False)
    report = {
        "kind": "sample-based estimates (Olofsson et al. 2014)",
        "map": str(source),
        "points": str(points),
        "design": STRATIFIED if pts.stratum is not None else POST_STRATIFIED,
        "seed": design.seed if design else None,
        "reference_source": ", ".join(map(str, reference)) + " read at the points" if reference
        else f"column {code_column!r} of {points.name}",
        "n_points": len(pts),
        "n_used": int(used.sum()),
        "excluded": excluded,
        "sample_counts": {"rows": "map", "columns": "reference", "counts": counts.tolist()},
        **estimates,
    }
    out_json = Path(out_json or assessment_path(source))
    write_json_atomic(report, out_json)
    if figures:
        from lc.mapping.area_figures import plot_area_estimates, plot_sample_accuracy

        stem = out_json.with_suffix("")
        plot_area_estimates(estimates, Path(f"{stem}_areas.png"),
                            title=f"Class areas estimated from {report['n_used']} points (95% CI)")
        plot_sample_accuracy(report, Path(f"{stem}_accuracy.png"))
    return report


def _check_duplicates(path: Path, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray, inside: np.ndarray) -> None:
    pixel = rows.astype(np.int64) * (1 << 32) + cols
    _, first, counts = np.unique(pixel[inside], return_index=True, return_counts=True)
    if (counts > 1).any():
        twice = pixel[inside][first[counts > 1]]
        shown = [ids[inside][pixel[inside] == p].tolist() for p in twice[:5]]
        raise ValueError(f"{path}: {int((counts > 1).sum())} map pixel(s) hold more than one point "
                         f"(point ids {shown}{' …' if twice.size > 5 else ''}): a sample lists each pixel once")


def _check_strata(pts, mapped_class: np.ndarray, inside: np.ndarray, design, counts_all: np.ndarray,
                  source: Path) -> None:
    """Points drawn by ``lc sample`` must lie on their own stratum, and the map must still have
    the strata sizes the design recorded: otherwise they were drawn from another map."""
    if design is not None:
        now = {c: int(k) for c, k in zip(CODES, counts_all) if k}
        if now != design.mapped_counts():
            raise ValueError(f"{source}: its class counts {now} differ from those the sample was drawn from "
                             f"({design.mapped_counts()}, {design.map}): draw a new sample of this map")
    if pts.stratum is None:
        return
    wrong = inside & ~np.isnan(pts.stratum) & (pts.stratum != mapped_class)
    if wrong.any():
        shown = ", ".join(f"point {i}: stratum {int(s)}, map {int(m)}"
                          for i, s, m in zip(pts.ids[wrong][:5], pts.stratum[wrong][:5], mapped_class[wrong][:5]))
        raise ValueError(f"{pts.path}: {int(wrong.sum())} point(s) do not lie on their stratum in {source} "
                         f"({shown}): the sample was drawn from another map")
