"""The `lc` command line: help, overrides, and the MLflow UI serving the local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lc.cli.main import app
from lc.config import load_config, resolved_yaml
from tests.helpers import free_port, wait_until_served

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command():
    out = CliRunner().invoke(app, ["--help"]).output
    for command in ("synth", "prepare", "data", "train", "study", "register", "predict", "sample", "evaluate", "report", "ui",
                    "acquire"):
        assert command in out


def test_study_refit_overrides_must_be_key_value_pairs():
    result = CliRunner().invoke(app, ["study", "studies/demo.yaml", "--refit", "train.max_epochs"])
    assert result.exit_code == 2 and "--refit takes KEY=VALUE" in result.output


def test_the_demo_study_refits_with_twice_make_trains_budget():
    """`make train` must end within 5 minutes, a study within an hour: the study spends some of it on training
    its finalists twice as long (24 epochs of 2048 chips, 3072 steps of 16, against 1536)."""
    from lc.tracking.space import load_spec, overrides

    train = load_config(ROOT / "experiments" / "demo.yaml")
    spec = load_spec(ROOT / "studies" / "demo.yaml")
    refit = load_config(ROOT / spec.experiment, overrides(spec, spec.refit))
    steps = [c.train.max_epochs * c.data.samples_per_epoch // c.data.batch_size for c in (train, refit)]
    assert steps == [1536, 3072] and refit.train.patience >= refit.train.max_epochs


def test_overrides_and_resolved_config_round_trip(tmp_path):
    cfg = load_config(ROOT / "experiments" / "demo.yaml", ["train.lr=3e-4", "model.encoder=resnet34",
                                                          "data.split=[0.6, 0.2, 0.2]"])
    assert cfg.train.lr == 3e-4 and cfg.model.encoder == "resnet34" and cfg.data.split == (0.6, 0.2, 0.2)
    (tmp_path / "resolved.yaml").write_text(resolved_yaml(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg
    with pytest.raises(ValueError, match="model.encoder"):
        load_config(ROOT / "experiments" / "demo.yaml", ["model.encoder=vgg16"])


def test_ui_serves_the_local_store(mlflow_store, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lc.cli.main", "ui", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_served(f"http://127.0.0.1:{port}/health", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=5",
                                    timeout=5) as response:
            assert b"experiments" in response.read()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_greece_experiment_fails_at_once_offline_naming_what_it_needs(monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    for var in ("LC_WORLDCOVER_URL", "LC_CDSE_CATALOGUE_URL", "LC_CDSE_DOWNLOAD_URL", "LC_CDSE_TOKEN_URL"):
        monkeypatch.setenv(var, closed)
    start = time.time()
    result = CliRunner().invoke(app, ["data", str(ROOT / "experiments" / "greece-2021.yaml")])
    assert result.exit_code == 2 and time.time() - start < 15
    assert closed in result.output and "CDSE" in result.output


def test_make_data_prepares_again_what_changed_and_keeps_what_did_not(small_raw, tmp_path):
    import shutil

    import yaml

    from lc.sources.experiment import make_data

    raw = tmp_path / "raw"
    shutil.copytree(small_raw[0], raw)
    experiment = tmp_path / "exp.yaml"
    settings = {"name": "small", "source": {"kind": "synth", "seed": 0, "size": 96}, "raw_dir": str(raw),
                "scenes_dir": str(tmp_path / "scenes"), "data": {"scenes": [str(tmp_path / "scenes" / "epirus_L1C")]}}
    experiment.write_text(yaml.safe_dump(settings))
    scene = make_data(load_config(experiment))[0]
    prepared = (scene / "scene.json").stat().st_mtime_ns
    make_data(load_config(experiment))
    assert (scene / "scene.json").stat().st_mtime_ns == prepared  # nothing changed: nothing redone
    image = (scene / "image.tif").read_bytes()
    make_data(load_config(experiment, ["source.seed=1"]))  # other products: other scenes
    assert (scene / "scene.json").stat().st_mtime_ns != prepared and (scene / "image.tif").read_bytes() != image
    assert json.loads((raw / "synth.json").read_text())["seed"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["train", "experiments/demo.yaml", "trian.lr=0.1"], "experiments/demo.yaml: unknown key 'trian' (did you mean 'train'?)"),
    (["train", "experiments/demo.yaml", "train.los=ce"], "unknown key 'train.los' (did you mean 'train.loss'?)"),
    (["train", "experiments/demo.yaml", "model.encoder=resnet99"], "model.encoder: Input should be 'resnet18', 'resnet34' or 'resnet50'"),
    (["train", "experiments/nope.yaml"], "experiments/nope.yaml: no such file"),
    (["study", "studies/nope.yaml", "--n-trials", "1"], "studies/nope.yaml: no such file"),
    (["ui", "--space", "studies/nope.yaml"], "studies/nope.yaml: no such file"),
    (["baseline", "experiments/demo.yaml", "data.seed=many"], "data.seed: Input should be a valid integer"),
    (["train", "experiments/demo.yaml", "data.scenes=[data/other/scenes/one_L1C]"],  # the scenes swapped, the twin left
     "data.val_twins names data/demo/scenes/thessaly_L1C, not in data.scenes"),
    (["predict", "--model", "models:/landcover/1"], "give a product or scene, or --experiment CONFIG"),
])
def test_a_mistake_gets_one_clear_line_and_status_2(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3


def test_reading_commands_name_the_studies_that_exist_and_create_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "demo.journal").write_text("")
    space = ROOT / "studies" / "full.yaml"
    for args in (["report", "--space", str(space)], ["register", "--space", str(space)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "no study 'full'" in result.output and "demo" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["demo.journal"]
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(("precision", "trials", "refit"), [("bf16-mixed", "4", "6"), ("32-true", "2", "3"), (None, "", "")])
def test_the_demo_is_sized_for_the_precision_the_cpu_trains_in(precision, trials, refit):
    """Without native bfloat16 a step costs about 4.6 times as much: fewer trials, a shorter refit and no refit
    of the recipe keep `make demo` within 15 minutes on 2 cores. None: what this machine's CPU is detected to have."""
    from lc.learning.hardware import resolve_precision

    if precision is None:
        trials, refit = ("2", "3") if resolve_precision("auto", "cpu") == "32-true" else ("4", "6")
    recipe = subprocess.run(["make", "-n", "--no-print-directory", "demo",
                             *([f"PRECISION={precision}"] if precision else [])], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    study = next(line.split() for line in recipe.splitlines() if line.startswith(".venv/bin/lc study"))
    assert study[study.index("--n-trials") + 1] == trials
    assert study[study.index("--refit") + 1] == f"train.max_epochs={refit}"
    assert ("--no-refit-recipe" in study) == (trials == "2")
