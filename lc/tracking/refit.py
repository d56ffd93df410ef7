"""The study's model: the best trial's configuration retrained with the space's ``refit``
overrides (once per best trial, remembered by the study), and the better of the two on
validation registered as ``landcover``."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import optuna

from lc.config import load_config
from lc.tracking.registry import Registration, describe, register
from lc.tracking.space import StudySpec, config_values, overrides
from lc.tracking.storage import ERROR_ATTR, kill_run, process_identity, worker_gone

log = logging.getLogger(__name__)
REFIT_ATTR = "refit"


@dataclass
class Candidate:
    """A model that may be registered: the best trial's own, or its refit."""

    model_uri: str
    val_miou: float
    test_miou: float
    run_id: str
    epochs: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)  # a refit's overrides on top of the trial's config

    @classmethod
    def of_trial(cls, trial: optuna.trial.FrozenTrial) -> Candidate:
        a = trial.user_attrs
        return cls(a.get("model_uri", ""), trial.value, a.get("test_miou", float("nan")), a.get("mlflow_run_id", ""),
                   a.get("epochs", 0), a.get("seconds", float("nan")))


def recorded_refit(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   settings: dict[str, Any] | None = None) -> Candidate | None:
    """The finished refit of ``trial`` that the study holds, if any (with ``settings``: only one
    made with those refit settings)."""
    done = study.user_attrs.get(REFIT_ATTR) or {}
    if done.get("trial") != trial.number or "model_uri" not in done:
        return None
    if settings is not None and done.get("settings", settings) != settings:
        return None
    return Candidate(**{k: done[k] for k in Candidate.__dataclass_fields__ if k in done})


def preferred(own: Candidate, refit: Candidate | None) -> Candidate:
    """The study's model: the refit, unless the trial's own model validates better."""
    return refit if refit is not None and refit.val_miou >= own.val_miou else own


def refit_best(spec: StudySpec, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Candidate | None:
    """Retrain ``trial``'s configuration with ``spec.refit`` on top, once per best trial.

    The refit is a nested run of the study's parent run; the study remembers it with its
    settings, so a study that is run again (or ``lc register``) with the same refit settings
    finds it instead of training again; other settings (``lc study --refit``) train again. A refit whose
    process died is closed as KILLED and started again; one still running elsewhere is left to
    that process (None).
    """
    from lc.tracking.train import train

    if (recorded := recorded_refit(study, trial, spec.refit)) is not None:
        return recorded
    done = study.user_attrs.get(REFIT_ATTR) or {}
    if "model_uri" not in done and done.get("run_id"):
        if done.get("worker") and not worker_gone(done["worker"]):
            log.warning("trial %s is being refitted by %s; it registers the result", done.get("trial"), done["worker"])
            return None
        kill_run(done["run_id"])
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
                      round(result.seconds, 1), dict(spec.refit))
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
    run_tags = mlflow.get_run(chosen.run_id).data.tags
    tags.update({key: run_tags[key] for key in ("experiment", "split_key") if key in run_tags})
    return register(chosen.model_uri, chosen.val_miou, force=force, tags=tags,
                    description=describe(trial.number, study.study_name, chosen.val_miou, config,
                                         refit=spec.refit if chosen is refit else None))
