"""The report: every figure exists, carries real data, and the tables add up."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lc.config import load_config
from lc.mapping.baseline import run_baseline
from lc.mapping.predict import predict
from lc.reporting.report import build_report
from lc.tracking.study import run_study
from tests.helpers import mlflow_store_in
from tests.test_study import _write_space

FIGURES = ("learning_curves", "study_optimization_history", "study_parallel_coordinates", "study_slice",
           "miou_by_choice", "confusion_validation", "confusion_validation_normalised", "class_scores_validation",
           "new_area_map", "confusion_new_area", "confusion_new_area_normalised", "class_scores_new_area",
           "class_areas")


@pytest.fixture(scope="module")
def report(small_raw, small_scenes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    with mlflow_store_in(folder):
        yield _reported(folder, small_raw, small_scenes)


def _reported(folder, small_raw, small_scenes):
    """A 3-trial study with a refit, its model's map of the other area, a report before and after the baseline."""
    space = _write_space(folder, small_scenes, name="reported", refit={"train.max_epochs": 3})
    run_study(space, 3)
    raw, manifest = small_raw
    entry = next(p for p in manifest["products"] if p["role"] == "predict")
    map_tif = folder / "maps" / "new.tif"
    map_tif.parent.mkdir()
    predict("models:/landcover/Production", raw / entry["path"], map_tif,
            worldcover=[raw / w for w in entry["worldcover"]], tile=32, overlap=8)
    bare = build_report(space, folder / "bare", map_tif)  # no per-pixel baseline yet
    baseline = run_baseline(load_config(folder / "experiment.yaml"), small_scenes["thrace_L2A"], pixels=5000)
    out = build_report(space, folder / "out", map_tif)
    return out, map_tif, bare, baseline


def test_every_figure_exists_in_png_and_svg_with_its_data(report):
    out, *_ = report
    for name in FIGURES:
        for suffix in (".png", ".svg"):
            assert (out / f"{name}{suffix}").stat().st_size > 1000, f"{name}{suffix}"
        if not name.startswith("study_"):
            assert len(pd.read_csv(out / f"{name}.csv")) > 0, name


def test_confusion_figure_table_sums_to_the_evaluated_pixels(report):
    out, map_tif, *_ = report
    metrics = json.loads(map_tif.with_name("new.metrics.json").read_text())
    table = pd.read_csv(out / "confusion_new_area.csv", index_col=0)
    assert table.to_numpy().sum() == metrics["n_pixels"] > 0
    areas = pd.read_csv(out / "class_areas.csv", index_col=0)
    assert areas["mapped_ha"].sum() == pytest.approx(metrics["area_estimates"]["mapped_area_m2"] / 1e4)


def test_report_md_and_self_contained_html(report):
    out, *_ = report
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"({name}.png)" in md, name
    assert "95% confidence intervals" in md and "| trial | state | val_miou |" in md
    assert "## Refit of the best configuration" in md and "3 epochs" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count(".png)") and "<table>" in html
    assert "src=\"" + "http" not in html


def test_the_report_sets_the_unet_beside_the_per_pixel_baseline(report):
    out, map_tif, bare, baseline = report
    md = (out / "report.md").read_text()
    section = md.split("## The U-Net against the per-pixel baseline")[1].split("##")[0]
    assert baseline.run_id in section
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert {"validation", "test", "mapped area"} <= set(rows)
    assert f"{baseline.test['miou']:.3f}" in rows["test"] and f"{baseline.new_area['miou']:.3f}" in rows["mapped area"]
    unet_map = json.loads(map_tif.with_name("new.metrics.json").read_text())["miou"]
    assert f"{unet_map:.3f}" in rows["mapped area"]
    assert "run `make baseline`" in (bare / "report.md").read_text()
