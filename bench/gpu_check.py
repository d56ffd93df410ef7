"""GPU check: the commands users run, on a CUDA machine, into a scratch MLflow store and study folder.

1. `lc data experiments/demo.yaml` (synthetic products, scenes; CPU).
2. `lc train experiments/demo.yaml train.accelerator=gpu data.num_workers=4`: the default recipe, bf16-mixed.
3. `lc study` of 3 trials of the demo space on the GPU (a copy of studies/demo.yaml whose fixed
   settings add `train.accelerator: gpu` and 4 loader workers), refit and registration included.
4. `lc predict --model models:/landcover/Production --experiment experiments/demo.yaml` with
   `--device cuda` and with `--device cpu`: the two maps must agree on >= 99.5% of pixels.

Prints each command's wall time and result line; writes bench/results/gpu_check.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GPU_LOADER_WORKERS = 4  # the demo makes chips in the training process, sized for 2 CPU cores; a GPU waits on that


def lc(*args: str, env: dict) -> tuple[float, str]:
    """Run one `lc` command from the repository root; its seconds and last output lines."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lc.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    print(f"[{seconds:6.0f} s] lc {' '.join(args)}\n{tail}\n", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"lc {args[0]} failed")
    return seconds, tail


def main() -> None:
    import torch

    assert torch.cuda.is_available(), "no CUDA device"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "PYTHONUNBUFFERED": "1"}
    space = yaml.safe_load((ROOT / "studies" / "demo.yaml").read_text())
    space["name"] = "gpu-check"
    space["fixed"] |= {"train.accelerator": "gpu", "data.num_workers": GPU_LOADER_WORKERS}
    (work / "gpu-check.yaml").write_text(yaml.safe_dump(space))
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    results["data_s"], _ = lc("data", "experiments/demo.yaml", env=env)
    results["train_s"], results["train"] = lc("train", "experiments/demo.yaml", "train.accelerator=gpu",
                                              f"data.num_workers={GPU_LOADER_WORKERS}", env=env)
    results["study_s"], results["study"] = lc("study", str(work / "gpu-check.yaml"), "--n-trials", "3",
                                              "--storage", str(work / "gpu-check.journal"), env=env)
    maps = {}
    for device in ("cuda", "cpu"):
        maps[device] = work / f"map-{device}.tif"
        results[f"predict_{device}_s"], results[f"predict_{device}"] = lc(
            "predict", "--model", "models:/landcover/Production", "--experiment", "experiments/demo.yaml",
            "--device", device, "--out", str(maps[device]), "--overwrite", env=env)
    a, b = (rasterio.open(maps[d]).read(1) for d in ("cuda", "cpu"))
    results["map_agreement"] = float((a == b)[(a > 0) | (b > 0)].mean())
    print(f"CUDA map vs CPU map: {results['map_agreement']:.4%} of mapped pixels agree", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(results, indent=1))
    assert results["map_agreement"] >= 0.995 and np.isfinite(results["train_s"])


if __name__ == "__main__":
    main()
