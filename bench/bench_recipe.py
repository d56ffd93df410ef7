"""Does the U-Net earn its keep? The default recipe against the previous one and against per-pixel
gradient boosting, on the same splits of the demo data, in one run, through the commands users run.

- `lc baseline experiments/demo.yaml`: gradient boosting, same harmonisation;
- `lc train experiments/demo.yaml` with the previous recipe's settings (validation and checkpoints of the raw
  weights, instead of their moving average: `train.weight_average=0`);
- `lc train experiments/demo.yaml`: the default recipe (`make train`);
each U-Net then maps the other area with `lc predict --experiment experiments/demo.yaml`, and the five
products of the demo region (`lc synth --region`: other class mixes, two without water) with `lc map`.
Printed: validation, test, other-area and region macro mIoU and seconds of each, into a scratch MLflow store.
`--world SEED` runs the same on another synthetic world (other landscapes, haze and noise), made in scratch space;
`--set KEY=VALUE` changes the experiment for every row (e.g. one training scene, as a new user starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import ROOT

PREVIOUS = ["train.weight_average=0"]


def lc(*args: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lc.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"lc {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def unet(name: str, config: str, overrides: list[str], env: dict, work: Path) -> dict:
    seconds, out = lc("train", config, *overrides, env=env)
    val, test = (float(v) for v in re.search(r"val mIoU ([\d.]+), test mIoU ([\d.]+)", out).groups())
    model = re.search(r"model (\S+)", out).group(1)
    area = work / f"{name}.tif"
    lc("predict", "--model", model, "--experiment", config, "--out", str(area), "--overwrite", env=env)
    metrics = json.loads(area.with_name(f"{name}.metrics.json").read_text())
    region = work / f"region-{name}"
    region_config = work / f"region-{name}.yaml"
    region_config.write_text(f"name: {name}\nproducts_dir: {work}/region\nworldcover_dir: {work}/region\nout: {region}\n"
                      f"model: {model}\n")
    lc("map", str(region_config), "--workers", "1", env=env)
    products = json.loads((region / "region.json").read_text())["products"].values()
    return {"name": name, "val": val, "test": test, "area": metrics["miou"],
            "area_own": metrics["model_classes_metrics"]["miou"], "seconds": seconds,
            "region": json.loads((region / "region.metrics.json").read_text())["miou"],
            "products": [p["miou"] for p in products]}


def world_config(seed: int, work: Path) -> str:
    """experiments/demo.yaml with its data made from generator seed ``seed`` under ``work``."""
    text = (ROOT / "experiments" / "demo.yaml").read_text().replace("data/demo/", f"{work}/world/")
    raw = yaml.safe_load(text)
    raw["source"]["seed"] = seed
    config = work / "world.yaml"
    config.write_text(yaml.safe_dump(raw))
    return str(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", type=int, help="synthetic world seed (default: the demo's data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every row (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
        config = "experiments/demo.yaml" if args.world is None else world_config(args.world, work)
        lc("data", config, env=env)
        lc("synth", str(work / "region"), "--region", "--seed", str(args.world or 0), env=env)
        seconds, out = lc("baseline", config, *args.set, env=env)
        gbm = {"name": "gradient boosting (lc baseline)", "seconds": seconds,
               **dict(zip(("val", "test", "area"), map(float, re.search(
                   r"val mIoU ([\d.]+), test mIoU ([\d.]+), \S+ mIoU ([\d.]+)", out).groups())))}
        rows = [gbm, unet("previous recipe", config, [*args.set, *PREVIOUS], env, work),
                unet("default recipe (make train)", config, args.set, env, work)]
    world = ("" if args.world is None else f", synthetic world {args.world}") + "".join(f", {o}" for o in args.set)
    print(f"experiments/demo.yaml{world}, same splits for every row; macro mIoU (other area: every class of its "
          "ground truth; in brackets the model's classes, as training scores them)")
    print(f"{'':>32} {'val':>6} {'test':>6} {'other area':>16} {'seconds':>8}  region (its products)")
    for r in rows:
        own = f" ({r['area_own']:.3f})" if "area_own" in r else ""
        region = f"{r['region']:.3f} ({', '.join(f'{m:.2f}' for m in r['products'])})" if "region" in r else ""
        print(f"{r['name']:>32} {r['val']:6.3f} {r['test']:6.3f} {r['area']:7.3f}{own:>9} {r['seconds']:8.0f}  {region}")
    print(f"default recipe - gradient boosting: test {rows[2]['test'] - gbm['test']:+.3f}, "
          f"other area {rows[2]['area'] - gbm['area']:+.3f}")


if __name__ == "__main__":
    main()
