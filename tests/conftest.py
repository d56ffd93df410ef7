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
    from lc.prepare import prepare

    raw, manifest = tiny_raw
    out = tmp_path_factory.mktemp("scenes")
    return {
        p["scene"]: prepare(raw / p["path"], out / p["scene"], [raw / w for w in p["worldcover"]])
        for p in manifest["products"]
    }
