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
