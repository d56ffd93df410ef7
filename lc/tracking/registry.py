"""The MLflow model registry: the best model of a study becomes a version of ``landcover``.

A version is promoted (alias ``production`` and stage ``Production``) when it beats the
current production version on the same validation metric, or when forced. Both
``models:/landcover/Production`` and ``models:/landcover@production`` then load it.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from lc.tracking.store import PRODUCTION_ALIAS, REGISTERED_MODEL, configure

log = logging.getLogger(__name__)
METRIC_TAG = "val_miou"


@dataclass
class Registration:
    version: str
    promoted: bool
    metric: float
    previous: float | None


def production_metric(client: mlflow.MlflowClient, name: str = REGISTERED_MODEL) -> tuple[str, float] | None:
    """(version, val mIoU) of the current production version, if any."""
    try:
        current = client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except MlflowException:
        return None
    return current.version, float(current.tags.get(METRIC_TAG, "nan"))


def _existing_version(client: mlflow.MlflowClient, model_uri: str, name: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    return next((v.version for v in versions if v.source == model_uri), None)


def register(model_uri: str, metric: float, *, description: str, tags: dict[str, str], force: bool = False,
             name: str = REGISTERED_MODEL) -> Registration:
    """Register ``model_uri`` (once) and promote it if it beats production on val mIoU."""
    configure()
    client = mlflow.MlflowClient()
    version = _existing_version(client, model_uri, name)
    if version is None:
        version = mlflow.register_model(model_uri, name).version
    client.update_model_version(name, version, description=description)
    for key, value in {**tags, METRIC_TAG: f"{metric:.6f}"}.items():
        client.set_model_version_tag(name, version, key, value)
    current = production_metric(client, name)
    previous = current[1] if current else None
    beaten = current is not None and (np.isnan(current[1]) or metric > current[1])  # untagged: replaceable
    promote = force or current is None or (current[0] != version and beaten)
    if promote:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
        with warnings.catch_warnings():  # stages are deprecated in MLflow, but users type the URI
            warnings.simplefilter("ignore")
            client.transition_model_version_stage(name, version, "Production", archive_existing_versions=True)
    log.info("model %s version %s (val mIoU %.4f) %s", name, version, metric,
             "promoted to production" if promote else f"kept; production has {previous:.4f}")
    return Registration(version, promote or (current is not None and current[0] == version), metric, previous)


def describe(trial_number: int, study: str, metric: float, config: dict, refit: dict | None = None) -> str:
    """A registry description: where the model comes from and how good it is."""
    origin = f"Best trial {trial_number} of study '{study}'" + (f", retrained with {refit}" if refit else "")
    return f"{origin}: val mIoU {metric:.4f}.\n\nConfig:\n```json\n{json.dumps(config, indent=1, default=str)}\n```"
