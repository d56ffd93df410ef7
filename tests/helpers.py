"""Small real products for tests, generated on the fly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lc.synth.products import DEFAULT_PRODUCTS, ProductSpec, synthesize

TINY = 60  # px at 10 m: 30 px at 20 m, 10 px at 60 m


def make_products(out: Path, *specs: ProductSpec, size: int = TINY, seed: int = 0) -> dict:
    """Synthesize ``specs`` (default: the standard set) at a tiny size."""
    return synthesize(out, seed=seed, size=size, products=specs or DEFAULT_PRODUCTS)


def variant(spec: ProductSpec, **changes) -> ProductSpec:
    return replace(spec, **changes)
