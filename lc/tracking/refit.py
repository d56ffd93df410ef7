"""The study's model: the best trial's configuration retrained with the space's ``refit``
overrides (once per trial, remembered by the study), and so is the trial that ran the experiment's
own recipe (``refit_recipe``); whichever model validates best is registered as ``landcover``."""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import optuna

from lc.config import load_config
from lc.tracking.registry import Registration, describe, register
from lc.tracking.space import StudySpec, config_values, experiment_values, overrides
from lc.tracking.storage import ERROR_ATTR, kill_run, process_identity, worker_gone

log = logging.getLogger(__name__)
REFIT_ATTR = "refit"  # the study attribute of trial N's refit is "refit:N"


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


def refit_attr(trial: optuna.trial.FrozenTrial) -> str:
    """The study attribute that records ``trial``'s refit."""
    return f"{REFIT_ATTR}:{trial.number}"


def recorded_refit(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                   settings: dict[str, Any] | None = None) -> Candidate | None:
    """The finished refit of ``trial`` that the study holds, if any (with ``settings``: only one
    made with those refit settings)."""
    done = study.user_attrs.get(refit_attr(trial)) or {}
    if "model_uri" not in done:
        return None
    if settings is not None and done.get("settings", settings) != settings:
        return None
    return Candidate(**{k: done[k] for k in Candidate.__dataclass_fields__ if k in done})


def trial_score(trial: optuna.trial.FrozenTrial) -> str:
    """A trial's val mIoU as messages show it; a pruned trial has none."""
    return "pruned" if trial.value is None else f"{trial.value:.3f}"


def preferred(own: Candidate, refit: Candidate | None) -> Candidate:
    """The study's model: the refit, unless the trial's own model validates better."""
    return refit if refit is not None and refit.val_miou >= own.val_miou else own


def recipe_trial(spec: StudySpec, study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The first complete or pruned trial that ran the experiment's own values of the searched
    parameters (``start_from_experiment`` makes it trial 0), if any."""
    recipe = experiment_values(spec)
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return next((t for t in study.trials if recipe and t.state in ended
                 and all(t.params.get(k) == v for k, v in recipe.items())), None)


def refit_trial(spec: StudySpec, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Candidate | None:
    """Retrain ``trial``'s configuration with ``spec.refit`` on top, once per trial.

    The refit is a nested run of the study's parent run; the study remembers it with its
    settings, so a study that is run again (or ``lc register``) with the same refit settings
    finds it instead of training again; other settings (``lc study --refit``) train again. A refit whose
    process died is closed as KILLED and started again; one still running elsewhere is left to
    that process (None).
    """
    from lc.tracking.train import train

    if (recorded := recorded_refit(study, trial, spec.refit)) is not None:
        return recorded
    attr = refit_attr(trial)
    done = study.user_attrs.get(attr) or {}
    if "model_uri" not in done and done.get("run_id"):
        if done.get("worker") and not worker_gone(done["worker"]):
            log.warning("trial %s is being refitted by %s; it registers the result", trial.number, done["worker"])
            return None
        kill_run(done["run_id"])
    print(f"[{study.study_name}] refitting trial {trial.number} with {spec.refit}", file=sys.stderr, flush=True)
    cfg = load_config(spec.experiment, overrides(spec, {**trial.params, **spec.refit}))
    try:
        result = train(cfg, run_name=f"refit of trial {trial.number}", parent_run_id=study.user_attrs["mlflow_parent_run_id"],
                       tags={"optuna_study": study.study_name, "refit_of_trial": str(trial.number), "role": "refit"},
                       on_run_start=lambda run_id: study.set_user_attr(
                           attr, {"run_id": run_id, "worker": process_identity()}))
    except Exception as exc:  # its run ended FAILED; the next `lc study` or `lc register` tries again
        study.set_user_attr(attr, {ERROR_ATTR: f"{type(exc).__name__}: {exc}"[:2000]})
        raise
    refit = Candidate(result.model_uri, result.val["miou"], result.test["miou"], result.run_id, result.epochs,
                      round(result.seconds, 1), dict(spec.refit))
    study.set_user_attr(attr, asdict(refit))
    print(f"[{study.study_name}] refit of trial {trial.number}: val mIoU {refit.val_miou:.3f} after {refit.epochs} epochs "
          f"(the trial: {trial_score(trial)}) in {result.seconds:.0f} s", file=sys.stderr, flush=True)
    return refit


def finalists(spec: StudySpec, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials whose refits compete for registration: the best trial, then the trial that ran the
    experiment's recipe (``refit_recipe``, where the space refits)."""
    best = study.best_trial
    recipe = recipe_trial(spec, study) if spec.refit and spec.refit_recipe else None
    return [best] + ([recipe] if recipe is not None and recipe.number != best.number else [])


def chosen_model(trials: list[optuna.trial.FrozenTrial],
                 refits: list[Candidate | None]) -> tuple[optuna.trial.FrozenTrial, Candidate]:
    """The study's model: the best trial's own model or its refit, whichever validates better, unless
    another finalist's refit validates better still."""
    trial, chosen = trials[0], preferred(Candidate.of_trial(trials[0]), refits[0])
    for other, refit in zip(trials[1:], refits[1:]):
        if refit is not None and refit.val_miou > chosen.val_miou:
            trial, chosen = other, refit
    return trial, chosen


def register_best(spec: StudySpec, study: optuna.Study, force: bool = False) -> Registration | None:
    """Register the study's model (:func:`chosen_model` over the :func:`finalists`) as ``landcover``;
    None while a finalist is being refitted by another process."""
    if study.best_trial.user_attrs.get("model_uri") is None:
        raise ValueError(f"trial {study.best_trial.number} of study {study.study_name} has no logged model")
    trials, refits = finalists(spec, study), []
    for trial in trials:
        refits.append(refit_trial(spec, study, trial) if spec.refit else None)
        if spec.refit and refits[-1] is None:
            return None
    trial, chosen = chosen_model(trials, refits)
    refit = refits[trials.index(trial)]
    config = config_values(spec, {**trial.params, **(spec.refit if chosen is refit else {})})
    tags = {"optuna_study": study.study_name, "trial_number": str(trial.number), "mlflow_run_id": chosen.run_id,
            "test_miou": f"{chosen.test_miou:.6f}", "epochs": str(chosen.epochs), "refit": str(chosen is refit).lower()}
    if refit is not None:
        tags["refit_val_miou"] = f"{refit.val_miou:.6f}"
    if trial.value is not None:
        tags["trial_val_miou"] = f"{trial.value:.6f}"
    run_tags = mlflow.get_run(chosen.run_id).data.tags
    tags.update({key: run_tags[key] for key in ("experiment", "split_key") if key in run_tags})
    return register(chosen.model_uri, chosen.val_miou, force=force, tags=tags,
                    description=describe(trial.number, study.study_name, chosen.val_miou, config,
                                         refit=spec.refit if chosen is refit else None))
