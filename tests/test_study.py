"""Studies: nested MLflow runs, registry, resume after a kill, failing trials, PostgreSQL workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from lc.tracking.models import load_model
from lc.tracking.refit import register_best
from lc.tracking.space import experiment_values, load_spec
from lc.tracking.storage import ended_trials, open_storage, open_study, process_identity
from lc.tracking.study import objective, parent_run, run_study
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _write_space(folder: Path, scenes, name: str = "tiny", refit: dict | None = None, fixed: dict | None = None,
                 **params) -> Path:
    cfg = tiny_config(scenes)
    experiment = folder / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    space = {
        "name": name,
        "experiment": str(experiment),
        "fixed": {"train.max_epochs": 2, **(fixed or {})},
        "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        "params": params or {"train.lr": {"low": 1e-3, "high": 5e-3, "log": True},
                             "train.loss": {"choices": ["ce", "dice"]}},
        "refit": refit or {},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _child_runs(parent_id: str):
    parent = mlflow.get_run(parent_id)
    return mlflow.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              output_format="list")


def test_three_trial_study_nests_runs_and_registers_the_best(small_scenes, mlflow_store, tmp_path):
    space = _write_space(tmp_path, small_scenes, refit={"train.max_epochs": 3})
    study = run_study(space, 3)
    assert len(ended_trials(study)) == 3
    # the first trial is the experiment's recipe: its lr (0.003) lies in the space; its loss (ce+dice) does not, so is sampled
    assert study.trials[0].params["train.lr"] == 0.003 and study.trials[0].params["train.loss"] in ("ce", "dice")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = mlflow.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sampler"] == "tpe"
    runs = _child_runs(parent_id)
    children = [r for r in runs if "trial_number" in r.data.tags]
    assert len(children) == 3
    assert {r.data.tags["trial_number"] for r in children} == {"0", "1", "2"}
    assert all(r.data.tags["state"] in ("COMPLETE", "PRUNED") for r in children)
    # the best config and the first trial's (the experiment's recipe), each trained 3 epochs, not 2
    refits = {r.data.tags["refit_of_trial"]: r for r in runs if r.data.tags.get("role") == "refit"}
    assert set(refits) == {str(study.best_trial.number), "0"}
    assert all(r.data.params["train.max_epochs"] == "3" for r in refits.values())
    refit = refits[str(study.best_trial.number)]
    assert refit.data.params["train.loss"] == study.best_params["train.loss"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id, "figures")}
    assert "figures/study_optimization_history.png" in artifacts
    assert "trials.csv" in {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id)}
    by_stage, contract = load_model("models:/landcover/Production")
    by_alias, _ = load_model("models:/landcover@production")
    version = mlflow.MlflowClient().get_model_version_by_alias("landcover", "production")
    refit_val = {n: r.data.metrics["best_val_miou"] for n, r in refits.items()}
    assert float(version.tags["val_miou"]) == pytest.approx(max(study.best_value, *refit_val.values()), abs=1e-6)
    if float(version.tags["val_miou"]) == pytest.approx(refit_val.get("0", -1), abs=1e-6):
        assert version.tags["trial_number"] == "0" and version.tags["refit"] == "true"
    else:
        assert version.tags["trial_number"] == str(study.best_trial.number)
    assert type(by_stage) is type(by_alias) and contract.bands[0] == "B01"
    run_study(space, 3)  # run again: nothing left to do, and the refit is found, not repeated
    assert len(_child_runs(parent_id)) == 3 + len(refits) and len(mlflow.MlflowClient().search_model_versions("name='landcover'")) == 1


def test_a_refit_whose_process_died_is_closed_and_run_again(small_scenes, mlflow_store, tmp_path):
    space = _write_space(tmp_path, small_scenes, name="refit", refit={"train.max_epochs": 3})
    spec = load_spec(space)
    storage = f"studies/{spec.name}.journal"
    study = open_study(spec, storage)
    parent = parent_run(spec, study, storage)
    study.optimize(lambda t: objective(t, spec, parent), n_trials=1)  # one trial, the study not finished yet
    client = mlflow.MlflowClient()
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    dead = client.create_run(mlflow.get_run(parent_id).info.experiment_id, tags={"mlflow.parentRunId": parent_id}).info.run_id
    study.set_user_attr("refit:0", {"run_id": dead, "worker": process_identity()})
    assert register_best(spec, study) is None  # a live process is refitting: left to it
    assert mlflow.get_run(dead).info.status == "RUNNING"
    host, boot, pid, _ = process_identity().split("/")
    study.set_user_attr("refit:0", {"run_id": dead, "worker": f"{host}/{boot}/{pid}/0"})  # its process is gone
    registration = register_best(spec, study)
    assert mlflow.get_run(dead).info.status == "KILLED" and mlflow.get_run(dead).data.tags["state"] == "INTERRUPTED"
    refit = study.user_attrs["refit:0"]
    assert refit["run_id"] != dead and refit["epochs"] == 3
    assert mlflow.get_run(refit["run_id"]).info.status == "FINISHED"
    assert registration.metric == pytest.approx(max(refit["val_miou"], study.best_value))
    # other refit settings (`lc study --refit`, as make demo passes) train again; the same ones are found
    shorter = spec.model_copy(update={"refit": {"train.max_epochs": 2}})
    register_best(shorter, study, force=True)
    again = study.user_attrs["refit:0"]
    assert again["run_id"] != refit["run_id"] and again["epochs"] == 2 and again["settings"] == {"train.max_epochs": 2}
    register_best(shorter, study, force=True)
    assert study.user_attrs["refit:0"]["run_id"] == again["run_id"]


def test_a_pruned_recipe_trial_is_refitted_too(small_scenes, mlflow_store, tmp_path, capsys):
    """Short trials may prune the recipe that wins in full: its refit runs like the best trial's."""
    space = _write_space(tmp_path, small_scenes, name="pruned", refit={"train.max_epochs": 1})
    spec = load_spec(space)
    storage = f"studies/{spec.name}.journal"
    study = open_study(spec, storage)
    study.add_trial(optuna.trial.create_trial(  # the experiment's lr (its ce+dice is not in the space)
        params={"train.lr": 0.003, "train.loss": "ce"}, state=optuna.trial.TrialState.PRUNED,
        distributions={"train.lr": optuna.distributions.FloatDistribution(1e-3, 5e-3, log=True),
                       "train.loss": optuna.distributions.CategoricalDistribution(["ce", "dice"])}))
    parent = parent_run(spec, study, storage)
    study.optimize(lambda t: objective(t, spec, parent), n_trials=1)
    assert study.best_trial.number == 1 and study.best_params["train.lr"] != 0.003
    registration = register_best(spec, study)
    refits = {n: study.user_attrs[f"refit:{n}"] for n in (0, 1)}
    assert all(r["epochs"] == 1 for r in refits.values())
    assert registration.metric == pytest.approx(max(study.best_value, *(r["val_miou"] for r in refits.values())))
    err = capsys.readouterr().err
    assert "[pruned] refit of trial 0: val mIoU" in err and "(the trial: pruned)" in err


