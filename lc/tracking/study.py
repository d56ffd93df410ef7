"""Optuna studies: ``lc study studies/<space>.yaml --n-trials N`` (resumable, parallel).

- The search space is a YAML file (see ``studies/demo.yaml``); every trial is the base
  experiment with the sampled values as dotted overrides, trained by ``lc.tracking.train.train`` in a
  nested MLflow run under one parent run per study.
- The first trial is the experiment's own configuration (``start_from_experiment``), then seeded
  TPE (or random) sampling; median or Hyperband pruning on the per-epoch val mIoU.
- Storage: a journal file under ``studies/`` by default (several local workers), or any
  Optuna RDB URL (PostgreSQL: workers on several machines, with heartbeats).
- Faults: a trial that raises is recorded FAIL with its error and the study goes on; a
  trial whose worker died (killed, power cut) is marked FAIL when the study is run again,
  its MLflow run KILLED, and it does not count: the study runs until N trials have ended
  (complete, pruned, or failed with an error).
- The end: figures and a CSV of all trials on the parent run. The best configuration is
  retrained with the space's ``refit`` overrides (e.g. the experiment's full epochs, where the
  search trains few), once per trial, and so is the first trial, the experiment's recipe
  (``refit_recipe``): short trials can rank a configuration first that trails the recipe when
  trained in full. The model that scores highest on validation is registered as ``landcover``
  (promoted when it beats production).
"""


from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import yaml

from lc.config import load_config
from lc.tracking import store
from lc.tracking.console import quiet_libraries
from lc.tracking.refit import register_best
from lc.tracking.space import StudySpec, experiment_values, load_spec, overrides, suggest
from lc.tracking.storage import (
    ERROR_ATTR,
    awaited,
    default_storage,
    ended_trials,
    fail_interrupted,
    open_study,
    process_identity,
)

log = logging.getLogger(__name__)
STOP_GRACE_S = 60


def parent_run(spec: StudySpec, study: optuna.Study, storage: str) -> str:
    """The study's MLflow parent run (created once, found again on resume). A new study's first
    trial is then enqueued: the experiment's own recipe (``start_from_experiment``)."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        return run_id
    cfg = load_config(spec.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(  # stays RUNNING until `finish`
        store.experiment_id(cfg.mlflow_experiment), run_name=f"study {study.study_name}",
        tags={"role": "study", "optuna_study": study.study_name, "git_commit": store.git_commit()},
    )
    run_id = run.info.run_id
    public_storage = storage if "://" not in storage else storage.split("@")[-1]  # no credentials
    for key, value in {"study_name": study.study_name, "sampler": spec.sampler.kind, "sampler_seed": spec.sampler.seed,
                       "pruner": spec.pruner.kind, "storage": public_storage,
                       "experiment_config": str(spec.experiment)}.items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "search_space.yaml")
    winner = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs.get("mlflow_parent_run_id")
    if winner:  # another worker created the parent meanwhile: use it
        client.delete_run(run_id)
        return winner
    study.set_user_attr("mlflow_parent_run_id", run_id)
    if spec.start_from_experiment and not study.trials and (start := experiment_values(spec)):
        study.enqueue_trial(start, skip_if_exists=True)  # the recipe the search is meant to improve
    return run_id


def objective(trial: optuna.Trial, spec: StudySpec, parent_run_id: str) -> float:
    """Train the trial's configuration; report val mIoU per epoch for pruning."""
    from optuna_integration import PyTorchLightningPruningCallback

    from lc.tracking.train import train

    trial.set_user_attr("worker", process_identity())
    study = trial.study

    def best_so_far(val_miou: float) -> bool:
        done = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
        return not done or val_miou >= max(done)

    try:
        cfg = load_config(spec.experiment, overrides(spec, suggest(trial, spec)))
        result = train(cfg, run_name=f"trial {trial.number}", parent_run_id=parent_run_id,
                       tags={"optuna_study": study.study_name, "trial_number": str(trial.number)},
                       callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_miou")], log_model=best_so_far,
                       on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
    except optuna.TrialPruned:
        raise
    except SystemExit as exc:  # Lightning turns Ctrl-C or SIGTERM during a fit into exit(1)
        raise KeyboardInterrupt from exc  # which Optuna records as a failed trial
    except Exception as exc:
        trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    trial.set_user_attr("test_miou", result.test["miou"])
    if result.val_area_miou is not None:
        trial.set_user_attr("val_area_miou", result.val_area_miou)
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("seconds", round(result.seconds, 1))
    if result.model_uri:
        trial.set_user_attr("model_uri", result.model_uri)
    return result.val["miou"]


def _claim_next(study: optuna.Study, n_trials: int) -> bool:
    """Whether this worker should start another trial (waits while others may still finish)."""
    while True:
        fail_interrupted(study)
        running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if awaited(study, t)]
        ended = len(ended_trials(study))
        if ended + len(running) < n_trials:
            return True
        if ended >= n_trials or not running:
            return ended < n_trials
        time.sleep(5)


