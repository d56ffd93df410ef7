"""The per-pixel baseline (`lc baseline`): the U-Net's splits and pixels, its metrics, in MLflow."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lc.cli.main import app
from lc.config import load_config
from lc.learning.datamodule import LandCoverData
from lc.learning.inputs import IGNORE
from lc.mapping.baseline import find_baseline, run_baseline
from lc.sources.experiment import make_data
from lc.tracking import store
from tests.conftest import tiny_config
from tests.helpers import mlflow_store_in


@pytest.fixture(scope="module")
def experiment(small_raw, tmp_path_factory):
    """An experiment over the 96 px products, prepared as `make data` does, with its own MLflow store."""
    folder = tmp_path_factory.mktemp("baseline")
    with mlflow_store_in(folder):
        shutil.copytree(small_raw[0], folder / "raw")
        scenes = folder / "scenes"
        path = folder / "exp.yaml"
        cfg = tiny_config({s: scenes / s for s in ("epirus_L1C", "thessaly_L1C")}).model_dump(mode="json")
        path.write_text(yaml.safe_dump({**cfg, "name": "small", "raw_dir": str(folder / "raw"),
                                        "scenes_dir": str(scenes), "source": {"kind": "synth", "seed": 0, "size": 96}}))
        make_data(load_config(path))
        yield path


def test_baseline_scores_the_unets_pixels_with_the_unets_metrics(experiment):
    cfg = load_config(experiment)
    result = run_baseline(cfg, cfg.scenes_dir / "thrace_L2A", pixels=20_000)
    data = LandCoverData(cfg.data)
    data.setup()
    labelled = sum(int((data.validation_dataset()[i][1] != IGNORE).sum()) for i in range(len(data.validation_dataset())))
    assert np.asarray(result.val["confusion_matrix"]).sum() == labelled  # the very pixels the U-Net is scored on
    assert result.val["class_order"] == data.codes and 0 <= result.test["miou"] <= 1
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.tags["role"] == "baseline" and run.data.tags["split_key"] == store.split_key(cfg.data)
    assert run.data.params["data.harmonisation"] == cfg.data.harmonisation and run.data.params["baseline.features"].count("B") == 12
    assert run.data.metrics["new_area_miou"] == pytest.approx(result.new_area["miou"])
    area = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/metrics_new_area.json"))
    assert area["rows"] == "reference" and sum(map(sum, area["confusion_matrix"])) > 0
    figures = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "figures")}
    assert {f"figures/confusion_{s}.{x}" for s in ("val", "test") for x in ("png", "csv")} <= figures  # as a U-Net's
    assert find_baseline(cfg.mlflow_experiment, store.split_key(cfg.data), cfg.data.harmonisation) == result.run_id
    assert find_baseline(cfg.mlflow_experiment, store.split_key(cfg.data), "dark_object") is None


def test_lc_baseline_maps_the_experiments_other_area(experiment):
    result = CliRunner().invoke(app, ["baseline", str(experiment), "data.harmonisation=dark_object", "--pixels", "5000"])
    assert result.exit_code == 0, result.output
    assert "thrace_L2A mIoU" in result.output and "harmonisation dark_object" in result.output