def test_a_failing_trial_does_not_stop_the_study(small_scenes, mlflow_store, tmp_path, capsys):
    space = _write_space(tmp_path, small_scenes, name="failing",
                         **{"model.weights": {"choices": ["none", str(tmp_path / "missing.ckpt")]}})
    spec = load_spec(space)
    study = open_study(spec, f"studies/{spec.name}.journal")
    study.enqueue_trial({"model.weights": str(tmp_path / "missing.ckpt")})
    study.enqueue_trial({"model.weights": "none"})
    study = run_study(space, 2)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "missing.ckpt does not exist" in study.trials[0].user_attrs["error"]
    failed_run = next(r for r in _child_runs(study.user_attrs["mlflow_parent_run_id"]) if r.data.tags["trial_number"] == "0")
    assert failed_run.info.status == "FAILED" and "missing.ckpt" in failed_run.data.tags["error"]
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[failing] trial")]
    assert len(progress) == 2
    assert progress[0].startswith("[failing] trial 0 fail (") and "missing.ckpt" in progress[0]
    assert progress[0].endswith("1/2 ended")
    value = study.trials[1].value
    assert f"trial 1 complete val mIoU {value:.3f}" in progress[1] and progress[1].endswith(f"best {value:.3f} (trial 1); 2/2 ended")