def progress_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, n_trials: int) -> str:
    """One line per ended trial, for whoever watches a long study."""
    took = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    value = "" if trial.value is None else f" val mIoU {trial.value:.3f}"
    error = f" ({trial.user_attrs[ERROR_ATTR]})" if ERROR_ATTR in trial.user_attrs else ""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value, default=None)
    best_text = f"; best {best.value:.3f} (trial {best.number})" if best else ""
    return (f"[{study.study_name}] trial {trial.number} {trial.state.name.lower()}{value}{error} in {took:.0f} s"
            f"{best_text}; {len(ended_trials(study))}/{n_trials} ended")


def run_worker(spec_path: str, n_trials: int, storage: str, study_name: str, threads: int | None = None) -> None:
    """One worker: start trials until the study holds ``n_trials`` ended trials.

    SIGTERM stops it as Ctrl-C does: the running trial fails, its MLflow run ends KILLED.
    """
    import torch

    import lc.tracking.train  # noqa: F401  (imported before gc.freeze below, which then covers its modules)

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    quiet_libraries()
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store.configure()
    gc.collect()
    gc.freeze()  # the ~600k import-time objects: a full collection then takes 0.1 s, not 0.7 s
    spec = load_spec(Path(spec_path))
    study = open_study(spec, storage, study_name)
    parent = study.user_attrs["mlflow_parent_run_id"]
    try:
        while _claim_next(study, n_trials):
            study.optimize(lambda t: objective(t, spec, parent), n_trials=1, catch=(Exception,),
                           callbacks=[lambda s, t: print(progress_line(s, t, n_trials), file=sys.stderr, flush=True)])
    except KeyboardInterrupt:
        if multiprocessing.parent_process() is None:
            raise  # the study's own process: the command stops
        print(f"[{study.study_name}] worker {os.getpid()} stopped; its trial is marked failed", file=sys.stderr)


def _stop(procs: list[multiprocessing.Process]) -> None:
    """SIGTERM to the workers still running, wait for them to close their trials, then kill."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def run_study(spec_path: Path, n_trials: int, storage: str | None = None, workers: int = 1,
              study_name: str | None = None, refit: dict | None = None,
              refit_recipe: bool | None = None) -> optuna.Study:
    """Run (or resume) a study with ``workers`` local processes, then summarise and register.

    ``refit`` overrides the space's refit settings (``lc study --refit KEY=VALUE``, e.g. the
    quicker refit of ``make demo DEMO_REFIT=train.max_epochs=8``), ``refit_recipe`` its ``refit_recipe``.

    SIGTERM, like Ctrl-C, stops the study: every worker's running trial fails and its run ends
    KILLED; the workers are waited for (killed after ``STOP_GRACE_S``), none is left behind.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    spec = load_spec(spec_path)
    spec = spec.model_copy(update={"refit": {**spec.refit, **(refit or {})},
                                   "refit_recipe": spec.refit_recipe if refit_recipe is None else refit_recipe})
    storage = storage or default_storage(spec)
    store.configure()
    study = open_study(spec, storage, study_name)
    fail_interrupted(study)
    parent_run(spec, study, storage)
    if workers <= 1:
        run_worker(str(spec_path), n_trials, storage, study.study_name)
    else:
        threads = max(1, (os.cpu_count() or 2) // workers)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=run_worker, args=(str(spec_path), n_trials, storage, study.study_name, threads))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        finally:
            _stop(procs)
    finish(spec, study)
    return study


def finish(spec: StudySpec, study: optuna.Study, force: bool = False) -> None:
    """Figures and the trials CSV on the parent run; register the best trial's model."""
    from lc.figures import plot_study

    parent = study.user_attrs["mlflow_parent_run_id"]
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        client.log_artifact(parent, str(folder / "trials.csv"))
        for path in plot_study(study, folder):
            client.log_artifact(parent, str(path), "figures")
    ended = ended_trials(study)
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in optuna.trial.TrialState}
    for key, value in counts.items():
        client.log_metric(parent, f"trials_{key}", value)
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in ended):
        client.log_metric(parent, "best_val_miou", study.best_value)
        client.set_tag(parent, "best_trial", str(study.best_trial.number))
        if spec.register_best:
            register_best(spec, study, force=force)
    client.set_terminated(parent, "FINISHED")
    log.info("study %s: %d trials ended (%s)", study.study_name, len(ended), counts)
