"""`lc predict PRODUCT` end to end, as users run it: a whole product in, a map out.

Products of 5490^2 and 10980^2 px (a full tile) repeat the demo's L2A product of the other
area band by band (made once under data/bench). For each size, two commands run in their own
process: `lc prepare PRODUCT` (decoding and bringing the bands to 10 m, the baseline) and
`lc predict --model M PRODUCT` (the same, then the map). Printed: seconds and peak RSS of
each, and the ratio of the two times. Goal: a full tile within 3 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from common import CACHE, ROOT

SIZES = (5490, 10980)


def big_product(size: int) -> Path:
    """A SAFE product of ``size``^2 px repeating the demo's product of the other area (made once)."""
    from lc.sentinel2.bands import BY_NAME
    from lc.sentinel2.safe import open_product
    from lc.synth.products import DEFAULT_PRODUCTS, product_info
    from lc.synth.safe_writer import write_product

    folder = CACHE / f"product-{size}"
    done = list(folder.glob("*.SAFE"))
    if done:
        return done[0]
    spec = next(s for s in DEFAULT_PRODUCTS if s.role == "predict")
    source = open_product(next((ROOT / "data" / "demo" / "raw").glob(f"*{spec.area.tile}*.SAFE")))
    native = {}
    for band, path in source.band_files.items():
        f = BY_NAME[band].resolution // 10
        with rasterio.open(path) as src:
            dn = src.read(1)
        reps = -(-size // f // dn.shape[0])
        native[band] = np.tile(dn, (reps, reps))[: size // f, : size // f]
    return write_product(folder, product_info(spec), native)


def scratch_model(store: Path) -> str:
    """An untrained U-Net with a contract in a scratch MLflow store: memory does not depend on training."""
    import mlflow

    from lc.learning.contract import ModelContract
    from lc.learning.unet import build_unet
    from lc.tracking.models import log_model
    from lc.worldcover import WORLDCOVER

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    contract = ModelContract(harmonisation="scene_standardise", normalisation={"mean": [0.0] * 13, "std": [1.0] * 13},
                             classes=[{"code": c.code, "name": c.name, "colour": c.colour} for c in WORLDCOVER[:8]],
                             chip_size=64, encoder="resnet18")
    with mlflow.start_run():
        return log_model(build_unet("resnet18", 8), contract)


def peak_rss_mb(pid: int) -> float:
    """The process's own high-water RSS (VmHWM). Not ru_maxrss: a child started by vfork inherits its
    parent's peak there at exec, and this parent held a whole product while making it."""
    with open(f"/proc/{pid}/status") as status:
        return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), 0.0)


def measure(*args: str, env: dict) -> tuple[float, float]:
    """Seconds and peak RSS (MB, sampled every 0.2 s) of one `lc` command in a fresh process."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "lc.cli.main", *args], env=env, stdout=log, stderr=log)
        peak = 0.0
        while child.poll() is None:
            try:
                peak = max(peak, peak_rss_mb(child.pid))
            except OSError:  # exiting
                pass
            time.sleep(0.2)
        seconds = time.perf_counter() - start
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"lc {' '.join(args)} failed:\n{log.read()[-3000:]}")
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    rows = []
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        uri = scratch_model(work)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
        for size in args.sizes:
            product = big_product(size)
            prepared = measure("prepare", str(product), "--out", str(work / f"scene-{size}"), env=env)
            mapped = measure("predict", "--model", uri, str(product), "--out", str(work / f"map-{size}.tif"), env=env)
            rows.append((size, prepared, mapped))
    print("lc prepare PRODUCT and lc predict --model M PRODUCT (resnet18, 8 classes, 256 px tiles), CPU, fresh processes")
    print(f"{'size':>6} {'prepare s':>10} {'prepare MB':>11} {'predict s':>10} {'predict MB':>11} {'predict / prepare':>18}")
    for size, (ps, pm), (ms, mm) in rows:
        print(f"{size:>6} {ps:10.0f} {pm:11.0f} {ms:10.0f} {mm:11.0f} {ms / ps:18.2f}")
    print("goal: a full tile (10980^2) within 3 GB")


if __name__ == "__main__":
    main()
