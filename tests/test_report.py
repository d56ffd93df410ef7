"""The report: every figure exists, carries real data, and the tables add up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import mlflow
import optuna
import pandas as pd
import pytest

from lc.config import load_config
from lc.mapping.assess import truth_path
from lc.mapping.baseline import run_baseline
from lc.mapping.points import draw_sample
from lc.mapping.predict import predict
from lc.mapping.sampled import assess_sample
from lc.reporting.report import build_report
from lc.tracking.storage import open_storage
from lc.tracking.study import run_study
from lc.tracking.views import SHARED_VIEW_TAG, TRIAL_COLUMNS, column, trials_view
from tests.helpers import free_port, mlflow_store_in, wait_until_served
from tests.test_study import ROOT, _write_space

CHROMIUM = shutil.which("chromium")

FIGURES = ("learning_curves", "study_optimization_history", "study_parallel_coordinates", "study_slice",
           "miou_by_choice", "confusion_validation", "confusion_validation_normalised", "class_scores_validation",
           "new_area_map", "confusion_new_area", "confusion_new_area_normalised", "class_scores_new_area",
           "class_areas", "new_area_sample_accuracy", "new_area_sample_areas")


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
    bare = build_report(space, folder / "bare", map_tif)  # no per-pixel baseline yet, no sample
    baseline = run_baseline(load_config(folder / "experiment.yaml"), small_scenes["thrace_L2A"], pixels=5000)
    points = draw_sample(map_tif, map_tif.with_name("new.points.gpkg"), n=300, min_per_stratum=20)
    assess_sample(map_tif, map_tif.with_name("new.points.gpkg"), reference=[truth_path(map_tif)])
    assert points.n == 300
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
    assert areas["mapped_ha"].sum() == pytest.approx(sum(c["mapped_ha"] for c in metrics["class_areas"].values()))
    assert areas["reference_ha"].sum() == pytest.approx(metrics["n_pixels"] / 100)


def test_report_md_and_self_contained_html(report):
    out, *_ = report
    md = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"({name}.png)" in md, name
    assert "| trial | state | val_miou |" in md and "the agreement of two maps, not the map's accuracy" in md
    assert "## Refits before registration" in md and "3 epochs" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == md.count(".png)") and "<table>" in html
    assert "src=\"" + "http" not in html


def test_the_report_gives_the_sample_based_estimates_with_their_intervals(report):
    out, map_tif, bare, _ = report
    md = (out / "report.md").read_text()
    section = md.split("## New area: accuracy and class areas estimated from a sample")[1].split("\n## ")[0]
    a = json.loads(map_tif.with_name("new.assessment.json").read_text())
    oa = a["overall_accuracy"]
    assert f"Overall accuracy {oa['estimate']:.3f} ± {(oa['ci95'][1] - oa['ci95'][0]) / 2:.3f}" in section
    assert "300 of 300 points, stratified random sample" in section and "new.truth.tif read at the points" in section
    assert "| class | points | user's accuracy | UA ± 95% |" in section and "| estimated ha | ± 95% ha |" in section
    table = pd.read_csv(out / "new_area_sample_areas.csv", index_col="code")
    assert (table["ci95_low_ha"] < table["estimated_ha"]).any()
    assert "No sample of this map was assessed" in (bare / "report.md").read_text()


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


def test_the_ui_view_selects_the_studys_trials_and_their_columns(report):
    out, *_ = report
    view = trials_view(load_config(out.parent / "experiment.yaml").mlflow_experiment, "reported")
    saved = json.loads(mlflow.get_experiment(view.experiment_id).tags[SHARED_VIEW_TAG + view.key])
    assert saved == view.state and saved["orderByKey"] == "metrics.`best_val_miou`" and saved["orderByAsc"] is False
    runs = mlflow.search_runs([view.experiment_id], filter_string=saved["searchFilter"], output_format="list")
    study = optuna.load_study(study_name="reported", storage=open_storage(str(out.parent / "studies" / "reported.journal")))
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in study.trials}  # no parent, refit
    complete = next(r for r in runs if r.data.tags["state"] == "COMPLETE")
    fields = {"metrics": complete.data.metrics, "params": complete.data.params, "tags": complete.data.tags}
    assert [column(kind, key) for kind, key in TRIAL_COLUMNS if key in fields[kind]] == saved["selectedColumns"]
    assert view.charts("http://127.0.0.1:5000") == view.table("http://127.0.0.1:5000") + "&compareRunsMode=CHART"


@pytest.mark.skipif(CHROMIUM is None, reason="no browser: Debian's chromium is not installed (apt-get install chromium)")
def test_make_ui_link_opens_the_trials_table_in_a_browser(report, tmp_path):
    out, *_ = report
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lc.cli.main", "ui", "--port", str(port), "--space",
                               str(out.parent / "reported.yaml")], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = [server.stdout.readline() for _ in range(3)]
        link = lines[1].split()[-1]
        assert lines[1].startswith("trials of study 'reported':") and lines[2].split()[-1] == link + "&compareRunsMode=CHART"
        wait_until_served(f"http://127.0.0.1:{port}/health", server)
        page = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=2400,1000",
                               "--virtual-time-budget=30000", "--dump-dom", link], capture_output=True, text=True,
                              timeout=180).stdout
        for shown in ("trial 0", "trial 1", "trial 2", "best_val_miou", "test_miou", "model.encoder", "train.loss",
                      "train.lr", "COMPLETE"):
            assert shown in page, shown
        assert "study reported" not in page  # the parent run is filtered out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="no browser: Debian's chromium is not installed (apt-get install chromium)")
def test_report_html_opens_in_a_browser_with_every_image(report):
    out, *_ = report
    opened = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                             "--virtual-time-budget=5000", "--dump-dom", (out / "report.html").as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert "Failed to load resource" not in opened.stderr and "ERR_FILE_NOT_FOUND" not in opened.stderr
    page = opened.stdout
    assert page.count("<img") == page.count('src="data:image/png;base64,') >= len(FIGURES)
    assert all(f'alt="{name}"' in page for name in FIGURES)
