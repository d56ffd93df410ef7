"""Where a study lives and who works on it: storage (journal file or RDB), sampler and pruner,
worker identity, and trials whose worker is gone (failed, their MLflow runs closed as KILLED)."""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path

import optuna
import psutil

from lc.tracking import store
from lc.tracking.space import StudySpec

log = logging.getLogger(__name__)
STUDIES_DIR = Path("studies")
HEARTBEAT_S = 15
ERROR_ATTR = "error"
ENDED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


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


class StudyNotFound(ValueError):
    """A reading command asked for a study that was never run; the message lists those that were."""


def existing_study(spec: StudySpec, storage: str, study_name: str | None = None) -> optuna.Study:
    """A study that exists, for commands that only read it: never creates one."""
    name = study_name or spec.name
    if "://" not in storage and not Path(storage).exists():
        journals = sorted(p.stem for p in Path(storage).parent.glob("*.journal"))
        raise StudyNotFound(f"no study {name!r}: {storage} does not exist (studies under {Path(storage).parent}/: "
                            f"{', '.join(journals) or 'none'}); run `lc study` first")
    names = optuna.get_all_study_names(open_storage(storage))
    if name not in names:
        raise StudyNotFound(f"no study {name!r} in {storage}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=open_storage(storage), sampler=_sampler(spec),
                             pruner=_pruner(spec))


def ended_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards N: complete, pruned, or failed with an error of their own."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in ENDED or (t.state == optuna.trial.TrialState.FAIL and ERROR_ATTR in t.user_attrs)]


def _close_mlflow_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """The MLflow run of an interrupted trial ends as KILLED."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id:
        kill_run(run_id)


def kill_run(run_id: str) -> None:
    """End an MLflow run whose process is gone as KILLED (state INTERRUPTED)."""
    store.configure()
    store.end_run(run_id, "KILLED", {"state": "INTERRUPTED"})


def process_identity(pid: int | None = None) -> str:
    """A process's identity that survives PID reuse: host, boot time, PID and start time ('' if
    there is no such process). psutil reads them on Linux, macOS and Windows alike."""
    pid = pid or os.getpid()
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return ""
    return f"{socket.gethostname()}/{psutil.boot_time():.0f}/{pid}/{started:.2f}"


def on_this_host(identity: str) -> bool:
    parts = identity.split("/")
    return len(parts) == 4 and parts[0] == socket.gethostname()


def worker_gone(identity: str) -> bool:
    """Whether the worker with ``identity`` ran on this host and is no longer running."""
    if not on_this_host(identity):
        return False  # another host: its heartbeat decides (RDB storage)
    return process_identity(int(identity.split("/")[2])) != identity


def heartbeats(study: optuna.Study) -> bool:
    """Whether the study's storage keeps heartbeats (RDB): dead workers elsewhere are then found."""
    return optuna.storages._heartbeat.is_heartbeat_enabled(study._storage)  # Optuna has no public accessor


def awaited(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a running trial is worth waiting for: its worker is alive here, or a heartbeat
    will tell when it dies. A trial nothing can judge (another host, a journal file) is not."""
    identity = trial.user_attrs.get("worker", "")
    return (on_this_host(identity) and not worker_gone(identity)) or (bool(identity) and heartbeats(study))


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
        if identity and worker_gone(identity):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            _close_mlflow_run(study, t)
            failed.append(t.number)
    if heartbeats(study):
        optuna.storages.fail_stale_trials(study)  # other hosts' dead workers; closes their runs too
    if failed:
        log.warning("trials %s were interrupted (their worker is gone): marked FAIL, not counted", failed)
    return failed
