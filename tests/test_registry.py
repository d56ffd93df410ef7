"""Promotion compares only numbers that compare: val mIoU on the same validation pixels."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import IntegrityError

from lc.learning.contract import ModelContract
from lc.tracking.models import log_model
from lc.tracking.registry import _version_of, register
from lc.tracking.store import retried

CONTRACT = ModelContract(harmonisation="none", normalisation={"mean": [0.0] * 13, "std": [1.0] * 13},
                         classes=[{"code": 10, "name": "Tree cover", "colour": "#006400"}], chip_size=32,
                         encoder="resnet18")


def _candidate(experiment: str, split_key: str) -> tuple[str, dict[str, str]]:
    """A logged model of a run on the given data (a stand-in network), and its registration tags."""
    with mlflow.start_run():
        uri = log_model(torch.nn.Conv2d(13, 1, 1), CONTRACT)
    return uri, {"experiment": experiment, "split_key": split_key}


def _production() -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias("landcover", "production").version)


def test_promotion_on_the_same_data_by_val_miou_and_across_data_only_when_forced(mlflow_store):
    uri, tags = _candidate("demo", "aaa")
    first = register(uri, 0.50, description="", tags=tags)
    assert first.promoted and first.reason == "no production version yet" and _production() == first.version

    worse = register(_candidate("demo", "aaa")[0], 0.40, description="", tags={"experiment": "demo", "split_key": "aaa"})
    assert not worse.promoted and "0.5000 on the same validation pixels" in worse.reason
    assert _production() == first.version

    better = register(_candidate("demo", "aaa")[0], 0.60, description="", tags={"experiment": "demo", "split_key": "aaa"})
    assert better.promoted and "beats production's 0.5000" in better.reason and _production() == better.version

    other = register(_candidate("greece", "bbb")[0], 0.95, description="", tags={"experiment": "greece", "split_key": "bbb"})
    assert not other.promoted and "from demo" in other.reason and "--force" in other.reason
    assert _production() == better.version  # a higher number on other data does not replace production

    forced = register(_candidate("greece", "bbb")[0], 0.30, description="", tags={"experiment": "greece", "split_key": "bbb"},
                      force=True)
    assert forced.promoted and f"forced over version {better.version}" == forced.reason and _production() == forced.version
    stage = mlflow.MlflowClient().get_latest_versions("landcover", ["Production"])
    assert [str(v.version) for v in stage] == [forced.version]


def test_registering_the_production_model_again_keeps_it(mlflow_store):
    uri, tags = _candidate("demo", "aaa")
    first = register(uri, 0.5, description="", tags=tags)
    again = register(uri, 0.5, description="", tags=tags)
    assert again.version == first.version and again.promoted and again.reason == "it is the production version already"


def test_a_model_registered_twice_at_once_keeps_its_first_version(mlflow_store, monkeypatch):
    """The workers of a study each finish it, registering the same best model at the same moment."""
    uri, tags = _candidate("demo", "aaa")
    register_model = mlflow.register_model

    def after_another_worker(model_uri, name):  # the other worker's registration lands first
        first.append(register_model(model_uri, name).version)
        return register_model(model_uri, name)

    first = []
    monkeypatch.setattr(mlflow, "register_model", after_another_worker)
    assert register(uri, 0.5, description="", tags=tags).version == str(first[0])
    versions = mlflow.MlflowClient().search_model_versions("name='landcover'")
    assert [str(v.version) for v in versions] == [str(first[0])]  # this worker's duplicate is gone
    assert _version_of(mlflow.MlflowClient(), uri, "landcover") == str(first[0])


def test_a_registry_write_that_another_process_made_first_isretried():
    calls = []

    def write():  # as MLflow's tag insert fails when another process inserted the same key first
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("UNIQUE constraint failed") from IntegrityError("INSERT", {}, Exception("UNIQUE"))

    retried(write)
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(MlflowException, match="UNIQUE"):
        retried(write, attempts=1)  # a write that keeps failing is not hidden
    with pytest.raises(MlflowException, match="not found"):  # nor one that no retry can mend
        retried(lambda: calls.append(1) or mlflow.MlflowClient().get_run("0" * 32), attempts=3)
    assert len(calls) == 2


def test_the_split_key_follows_the_validation_pixels_and_not_the_recipe(small_scenes):
    from lc.tracking.store import split_key
    from tests.conftest import tiny_config

    base = split_key(tiny_config(small_scenes).data)
    assert split_key(tiny_config(small_scenes, data__harmonisation="dark_object").data) == base
    assert split_key(tiny_config(small_scenes, data__val_scenes=[str(small_scenes["attica_L2A"])]).data) != base
    assert split_key(tiny_config(small_scenes, data__seed=1).data) != base
