"""Optuna studies: ``lc study studies/<space>.yaml --n-trials N`` (resumable, parallel).

- The search space is a YAML file (see ``studies/demo.yaml``); every trial is the base
  experiment with the sampled values as dotted overrides, trained by ``lc.train.train`` in a
  nested MLflow run under one parent run per study.
- Seeded TPE (or random) sampling; median or Hyperband pruning on the per-epoch val mIoU.
- Storage: a journal file under ``studies/`` by default (several local workers), or any
  Optuna RDB URL (PostgreSQL: workers on several machines, with heartbeats).
- Faults: a trial that raises is recorded FAIL with its error and the study goes on; a
  trial whose worker died (killed, power cut) is marked FAIL when the study is run again,
  its MLflow run KILLED, and it does not count: the study runs until N trials have ended
  (complete, pruned, or failed with an error).
- The end: figures and a CSV of all trials on the parent run. The best configuration is
  retrained with the space's ``refit`` overrides (e.g. the experiment's full epochs, where the
  search trains few), once per best trial; whichever of the trial's model and the refit scores
  higher on validation is registered as ``landcover`` (promoted when it beats production).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import mlflow
import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lc import tracking
from lc.config import load_config
from lc.registry import Registration, describe, register

log = logging.getLogger(__name__)
STUDIES_DIR = Path("studies")
HEARTBEAT_S = 15
ERROR_ATTR = "error"
REFIT_ATTR = "refit"
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class Param(BaseModel):
    """One searched parameter: ``choices`` (categorical) or ``low``/``high`` (int or float)."""

    model_config = ConfigDict(extra="forbid")
    choices: list[Any] | None = None
    low: int | float | None = Field(None, description="ints on both ends make an integer parameter")
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    when: dict[str, list[Any]] = Field(default_factory=dict, description="sample only if these params took these values")

    @model_validator(mode="after")
    def _check(self) -> Param:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("a parameter needs either choices or low and high")
        return self


class Sampler(BaseModel):
    kind: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = 8


class Pruner(BaseModel):
    kind: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = 4
    n_warmup_steps: int = 2


class StudySpec(BaseModel):
    """A study: base experiment, fixed overrides, searched parameters, sampler and pruner."""

    model_config = ConfigDict(extra="forbid")
    name: str
    experiment: Path
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Param]
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    refit: dict[str, Any] = Field(default_factory=dict, description="overrides on top of the best trial's config for "
                                  "retraining it before registration; empty: register the trial's own model")
    register_best: bool = True


def load_spec(path: Path) -> StudySpec:
    return StudySpec.model_validate(yaml.safe_load(Path(path).read_text()))


def default_storage(spec: StudySpec) -> str:
    return str(STUDIES_DIR / f"{spec.name}.journal")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (path) or an RDB URL (``postgresql://…``, ``sqlite:///…``) with heartbeats."""
    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    import sqlalchemy.exc

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")  # the driver we install
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S,
                                              heartbeat_stale_trial_callback=_close_mlflow_run)
        except sqlalchemy.exc.IntegrityError:  # workers racing to create the schema of a new database
            time.sleep(1 + attempt)
    raise RuntimeError(f"could not set up the Optuna schema at {url.split('@')[-1]}")


def _sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s.kind == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True, group=True)


def _pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps))
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec, storage: str, study_name: str | None = None) -> optuna.Study:
    return optuna.create_study(
        study_name=study_name or spec.name, storage=open_storage(storage), direction="maximize",
        sampler=_sampler(spec), pruner=_pruner(spec), load_if_exists=True,
    )


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample the space; ``name@variant`` keys let one config key have conditional variants."""
    values: dict[str, Any] = {}
    for name, p in spec.params.items():
        if any(values.get(k) not in allowed for k, allowed in p.when.items()):
            continue
        if p.choices is not None:
            value = trial.suggest_categorical(name, p.choices)
        elif isinstance(p.low, int) and isinstance(p.high, int):
            value = trial.suggest_int(name, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            value = trial.suggest_float(name, p.low, p.high, log=p.log, step=p.step)
        values[name] = value
    return values


def config_values(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
    """The fixed values, then the sampled ones (``@variant`` dropped), by dotted config key."""
    return {**spec.fixed, **{k.split("@")[0]: v for k, v in values.items()}}


def overrides(spec: StudySpec, values: dict[str, Any]) -> list[str]:
    """Dotted config overrides (``key=value``) of :func:`config_values`."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in config_values(spec, values).items()]


