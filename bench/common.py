"""Shared bench helpers: timing and the synthetic products the benchmarks run on."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "data" / "bench"


@contextmanager
def timer(results: dict, key: str):
    start = time.perf_counter()
    yield
    results[key] = time.perf_counter() - start


def bench_product(size: int, index: int = 0) -> Path:
    """A synthetic product of ``size`` px (generated once, kept under data/bench)."""
    from lc.synth.products import DEFAULT_PRODUCTS, synthesize

    out = CACHE / f"raw-{size}-{index}"
    manifest = out / "synth.json"
    if not manifest.exists():
        synthesize(out, size=size, products=(DEFAULT_PRODUCTS[index],))
    import json

    return out / json.loads(manifest.read_text())["products"][0]["path"]
