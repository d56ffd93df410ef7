"""A study's search space (``studies/*.yaml``): the base experiment, fixed overrides, the
searched parameters (with conditional ``name@variant`` keys), sampler, pruner and refit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lc.config import load_config, read_settings


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
    refit_recipe: bool = Field(True, description="with refit: also refit the trial that ran the experiment's recipe, "
                               "and register that model where it validates better than the best trial's")
    register_best: bool = True
    start_from_experiment: bool = Field(True, description="the first trial is the experiment's own configuration "
                                        "(its values of the searched parameters, where the space holds them)")


def load_spec(path: Path) -> StudySpec:
    """A search space from its YAML file (ConfigError naming the file and key if it is wrong)."""
    return read_settings(path, StudySpec)



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


def holds(p: Param, value: Any) -> bool:
    """Whether ``value`` is one the parameter can take."""
    if p.choices is not None:
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:
        return False
    return p.step is None or abs((value - p.low) / p.step - round((value - p.low) / p.step)) < 1e-9


def experiment_values(spec: StudySpec) -> dict[str, Any]:
    """The searched parameters as the experiment, with the fixed overrides, sets them; those whose value
    the space does not hold are left out (sampled)."""
    config = load_config(spec.experiment, overrides(spec, {})).model_dump(mode="json")
    values: dict[str, Any] = {}
    for name, p in spec.params.items():
        if any(values.get(k) not in allowed for k, allowed in p.when.items()):
            continue
        value: Any = config
        for part in name.split("@")[0].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if holds(p, value):
            values[name] = value
    return values


def config_values(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
    """The fixed values, then the sampled ones (``@variant`` dropped), by dotted config key."""
    return {**spec.fixed, **{k.split("@")[0]: v for k, v in values.items()}}


def overrides(spec: StudySpec, values: dict[str, Any]) -> list[str]:
    """Dotted config overrides (``key=value``) of :func:`config_values`."""
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in config_values(spec, values).items()]