def ended_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards N: complete, pruned, or failed with an error of their own."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in ENDED or (t.state == optuna.trial.TrialState.FAIL and ERROR_ATTR in t.user_attrs)]


def _close_mlflow_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The MLflow run of an interrupted trial ends as KILLED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        _kill_run(run_id)


def _kill_run(run_id: str) -> None:
    """End an MLflow run whose process is gone as KILLED (state INTERRUPTED)."""
    tracking.configure()
    client = mlflow.MlflowClient()
    client.set_tag(run_id, "state", "INTERRUPTED")
    client.set_terminated(run_id, "KILLED")


def process_identity(pid: int | None = None) -> str:
    """A process's identity that survives PID reuse: host, boot, PID and start time."""
    pid = pid or os.getpid()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{pid}/{started}"


def _worker_gone(identity: str) -> bool:
    """Whether the worker with ``identity`` ran on this host and is no longer running."""
    parts = identity.split("/")
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return False  # another host: its heartbeat decides (RDB storage)
    return process_identity(int(parts[2])) != identity


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker is gone as FAIL (and their MLflow runs KILLED).

    Workers on this host are checked directly (PID and start time); workers on other hosts
    by the RDB storage's heartbeat.
    """
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        identity = t.user_attrs.get("worker")
        if identity is None and t.datetime_start and (datetime.now() - t.datetime_start).total_seconds() > 60:
            identity = f"{socket.gethostname()}/gone/0/0"  # died before it could say who it was
        if identity and _worker_gone(identity):
            study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            _close_mlflow_run(study, t)
            failed.append(t.number)
    if optuna.storages._heartbeat.is_heartbeat_enabled(study._storage):
        optuna.storages.fail_stale_trials(study)  # other hosts' dead workers; closes their runs too
    if failed:
        log.warning("trials %s were interrupted (their worker is gone): marked FAIL, not counted", failed)
    return failed


def parent_run(spec: StudySpec, study: optuna.Study, storage: str) -> str:
    """The study's MLflow parent run (created once, found again on resume)."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        return run_id
    cfg = load_config(spec.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(  # stays RUNNING until `finish`
        tracking.experiment_id(cfg.mlflow_experiment), run_name=f"study {study.study_name}",
        tags={"role": "study", "optuna_study": study.study_name, "git_commit": tracking.git_commit()},
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
    return run_id


def objective(trial: optuna.Trial, spec: StudySpec, parent_run_id: str) -> float:
    """Train the trial's configuration; report val mIoU per epoch for pruning."""
    from optuna_integration import PyTorchLightningPruningCallback

    from lc.train import train

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
    except Exception as exc:
        trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    trial.set_user_attr("test_miou", result.test["miou"])
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("seconds", round(result.seconds, 1))
    if result.model_uri:
        trial.set_user_attr("model_uri", result.model_uri)
    return result.val["miou"]


def _claim_next(study: optuna.Study, n_trials: int) -> bool:
    """Whether this worker should start another trial (waits while others may still finish)."""
    while True:
        fail_interrupted(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
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
    """One worker: start trials until the study holds ``n_trials`` ended trials."""
    import torch

    import lc.train  # noqa: F401  (imported before gc.freeze below, which then covers its modules)

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracking.configure()
    gc.collect()
    gc.freeze()  # the ~600k import-time objects: a full collection then takes 0.1 s, not 0.7 s
    spec = load_spec(Path(spec_path))
    study = open_study(spec, storage, study_name)
    parent = study.user_attrs["mlflow_parent_run_id"]
    while _claim_next(study, n_trials):
        study.optimize(lambda t: objective(t, spec, parent), n_trials=1, catch=(Exception,),
                       callbacks=[lambda s, t: print(progress_line(s, t, n_trials), file=sys.stderr, flush=True)])


def run_study(spec_path: Path, n_trials: int, storage: str | None = None, workers: int = 1,
              study_name: str | None = None) -> optuna.Study:
    """Run (or resume) a study with ``workers`` local processes, then summarise and register."""
    spec = load_spec(spec_path)
    storage = storage or default_storage(spec)
    tracking.configure()
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
            for p in procs:
                if p.is_alive():
                    p.terminate()
    finish(spec, study)
    return study


def finish(spec: StudySpec, study: optuna.Study, force: bool = False) -> None:
    """Figures and the trials CSV on the parent run; register the best trial's model."""
    from lc.plots import plot_study

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


@dataclass
class Candidate:
    """A model that may be registered: the best trial's own, or its refit."""

    model_uri: str
    val_miou: float
    test_miou: float
    run_id: str
    epochs: int
    seconds: float

    @classmethod
    def of_trial(cls, trial: optuna.trial.FrozenTrial) -> Candidate:
        a = trial.user_attrs
        return cls(a.get("model_uri", ""), trial.value, a.get("test_miou", float("nan")), a.get("mlflow_run_id", ""),
                   a.get("epochs", 0), a.get("seconds", float("nan")))


def recorded_refit(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Candidate | None:
    """The finished refit of ``trial`` that the study holds, if any."""
    done = study.user_attrs.get(REFIT_ATTR) or {}
    if done.get("trial") != trial.number or "model_uri" not in done:
        return None
    return Candidate(**{k: done[k] for k in Candidate.__dataclass_fields__})


def preferred(own: Candidate, refit: Candidate | None) -> Candidate:
    """The study's model: the refit, unless the trial's own model validates better."""
    return refit if refit is not None and refit.val_miou >= own.val_miou else own


def refit_best(spec: StudySpec, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Candidate | None:
    """Retrain ``trial``'s configuration with ``spec.refit`` on top, once per best trial.

    The refit is a nested run of the study's parent run; the study remembers it, so a study
    that is run again (or ``lc register``) finds it instead of training again. A refit whose
    process died is closed as KILLED and started again; one still running elsewhere is left to
    that process (None).
    """
    from lc.train import train

    if (recorded := recorded_refit(study, trial)) is not None:
        return recorded
    done = study.user_attrs.get(REFIT_ATTR) or {}
    if "model_uri" not in done and done.get("run_id"):
        if done.get("worker") and not _worker_gone(done["worker"]):
            log.warning("trial %s is being refitted by %s; it registers the result", done.get("trial"), done["worker"])
            return None
        _kill_run(done["run_id"])
    print(f"[{study.study_name}] refitting trial {trial.number} with {spec.refit}", file=sys.stderr, flush=True)
    cfg = load_config(spec.experiment, overrides(spec, {**trial.params, **spec.refit}))
    try:
        result = train(cfg, run_name=f"refit of trial {trial.number}", parent_run_id=study.user_attrs["mlflow_parent_run_id"],
                       tags={"optuna_study": study.study_name, "refit_of_trial": str(trial.number), "role": "refit"},
                       on_run_start=lambda run_id: study.set_user_attr(
                           REFIT_ATTR, {"trial": trial.number, "run_id": run_id, "worker": process_identity()}))
    except Exception as exc:  # its run ended FAILED; the next `lc study` or `lc register` tries again
        study.set_user_attr(REFIT_ATTR, {"trial": trial.number, ERROR_ATTR: f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    refit = Candidate(result.model_uri, result.val["miou"], result.test["miou"], result.run_id, result.epochs,
                      round(result.seconds, 1))
    study.set_user_attr(REFIT_ATTR, {"trial": trial.number, **asdict(refit)})
    print(f"[{study.study_name}] refit of trial {trial.number}: val mIoU {refit.val_miou:.3f} after {refit.epochs} epochs "
          f"(the trial: {trial.value:.3f}) in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    return refit


def register_best(spec: StudySpec, study: optuna.Study, force: bool = False) -> Registration | None:
    """Register the best configuration's model (its refit if that validates better) as ``landcover``."""
    trial = study.best_trial
    if trial.user_attrs.get("model_uri") is None:
        raise ValueError(f"trial {trial.number} of study {study.study_name} has no logged model")
    own = Candidate.of_trial(trial)
    refit = refit_best(spec, study, trial) if spec.refit else None
    if spec.refit and refit is None:
        return None
    chosen = preferred(own, refit)
    config = config_values(spec, {**trial.params, **(spec.refit if chosen is refit else {})})
    tags = {"optuna_study": study.study_name, "trial_number": str(trial.number), "mlflow_run_id": chosen.run_id,
            "test_miou": f"{chosen.test_miou:.6f}", "epochs": str(chosen.epochs), "refit": str(chosen is refit).lower()}
    if refit is not None:
        tags.update({"trial_val_miou": f"{own.val_miou:.6f}", "refit_val_miou": f"{refit.val_miou:.6f}"})
    return register(chosen.model_uri, chosen.val_miou, force=force, tags=tags,
                    description=describe(trial.number, study.study_name, chosen.val_miou, config,
                                         refit=spec.refit if chosen is refit else None))
