"""`lc map` on Dask against a plain loop over the same products; bf16 against fp32 maps.

The region is the demo's (`lc synth --region`), at --size px a product (default 1536, so that a
product takes longer than a worker takes to start); the model is a registered one (default
models:/landcover/Production of the project's store: run `make demo` first). Arms, each
mapping every product from scratch:

- loop:       map_product (the Dask task's own function) called in a loop, all cores to torch;
- dask x1:    `lc map`'s function on a local cluster of 1 worker (all cores), cluster start included;
- dask x2:    the same with 2 workers of 1 thread each;
- loop fp32:  the loop with float32 instead of the default precision (bf16 where the CPU has it).

Printed: seconds and products per minute of each, the engine's overhead (dask x1 / loop), the
speed-up of 2 workers, each worker's peak RSS, and how many pixels the default precision's maps
share with the fp32 maps (goal: at least 99.5%) with the time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml

from common import CACHE, ROOT


def region(size: int) -> Path:
    from lc.synth.region import synthesize_region

    raw = CACHE / f"region-{size}"
    if not (raw / "synth.json").exists():
        synthesize_region(raw, size=size)
    return raw


def loop(raw: Path, out: Path, model: str, precision: str) -> float:
    from lc.config import PredictConfig
    from lc.mapping.region import map_product, tile_map_path

    settings = PredictConfig(precision=precision).model_dump()
    start = time.perf_counter()
    for product in sorted(raw.glob("*.SAFE")):
        map_product(str(product), str(tile_map_path(out, product)), model, [], settings, os.cpu_count() or 1)
    return time.perf_counter() - start


def dask(raw: Path, out: Path, model: str, workers: int) -> tuple[float, dict]:
    from lc.mapping.region import map_region

    spec = out.parent / f"{out.name}.yaml"
    spec.write_text(yaml.safe_dump({"name": out.name, "products_dir": str(raw), "out": str(out), "model": model}))
    start = time.perf_counter()
    state = map_region(spec, workers=workers, echo=lambda *_: None)
    return time.perf_counter() - start, state


def maps(out: Path) -> dict[str, np.ndarray]:
    found = {}
    for tif in sorted((out / "tiles").glob("*.tif")):
        if not tif.name.endswith(".confidence.tif"):
            with rasterio.open(tif) as src:
                found[tif.name] = src.read(1)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--model", default="models:/landcover/Production")
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ["TQDM_DISABLE"] = "1"
    from lc.tracking import store

    store.configure()
    from lc.tracking.models import resolve_model

    try:
        resolve_model(args.model)
    except Exception as exc:  # noqa: BLE001 - any lookup failure means the same: no model to map with
        raise SystemExit(f"bench_region.py maps with a registered model ({args.model}): run `make demo` first ({exc})")
    raw = region(args.size)
    n = len(list(raw.glob("*.SAFE")))
    work = CACHE / "region-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    seconds = {"loop": loop(raw, work / "loop", args.model, "auto")}
    for workers in (1, 2):
        seconds[f"dask x{workers}"], state = dask(raw, work / f"dask{workers}", args.model, workers)
        peaks = sorted({e["worker"]: e["peak_rss_mb"] for e in state["products"].values()}.values())
        print(f"dask x{workers}: peak RSS per worker {peaks} MB")
    seconds["loop fp32"] = loop(raw, work / "fp32", args.model, "fp32")
    for arm, s in seconds.items():
        print(f"{arm:>10}: {s:7.1f} s for {n} products of {args.size}^2 px, {60 * n / s:5.2f} products/min")
    print(f"engine overhead dask x1 / loop: {seconds['dask x1'] / seconds['loop']:.2f}; "
          f"2 workers / 1 worker speed-up: {seconds['dask x1'] / seconds['dask x2']:.2f}")
    default, fp32 = maps(work / "loop"), maps(work / "fp32")
    valid = sum(int((m > 0).sum()) for m in fp32.values())
    same = sum(int(((default[k] == m) & (m > 0)).sum()) for k, m in fp32.items())
    print(f"default precision vs fp32: {same / valid:.4%} of {valid:,} mapped pixels agree; time ratio "
          f"fp32 / default {seconds['loop fp32'] / seconds['loop']:.2f}")
    print(json.dumps({k: round(v, 1) for k, v in seconds.items()}))


if __name__ == "__main__":
    main()
