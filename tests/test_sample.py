"""The sample design (`lc sample`) and the sample-based estimates (`lc evaluate --points`):
against Olofsson et al. (2014) and against a simulation of many samples of a known map."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine
from typer.testing import CliRunner

from lc.cli.main import app
from lc.mapping.areas import area_estimates
from lc.mapping.points import design_path, read_points
from lc.mapping.sampled import assess_sample
from lc.mapping.sampling import allocate, count_strata, draw_ranks, pick_pixels, sample_size_for_se
from lc.raster import write_classmap
from lc.worldcover import CODES

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_500_000.0)
CRS = "EPSG:32634"


def known_map(shape=(120, 150), seed=1) -> tuple[np.ndarray, np.ndarray]:
    """A map of four classes (one rare, 1.2%) with a no-data corner, and the 'true' classes
    under it: each map class right at its own rate, wrong towards the others."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    mapped = np.where(cols < shape[1] * 0.55, 10, np.where(rows < shape[0] * 0.4, 30, 80)).astype(np.uint8)
    rare = (shape[0] // 10, shape[1] // 8)
    mapped[5:5 + rare[0], 20:20 + rare[1]] = 50
    mapped[:4, -6:] = 0
    right = {10: 0.85, 30: 0.75, 80: 0.9, 50: 0.6}
    truth = mapped.copy()
    for code, p in right.items():
        where = mapped == code
        wrong = where & (rng.random(shape) > p)
        truth[wrong] = rng.choice([c for c in (10, 30, 80, 50, 40) if c != code], wrong.sum())
    return mapped, truth


def write_map(path: Path, array: np.ndarray) -> Path:
    write_classmap(path, array, rasterio.crs.CRS.from_string(CRS), TRANSFORM)
    return path


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sample")
    mapped, truth = known_map()
    return {"map": write_map(folder / "map.tif", mapped), "truth": write_map(folder / "truth.tif", truth),
            "mapped": mapped, "true": truth, "folder": folder}


def lc(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


# ----------------------------------------------------------------------- the design

def test_sample_size_and_allocation_of_olofssons_example() -> None:
    # Section 5.1: target SE(O) 0.01, expected user's accuracies 0.7, 0.6, 0.9, 0.95 -> n = 641
    mapped = [200_000, 150_000, 3_200_000, 6_450_000]
    assert sample_size_for_se(mapped, 0.01, [0.7, 0.6, 0.9, 0.95]) == 641
    # proportional would give 13 and 10 points to the rare strata; at least 75 each, the rest proportional
    assert allocate(mapped, 641, 75).tolist() == [75, 75, 163, 328]
    assert allocate(mapped, 641, 0).tolist() == [13, 10, 205, 413]


def test_allocation_takes_all_of_a_small_stratum_and_refuses_what_cannot_be() -> None:
    assert allocate([30, 1000, 0, 5000], 300, 50).tolist() == [30, 50, 0, 220]
    with pytest.raises(ValueError, match="cannot give 50 to each of the 3 mapped classes"):
        allocate([100, 1000, 5000], 120, 50)
    with pytest.raises(ValueError, match="larger than the 30 mapped pixels"):
        allocate([10, 20], 31, 5)


def test_streamed_draw_equals_a_draw_over_the_whole_map(maps: dict) -> None:
    mapped = maps["mapped"]
    codes = [10, 30, 50, 80]
    counts = count_strata([(0, mapped)])[codes]
    ranks = draw_ranks(counts, np.array([40, 30, 20, 25]), seed=5)
    whole = pick_pixels([(0, mapped)], codes, ranks)
    strips = [(r, mapped[r:r + 7]) for r in range(0, mapped.shape[0], 7)]
    streamed = pick_pixels(strips, codes, ranks)
    assert all(np.array_equal(np.sort(a * 1000 + b), np.sort(c * 1000 + d))
               for a, b, c, d in [(whole[0], whole[1], streamed[0], streamed[1])])
    assert (mapped[whole[0], whole[1]] == whole[2]).all()


def test_lc_sample_writes_points_that_follow_the_design(maps: dict, tmp_path: Path) -> None:
    out = tmp_path / "points.gpkg"
    printed = lc("sample", maps["map"], "--n", 200, "--min-per-class", 30, "--seed", 3, "--out", out)
    assert "200 points" in printed
    points = gpd.read_file(out)
    design = json.loads(design_path(out).read_text())
    assert points.crs == CRS and len(points) == 200 and design["n"] == 200 and design["seed"] == 3
    sizes = {s["code"]: s["sample_size"] for s in design["strata"]}
    assert points["stratum"].value_counts().to_dict() == sizes
    assert sizes[50] == 30  # the rare class gets its minimum, not its 0.3% share
    with rasterio.open(maps["map"]) as src:
        under = np.array([v[0] for v in src.sample(zip(points.geometry.x, points.geometry.y))])
        assert (under == points["map_class"]).all() and (under == points["stratum"]).all()
    mapped = {c: int((maps["mapped"] == c).sum()) for c in sizes}
    expected = points["stratum"].map(lambda c: sizes[c] / mapped[c])
    assert np.allclose(points["inclusion_probability"], expected)
    assert points[["row", "col"]].drop_duplicates().shape[0] == 200
    assert points["reference"].isna().all() and points["point_id"].tolist() == list(range(1, 201))
    assert points["stratum"].iloc[:40].nunique() > 1  # shuffled: the file order does not reveal the strata
    lon, lat = points.to_crs("EPSG:4326").geometry.x, points.to_crs("EPSG:4326").geometry.y
    assert np.allclose(points["lon"], lon) and np.allclose(points["lat"], lat)
    again = tmp_path / "again.gpkg"
    lc("sample", maps["map"], "--n", 200, "--min-per-class", 30, "--seed", 3, "--out", again)
    assert gpd.read_file(again).drop(columns="geometry").equals(points.drop(columns="geometry"))
    other = tmp_path / "other.gpkg"
    lc("sample", maps["map"], "--n", 200, "--min-per-class", 30, "--seed", 4, "--out", other)
    assert set(gpd.read_file(other)["row"] * 1000 + gpd.read_file(other)["col"]) != set(
        points["row"] * 1000 + points["col"])


def test_lc_sample_from_a_target_standard_error(maps: dict, tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    lc("sample", maps["map"], "--target-se", 0.02, "--expected-accuracy", 0.8, "--min-per-class", 20, "--out", out)
    design = json.loads(design_path(out).read_text())
    mapped = [s["mapped_pixels"] for s in design["strata"]]
    assert design["n"] == sample_size_for_se(mapped, 0.02, 0.8) == 400  # (0.4 / 0.02)^2
    assert len(pd.read_csv(out)) == 400
    result = CliRunner().invoke(app, ["sample", str(maps["map"]), "--out", str(tmp_path / "q.gpkg")])
    assert result.exit_code == 2 and "either a sample size or a target standard error" in result.output
    result = CliRunner().invoke(app, ["sample", str(maps["map"]), "--n", "300", "--out", str(out)])
    assert result.exit_code == 2 and "exists" in result.output


# ------------------------------------------------------------------- the estimators

def test_intervals_cover_the_true_values_about_95_percent_of_the_time() -> None:
    """1000 stratified samples of one known map: each 95% interval must hold the full-map value
    in about 95% of samples (binomial SE 0.7 points). Measured while sizing it: a stratum sampled
    at a quarter or more of its pixels over-covers (97.6-99.3%: the paper's variances have no
    finite-population correction), and a user's accuracy near 0.9 from 60 points under-covers
    (89%: the normal interval's known weakness near 1). Hence strata of 1500+ pixels, 100+ points."""
    mapped, truth = known_map((300, 400))
    codes = [10, 30, 50, 80]
    valid = mapped != 0
    strata_px = count_strata([(0, mapped)])[codes]
    sizes = allocate(strata_px, 800, 100)  # 100 of the rare class's 1500 pixels
    true_oa = (mapped == truth)[valid].mean()
    true_area = {c: (truth[valid] == c).sum() for c in (10, 30, 40, 50, 80)}
    true_users = {c: (truth[mapped == c] == c).mean() for c in codes}
    hits: dict[str, list[bool]] = {}
    index = {c: k for k, c in enumerate(CODES)}
    all_counts = count_strata([(0, mapped)])[list(CODES)]
    for rep in range(1000):
        rows, cols, strata = pick_pixels([(0, mapped)], codes, draw_ranks(strata_px, sizes, seed=rep))
        n = np.zeros((len(CODES), len(CODES)), dtype=np.int64)
        np.add.at(n, ([index[c] for c in strata], [index[c] for c in truth[rows, cols]]), 1)
        est = area_estimates(n, all_counts, 100.0, CODES, reference_rows=False)

        def covers(interval: dict, value: float) -> bool:
            return interval["ci95"][0] <= value <= interval["ci95"][1]

        hits.setdefault("overall", []).append(covers(est["overall_accuracy"], true_oa))
        for c, area in true_area.items():
            hits.setdefault(f"area {c}", []).append(covers(est["per_class"][str(c)]["area_pixels"], area))
        for c, users in true_users.items():
            hits.setdefault(f"users {c}", []).append(covers(est["per_class"][str(c)]["users_accuracy"], users))
    coverage = {k: float(np.mean(v)) for k, v in hits.items()}
    assert all(0.925 <= v <= 0.975 for v in coverage.values()), coverage


def label_points(points: Path, truth: np.ndarray, out: Path, driver: str | None = "GPKG", crs: str | None = None):
    frame = gpd.read_file(points)
    frame["reference"] = truth[frame["row"], frame["col"]].astype(int)
    if crs:
        frame = frame.to_crs(crs)
    frame.to_file(out, driver=driver)
    return frame


def labelled_rows(points: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = gpd.read_file(points)
    return frame["row"].to_numpy(), frame["col"].to_numpy()


@pytest.fixture(scope="module")
def drawn(maps: dict) -> Path:
    out = maps["folder"] / "drawn.gpkg"
    lc("sample", maps["map"], "--n", 300, "--min-per-class", 40, "--seed", 0, "--out", out)
    return out


def test_labels_from_a_column_or_a_raster_give_the_same_estimates(maps: dict, drawn: Path, tmp_path: Path) -> None:
    from_raster = assess_sample(maps["map"], drawn, reference=[maps["truth"]], out_json=tmp_path / "a.json")
    labelled = tmp_path / "labelled.gpkg"
    label_points(drawn, maps["true"], labelled)
    printed = lc("evaluate", maps["map"], "--points", labelled, "--out", tmp_path / "b.json")
    from_column = json.loads((tmp_path / "b.json").read_text())
    assert "overall accuracy" in printed and "300 of 300 points" in printed
    for key in ("overall_accuracy", "per_class", "sample_counts"):
        assert from_column[key] == from_raster[key]
    assert from_column["design"].startswith("stratified") and from_column["n_used"] == 300
    assert (tmp_path / "a_areas.png").exists() and (tmp_path / "a_accuracy.png").exists()
    # each stratum weighs by its mapped share: the rare class's area is that of the map, not of the sample
    rare = from_raster["per_class"]["50"]["area_proportion"]
    truly = np.mean(maps["true"][maps["mapped"] != 0] == 50)
    in_sample = np.mean(maps["true"][labelled_rows(labelled)] == 50)
    assert rare["ci95"][0] <= truly <= rare["ci95"][1] < in_sample


def test_points_in_another_crs_or_a_csv_give_the_same_estimates(maps: dict, drawn: Path, tmp_path: Path) -> None:
    label_points(drawn, maps["true"], tmp_path / "wgs84.geojson", driver="GeoJSON", crs="EPSG:4326")
    frame = label_points(drawn, maps["true"], tmp_path / "l.gpkg")
    frame.drop(columns="geometry").to_csv(tmp_path / "lonlat.csv", index=False)
    frame[["point_id", "x", "y", "reference"]].to_csv(tmp_path / "xy.csv", index=False)
    base = assess_sample(maps["map"], tmp_path / "l.gpkg", figures=False, out_json=tmp_path / "base.json")
    for path, crs in ((tmp_path / "wgs84.geojson", None), (tmp_path / "lonlat.csv", None),
                      (tmp_path / "xy.csv", CRS)):
        other = assess_sample(maps["map"], path, crs=crs, figures=False, out_json=tmp_path / "o.json")
        assert other["sample_counts"] == base["sample_counts"], path
    # x/y without their CRS is refused; post-stratified points (no stratum column) are named so
    with pytest.raises(ValueError, match="x/y columns need their CRS"):
        assess_sample(maps["map"], tmp_path / "xy.csv", figures=False, out_json=tmp_path / "o.json")
    assert assess_sample(maps["map"], tmp_path / "xy.csv", crs=CRS, figures=False,
                         out_json=tmp_path / "o.json")["design"].startswith("post-stratified")


def test_bad_rows_are_refused_or_counted_never_dropped_silently(maps: dict, drawn: Path, tmp_path: Path) -> None:
    frame = label_points(drawn, maps["true"], tmp_path / "ok.gpkg")

    def assess(edit) -> dict:
        bad = edit(frame.copy())
        bad.to_file(tmp_path / "bad.gpkg", driver="GPKG")
        return assess_sample(maps["map"], tmp_path / "bad.gpkg", figures=False, out_json=tmp_path / "bad.json")

    def set_reference(f, rows, value):
        f["reference"] = f["reference"].astype(object)
        f.loc[rows, "reference"] = value
        return f

    with pytest.raises(ValueError, match=r"2 reference value\(s\) are not WorldCover codes .*point 4: '12'"):
        assess(lambda f: set_reference(f, [3, 7], 12))
    with pytest.raises(ValueError, match=r"1 map pixel\(s\) hold more than one point \(point ids \[\[1, 301\]\]"):
        assess(lambda f: pd.concat([f, f.iloc[[0]].assign(point_id=301)], ignore_index=True))
    moved = frame.geometry.iloc[5].x - 1e6

    def shift(f):
        f.loc[5, "geometry"] = type(f.geometry.iloc[5])(moved, f.geometry.iloc[5].y)
        return f
    result = assess(shift)
    assert result["excluded"]["outside_map"] == 1 and result["n_used"] == 299
    result = assess(lambda f: set_reference(f, [1, 2], None))
    assert result["excluded"]["no_reference"] == 2 and result["n_used"] == 298
    with pytest.raises(ValueError, match="no column 'reference'"):
        assess(lambda f: f.drop(columns="reference"))


def test_a_sample_of_another_map_is_refused(maps: dict, drawn: Path, tmp_path: Path) -> None:
    changed = maps["mapped"].copy()
    changed[60:80, 10:40] = 30
    other_map = write_map(tmp_path / "changed.tif", changed)
    label_points(drawn, maps["true"], tmp_path / "l.gpkg")
    with pytest.raises(ValueError, match="do not lie on their stratum"):
        assess_sample(other_map, tmp_path / "l.gpkg", figures=False, out_json=tmp_path / "x.json")
    design_path(tmp_path / "l.gpkg").write_text(design_path(drawn).read_text())
    with pytest.raises(ValueError, match="differ from those the sample was drawn from"):
        assess_sample(other_map, tmp_path / "l.gpkg", figures=False, out_json=tmp_path / "x.json")


def test_read_points_needs_a_crs_for_geometries_without_one(maps: dict, drawn: Path, tmp_path: Path) -> None:
    frame = gpd.read_file(drawn).set_crs(None, allow_override=True)
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        frame.to_file(tmp_path / "nocrs.gpkg", driver="GPKG")
    with rasterio.open(maps["map"]) as src:
        assert len(read_points(tmp_path / "nocrs.gpkg", src.crs, code_column=None, crs=CRS)) == 300
        with pytest.raises(ValueError, match="have no CRS"):
            read_points(tmp_path / "nocrs.gpkg", src.crs, code_column=None)
