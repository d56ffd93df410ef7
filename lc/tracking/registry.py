"""The MLflow model registry: the best model of a study becomes a version of ``landcover``.

A version is promoted (alias ``production`` and stage ``Production``) when it beats the
current production version on the same validation pixels (same scenes and splits), or when
forced; a model validated on other data never replaces production by a number that does not
compare. Both ``models:/landcover/Production`` and ``models:/landcover@production`` then load it.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from lc.tracking import store

log = logging.getLogger(__name__)
METRIC_TAG = "val_miou"
SPLIT_TAG = "split_key"


@dataclass
class Registration:
    version: str
    promoted: bool
    metric: float
    previous: float | None
    reason: str


def _production(client: mlflow.MlflowClient, name: str):
    """The current production version, if any."""
    try:
        return client.get_model_version_by_alias(name, store.PRODUCTION_ALIAS)
    except MlflowException:
        return None


def _existing_version(client: mlflow.MlflowClient, model_uri: str, name: str) -> str | None:
    """The first version registered from ``model_uri``, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return min((str(v.version) for v in versions if v.source == model_uri), key=int, default=None)


def _version_of(client: mlflow.MlflowClient, model_uri: str, name: str) -> str:
    """The model's one version: registered now, or by another process (the workers of a study all finish it;
    a version one of them registered at the same moment is removed again)."""
    version = _existing_version(client, model_uri, name)
    if version is not None:
        return version
    mine = str(mlflow.register_model(model_uri, name).version)
    first = _existing_version(client, model_uri, name)
    if first is None or first == mine:
        return mine
    store.retried(lambda: client.delete_model_version(name, mine))
    return first


def _decide(current, version: str, metric: float, split_key: str, force: bool) -> tuple[bool, str]:
    """Whether ``version`` replaces the production version ``current``, and why (or why not).

    Val mIoU values compare only on the same validation pixels: the same splits of the same
    scenes (the runs' ``split_key``). Across data, experiments or splits nothing is promoted
    unless forced.
    """
    if current is None:
        return True, "no production version yet"
    if str(current.version) == version:
        return False, "it is the production version already"
    if force:
        return True, f"forced over version {current.version}"
    theirs = current.tags.get(SPLIT_TAG)
    if theirs != split_key:
        origin = current.tags.get("experiment", "an unknown experiment")
        return False, (f"production (version {current.version}, from {origin}) was validated on other data or "
                       f"splits (split key {theirs or 'unknown'}, this model's {split_key}): their val mIoU do not "
                       "compare; pass --force to promote it anyway")
    previous = float(current.tags.get(METRIC_TAG, "nan"))
    if metric > previous:
        return True, f"val mIoU {metric:.4f} beats production's {previous:.4f} on the same validation pixels"
    return False, f"production (version {current.version}) has val mIoU {previous:.4f} on the same validation pixels"


def register(model_uri: str, metric: float, *, description: str, tags: dict[str, str], force: bool = False,
             name: str = store.REGISTERED_MODEL) -> Registration:
    """Register ``model_uri`` (once) and promote it if it beats production on the same validation
    pixels (``tags`` carry the run's ``split_key`` and ``experiment``), or when forced."""
    store.configure()
    client = mlflow.MlflowClient()
    version = _version_of(client, model_uri, name)
    store.retried(lambda: client.update_model_version(name, version, description=description))
    for key, value in {**tags, METRIC_TAG: f"{metric:.6f}"}.items():
        store.retried(lambda: client.set_model_version_tag(name, version, key, value))
    current = _production(client, name)
    promote, reason = _decide(current, version, metric, tags.get(SPLIT_TAG, ""), force)
    if promote:
        store.retried(lambda: client.set_registered_model_alias(name, store.PRODUCTION_ALIAS, version))
        with warnings.catch_warnings():  # stages are deprecated in MLflow, but users type the URI
            warnings.simplefilter("ignore")
            store.retried(lambda: client.transition_model_version_stage(name, version, "Production",
                                                                   archive_existing_versions=True))
    log.info("model %s version %s (val mIoU %.4f): %s, %s", name, version, metric,
             "promoted" if promote else "not promoted", reason)
    previous = float(current.tags.get(METRIC_TAG, "nan")) if current is not None else None
    return Registration(version, promote or (current is not None and str(current.version) == version), metric,
                        previous, reason)


def describe(trial_number: int, study: str, metric: float, config: dict, refit: dict | None = None) -> str:
    """A registry description: where the model comes from and how good it is."""
    origin = f"Best trial {trial_number} of study '{study}'" + (f", retrained with {refit}" if refit else "")
    return f"{origin}: val mIoU {metric:.4f}.\n\nConfig:\n```json\n{json.dumps(config, indent=1, default=str)}\n```"
