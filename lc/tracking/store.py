"""MLflow conventions: where runs live, experiments, parameters, provenance tags.

The store is a SQLite database under ``mlruns/`` with artifacts beside it (``mlruns/<experiment
id>/``), unless ``MLFLOW_TRACKING_URI`` says otherwise (a server or PostgreSQL for several
machines). How a model is logged and loaded: ``lc.tracking.models``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from lc.config import DataConfig

REGISTERED_MODEL = "landcover"
PRODUCTION_ALIAS = "production"
STORE_DIR = Path("mlruns")
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"  # what MLflow's UI reads

logging.getLogger("mlflow").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the local SQLite store ``mlruns/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    STORE_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def configure() -> str:
    """Point MLflow at the project's store; returns the URI."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("sqlite:///"):
        _initialise_sqlite(uri)
    return uri


def _initialise_sqlite(uri: str) -> None:
    """Create/upgrade the SQLite store under a file lock: parallel workers must not race."""
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created when needed (local artifacts: ``mlruns/<id>/``).

    The experiment is marked as model training (``mlflow.experimentKind``), so MLflow's UI opens
    it on its runs, not on the GenAI overview of traces.
    """
    configure()
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow.create_experiment(name, tags={EXPERIMENT_KIND: TRAINING})
        except mlflow.exceptions.MlflowException:  # created by a parallel worker meanwhile
            found = mlflow.get_experiment_by_name(name)
    if found.tags.get(EXPERIMENT_KIND) != TRAINING:
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, TRAINING)
    return found.experiment_id


def retried(write: Callable[[], Any], attempts: int = 5) -> Any:
    """An idempotent MLflow write that another process may make at the same moment: SQLite refuses one of two
    writers at once ("database is locked"), and MLflow inserts a tag or alias after looking it up, so the
    second writer fails on the unique key; a retry waits, then updates."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as exc:
            if attempt == attempts - 1 or not isinstance(exc.__cause__, (IntegrityError, OperationalError)):
                raise
            time.sleep(0.25 * (attempt + 1))


def end_run(run_id: str, status: str, tags: dict[str, str]) -> None:
    """Tag a run and record its end status, each write retried: the workers of a stopped study close their runs
    at the same moment."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        retried(lambda: client.set_tag(run_id, key, value))
    retried(lambda: client.set_terminated(run_id, status))


def log_evaluation(stage: str, metrics: dict, codes: list[int], folder: Path, title: str) -> None:
    """A run's ``metrics_<stage>.json`` and its row-normalised confusion matrix (``figures/confusion_<stage>.png``
    and ``.csv``), named alike in U-Net and baseline runs; the counts are in the JSON."""
    import numpy as np

    from lc.figures import plot_confusion_matrix

    figure = folder / f"confusion_{stage}.png"
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), codes, figure, normalise=True,
                          title=f"{title} (row-normalised)")
    for path in (figure, figure.with_suffix(".csv")):
        mlflow.log_artifact(str(path), "figures")
    mlflow.log_dict(metrics, f"metrics_{stage}.json")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.lr": 0.001, ...} for MLflow params."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value if not isinstance(value, (list, tuple)) else json.dumps(value, default=str)
    return out


def split_key(data: DataConfig) -> str:
    """A short digest of what decides a run's splits (scenes, chips, blocks, fractions, seed, validation areas):
    runs with the same key were scored on the same validation and test pixels."""
    fields = {"scenes", "chip_size", "block_size", "split", "buffer", "max_nodata", "seed"} | (
        {"val_scenes"} if data.val_scenes else set())  # keys of runs without validation areas stay as they were
    decided = json.dumps(data.model_dump(mode="json", include=fields), sort_keys=True)
    return hashlib.sha1(decided.encode()).hexdigest()[:12]


def git_commit() -> str:
    """The commit of the working tree ('unknown' outside git), '+dirty' when modified."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