def _lc(*args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lc.cli.main", *args], env=env, start_new_session=True, **kw)


def test_resume_after_a_kill_keeps_trials_and_finishes_the_count(small_scenes, mlflow_store, tmp_path):
    space = _write_space(tmp_path, small_scenes, name="killed")
    spec = load_spec(space)
    journal = tmp_path / "studies" / "killed.journal"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = _lc("study", str(space), "--n-trials", "3", env=env, cwd=tmp_path)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until one trial ended and the next one is running
        time.sleep(1)
        if journal.exists():
            trials = open_study(spec, str(journal)).trials
            if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 1 and any(
                t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials
            ):
                break
    else:
        proc.kill()
        pytest.fail("the study did not get going")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = open_study(spec, str(journal)).trials
    interrupted = next(t for t in before if t.state == optuna.trial.TrialState.RUNNING)
    completed = [t.number for t in before if t.state == optuna.trial.TrialState.COMPLETE]

    rerun = _lc("study", str(space), "--n-trials", "3", env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
    console = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, console
    assert "[killed] trial 2 complete val mIoU" in console and "3/3 ended" in console  # progress and results
    for chatter in ("GPU available", "TPU available", "Tip:", "Seed set to", "LeafSpec", "ExperimentalWarning",
                    "limit_train_batches", "to estimate number of stepping batches"):
        assert chatter not in console, chatter
    study = open_study(spec, str(journal))
    assert len(ended_trials(study)) == 3
    assert study.trials[interrupted.number].state == optuna.trial.TrialState.FAIL
    assert all(study.trials[n].state == optuna.trial.TrialState.COMPLETE for n in completed)
    killed = mlflow.get_run(interrupted.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["state"] == "INTERRUPTED"


def _postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(POSTGRES, connect_timeout=3).close()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _postgres_available(), reason=f"no PostgreSQL server answers at {POSTGRES}")
def test_two_workers_share_one_study_in_postgresql(small_scenes, mlflow_store, tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    space = _write_space(tmp_path, small_scenes, name=name)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [_lc("study", str(space), "--n-trials", "4", "--storage", POSTGRES, env=env, cwd=tmp_path) for _ in range(2)]
    try:
        assert [w.wait(timeout=400) for w in workers] == [0, 0]
        study = optuna.load_study(study_name=name, storage=open_storage(POSTGRES))
        ended = ended_trials(study)
        assert 4 <= len(ended) <= 5  # two workers may both claim the last slot
        identities = {t.user_attrs["worker"] for t in study.trials}
        assert len(identities) == 2  # both processes ran trials
        assert len(_child_runs(study.user_attrs["mlflow_parent_run_id"])) == len(study.trials)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES))


def test_conditional_variants_sample_one_config_key(tmp_path):
    spec = load_spec(ROOT / "studies" / "full.yaml")
    from lc.tracking.space import overrides, suggest

    r34 = suggest(optuna.trial.FixedTrial({"model.encoder": "resnet34", "model.weights@resnet34": "imagenet",
                                           "model.freeze_encoder_epochs": 1, "model.encoder_lr_factor": 0.1,
                                           "train.lr": 1e-3, "train.weight_decay": 1e-4, "train.loss": "lovasz",
                                           "data.batch_size": 16, "data.augmentation": "flips",
                                           "data.harmonisation": "none", "data.window_statistics": 0.5}), spec)
    assert "model.weights" not in r34 and r34["model.weights@resnet34"] == "imagenet"
    assert "model.weights=imagenet" in overrides(spec, r34) and "train.max_epochs=40" in overrides(spec, r34)
    with pytest.raises(ValueError):  # ssl4eo is not offered for resnet34
        suggest(optuna.trial.FixedTrial({"model.encoder": "resnet34", "model.weights@resnet34": "ssl4eo"}), spec)


def test_the_first_trial_takes_the_experiments_values_that_the_space_holds(tmp_path):
    demo = load_spec(ROOT / "studies" / "demo.yaml")
    assert experiment_values(demo) == {"model.encoder": "resnet18", "train.lr": 0.003, "train.loss": "ce+dice",
                                       "data.augmentation": "flips", "data.harmonisation": "land_standardise",
                                       "data.window_statistics": 0.5, "train.weight_decay": 1e-4}
    space = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    space["experiment"] = str(ROOT / space["experiment"])
    space["fixed"]["train.lr"] = 0.02  # a fixed override counts; 0.02 lies outside the space's 1e-3..1e-2
    space["params"]["train.loss"] = {"choices": ["ce", "focal"]}  # the experiment's ce+dice is not offered
    space["params"]["train.warmup"] = {"low": 0.0, "high": 0.5, "step": 0.25}  # 0.1 is off the grid
    space["params"]["data.window_statistics"]["when"] = {"data.harmonisation": ["none"]}  # a condition not met
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert set(experiment_values(load_spec(path))) == {"model.encoder", "data.augmentation", "data.harmonisation",
                                                       "train.weight_decay"}


def test_the_recipes_refit_is_the_studys_model_where_it_validates_better_than_the_best_trials():
    """Trials of 160 steps ranked plain dice first, and the refit of such a winner trailed the experiment's recipe
    trained in full: the recipe's trial (wherever it ran) is refitted too, and the better on validation wins."""
    from lc.tracking.refit import Candidate, chosen_model, finalists, recipe_trial

    spec = load_spec(ROOT / "studies" / "demo.yaml")
    recipe = experiment_values(spec)
    distributions = {k: optuna.distributions.CategoricalDistribution(p.choices) if p.choices else
                     optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
                     for k, p in spec.params.items()}
    study = optuna.create_study(direction="maximize")

    def add(value, state=optuna.trial.TrialState.COMPLETE, **params):
        study.add_trial(optuna.trial.create_trial(
            params={**recipe, **params}, distributions=distributions, value=value, state=state,
            user_attrs={"model_uri": f"models:/m-{len(study.trials)}", "mlflow_run_id": f"run{len(study.trials)}"}))

    add(0.40, **{"train.loss": "wce"})
    add(None, optuna.trial.TrialState.PRUNED)  # the recipe's values, pruned: still the recipe's trial
    add(0.46, **{"train.loss": "wce", "train.lr": 0.005})
    best, recipe_trial_ = study.trials[2], study.trials[1]
    assert recipe_trial(spec, study).number == 1 and [t.number for t in finalists(spec, study)] == [2, 1]
    assert [t.number for t in finalists(spec.model_copy(update={"refit_recipe": False}), study)] == [2]
    assert [t.number for t in finalists(spec.model_copy(update={"refit": {}}), study)] == [2]

    def fit(val):
        return Candidate(f"models:/refit-{val}", val, 0.7, f"refit-{val}", 12, 250.0)

    assert chosen_model([best, recipe_trial_], [fit(0.618), fit(0.637)]) == (recipe_trial_, fit(0.637))
    assert chosen_model([best, recipe_trial_], [fit(0.640), fit(0.637)]) == (best, fit(0.640))
    assert chosen_model([best, recipe_trial_], [fit(0.45), fit(0.44)])[1].run_id == "run2"  # the trial's own model
    assert chosen_model([best, recipe_trial_], [fit(0.45), None])[1].run_id == "run2"


def test_sigterm_stops_a_two_worker_study_and_leaves_no_worker_behind(small_scenes, mlflow_store, tmp_path):
    import psutil

    space = _write_space(tmp_path, small_scenes, name="terminated",  # trials that are still running when stopped
                         fixed={"train.max_epochs": 100, "train.patience": 100})
    spec = load_spec(space)
    journal = tmp_path / "studies" / "terminated.journal"
    proc = _lc("study", str(space), "--n-trials", "8", "--workers", "2", env={**os.environ, "PYTHONPATH": str(ROOT)},
               cwd=tmp_path)
    deadline, running = time.time() + 240, []
    while time.time() < deadline and len(running) < 2:  # both workers inside a trial with its MLflow run
        time.sleep(0.3)
        if journal.exists():
            running = [t for t in open_study(spec, str(journal)).trials
                       if t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
    if len(running) < 2:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the two workers did not get going")
    workers = {int(t.user_attrs["worker"].split("/")[2]) for t in running}
    os.kill(proc.pid, signal.SIGTERM)  # the parent only, as `kill PID` does
    assert proc.wait(timeout=120) != 0
    assert not [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    trials = open_study(spec, str(journal)).trials
    for t in running:
        assert trials[t.number].state == optuna.trial.TrialState.FAIL
        run = mlflow.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["state"] == "INTERRUPTED"
