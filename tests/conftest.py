"""Shared test fixtures: small real products made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
S2_METADATA = SHARED / "fixtures" / "s2-metadata"


@pytest.fixture(scope="session")
def s2_metadata() -> Path:
    """The real ESA metadata fixtures of ../shared (CI has them; a user's clone may not)."""
    if not (S2_METADATA / "expected.json").exists():
        pytest.skip(f"real ESA metadata fixtures not found at {S2_METADATA} (they live in ../shared, not in the clone)")
    return S2_METADATA


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> tuple[Path, dict]:
    """The default synthetic product set at 60 x 60 px (session-wide, read-only)."""
    from tests.helpers import make_products

    out = tmp_path_factory.mktemp("raw")
    return out, make_products(out)


@pytest.fixture(scope="session")
def tiny_scenes(tiny_raw, tmp_path_factory) -> dict[str, Path]:
    """Every tiny product prepared into a scene bundle (session-wide, read-only)."""
    from lc.sentinel2.prepare import prepare

    raw, manifest = tiny_raw
    out = tmp_path_factory.mktemp("scenes")
    return {
        p["scene"]: prepare(raw / p["path"], out / p["scene"], [raw / w for w in p["worldcover"]])
        for p in manifest["products"]
    }


@pytest.fixture(scope="session")
def small_raw(tmp_path_factory) -> tuple[Path, dict]:
    """The default products at 96 x 96 px (session-wide, read-only)."""
    from tests.helpers import make_products

    raw = tmp_path_factory.mktemp("raw96")
    return raw, make_products(raw, size=96)


@pytest.fixture(scope="session")
def small_scenes(small_raw, tmp_path_factory) -> dict[str, Path]:
    """The default products at 96 x 96 px, prepared (enough for 32 px chips in 3 x 3 blocks)."""
    from lc.sentinel2.prepare import prepare

    raw, manifest = small_raw
    out = tmp_path_factory.mktemp("scenes96")
    return {
        p["scene"]: prepare(raw / p["path"], out / p["scene"], [raw / w for w in p["worldcover"]], method="cubic")
        for p in manifest["products"]
    }


@pytest.fixture()
def mlflow_store(tmp_path) -> str:
    """A fresh real MLflow store (SQLite + artifacts) for one test."""
    from tests.helpers import mlflow_store_in

    with mlflow_store_in(tmp_path) as uri:
        yield uri


def tiny_config(scenes: dict[str, Path], **overrides):
    """A training config for the 96 px scenes: 32 px chips, a few quick epochs."""
    from lc.config import ExperimentConfig

    raw = {
        "name": "tiny",
        "raw_dir": "unused",
        "scenes_dir": "unused",
        "data": {"scenes": [str(scenes["epirus_L1C"]), str(scenes["thessaly_L1C"])], "chip_size": 32,
                 "block_size": 32, "batch_size": 8, "num_workers": 0, "augmentation": "flips", "buffer": 2,
                 "max_nodata": 0.9},
        "model": {"encoder": "resnet18"},
        "train": {"max_epochs": 2, "patience": 5, "lr": 0.003},
        "mlflow_experiment": "tests",
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        raw[section][name] = value
    return ExperimentConfig.model_validate(raw)
