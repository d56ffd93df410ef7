"""Does the U-Net earn its keep? The default recipe against the previous one and against per-pixel
gradient boosting, on the same splits of the demo data, in one run, through the commands users run.

- `lc baseline experiments/demo.yaml`: gradient boosting, same harmonisation;
- `lc train experiments/demo.yaml` with the previous recipe's settings (8 epochs of 2048 chips, 1024 steps, where
  the default trains 12: `train.max_epochs=8 train.patience=8`);
- `lc train experiments/demo.yaml`: the default recipe (`make train`);
each U-Net then maps the other area with `lc predict --experiment experiments/demo.yaml`, and the five
products of the demo region (`lc synth --region`: other class mixes, two without water) with `lc map`.
Printed: validation, test, other-area and region macro mIoU and seconds of each, into a scratch MLflow store.
`--world SEED` runs the same on another synthetic world (other landscapes, haze and noise), made in scratch space;
`--set KEY=VALUE` changes the experiment for every row (e.g. one training scene, as a new user starts);
`--seeds 0,1,2` trains each U-Net once per training seed (`train.seed`, the same splits) and prints their means;
`--unseen` also maps, with `lc predict`, every scene bundle of the experiment that no row trains or validates on,
and scores it against the bundle's labels (`lc evaluate --truth`): with one training scene, five areas.
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
from lc.config import load_config

PREVIOUS = ["train.max_epochs=8", "train.patience=8"]


def lc(*args: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lc.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"lc {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def unseen_scenes(config: str, overrides: list[str]) -> list[Path]:
    """The experiment's scene bundles (with labels) that it neither trains nor validates on."""
    cfg = load_config(ROOT / config, overrides)
    used = {(ROOT / p).resolve() for p in (*cfg.data.scenes, *cfg.data.val_twins.values(), *cfg.data.val_scenes)}
    return sorted(p for p in (ROOT / cfg.scenes_dir).iterdir() if (p / "label.tif").exists() and p.resolve() not in used)


def unet(name: str, config: str, overrides: list[str], env: dict, work: Path, unseen: list[Path]) -> dict:
    seconds, out = lc("train", config, *overrides, env=env)
    val, test = (float(v) for v in re.search(r"val mIoU ([\d.]+), test mIoU ([\d.]+)", out).groups())
    model = re.search(r"model (\S+)", out).group(1)
    slug = re.sub(r"\W+", "-", name).strip("-")
    area = work / f"{slug}.tif"
    lc("predict", "--model", model, "--experiment", config, "--out", str(area), "--overwrite", env=env)
    metrics = json.loads(area.with_name(f"{slug}.metrics.json").read_text())
    region = work / f"region-{slug}"
    region_config = work / f"region-{slug}.yaml"
    region_config.write_text(f"name: {slug}\nproducts_dir: {work}/region\nworldcover_dir: {work}/region\nout: {region}\n"
                      f"model: {model}\n")
    lc("map", str(region_config), "--workers", "1", env=env)
    products = json.loads((region / "region.json").read_text())["products"].values()
    maps = {}
    for scene in unseen:
        scene_map = work / f"{slug}-{scene.name}.tif"
        lc("predict", str(scene), "--model", model, "--out", str(scene_map), "--overwrite", env=env)
        lc("evaluate", str(scene_map), "--truth", str(scene / "label.tif"), "--out", f"{scene_map}.json", env=env)
        maps[scene.name] = json.loads(Path(f"{scene_map}.json").read_text())["miou"]
    return {"name": name, "val": val, "test": test, "area": metrics["miou"], "unseen": maps,
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


def mean_row(name: str, runs: list[dict]) -> dict:
    """The mean of a recipe's runs (one per training seed), field by field."""
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("val", "test", "area", "area_own", "seconds", "region")}
    return {"name": name, **mean, "products": [sum(p) / len(runs) for p in zip(*(r["products"] for r in runs))],
            "unseen": {k: sum(r["unseen"][k] for r in runs) / len(runs) for k in runs[0]["unseen"]}}


def print_row(r: dict) -> None:
    own = f" ({r['area_own']:.3f})" if "area_own" in r else ""
    unseen = f"{sum(r['unseen'].values()) / len(r['unseen']):7.3f}" if r.get("unseen") else ""
    region = f"{r['region']:.3f} ({', '.join(f'{m:.2f}' for m in r['products'])})" if "region" in r else ""
    print(f"{r['name']:>36} {r['val']:6.3f} {r['test']:6.3f} {r['area']:7.3f}{own:>9} {unseen:>7} {r['seconds']:8.0f}  "
          f"{region}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world", type=int, help="synthetic world seed (default: the demo's data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every row (repeatable)")
    parser.add_argument("--seeds", default="0", help="training seeds of the U-Net rows, comma-separated")
    parser.add_argument("--unseen", action="store_true",
                        help="also map and score the experiment's scenes that no row trains or validates on")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = {"previous recipe": PREVIOUS, "default recipe (make train)": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "MALLOC_MMAP_THRESHOLD_": "268435456", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
        config = "experiments/demo.yaml" if args.world is None else world_config(args.world, work)
        lc("data", config, env=env)
        lc("synth", str(work / "region"), "--region", "--seed", str(args.world or 0), env=env)
        unseen = unseen_scenes(config, args.set) if args.unseen else []
        seconds, out = lc("baseline", config, *args.set, env=env)
        gbm = {"name": "gradient boosting (lc baseline)", "seconds": seconds,
               **dict(zip(("val", "test", "area"), map(float, re.search(
                   r"val mIoU ([\d.]+), test mIoU ([\d.]+), \S+ mIoU ([\d.]+)", out).groups())))}
        runs = {name: [unet(f"{name}, seed {seed}", config, [*args.set, *recipe, f"train.seed={seed}"], env, work,
                            unseen) for seed in seeds] for name, recipe in recipes.items()}
    world = ("" if args.world is None else f", synthetic world {args.world}") + "".join(f", {o}" for o in args.set)
    print(f"experiments/demo.yaml{world}, same splits for every row; macro mIoU (other area: every class of its "
          "ground truth; in brackets the model's classes, as training scores them"
          + (f"; unseen: the mean over {', '.join(s.name for s in unseen)}" if unseen else "") + ")")
    print(f"{'':>36} {'val':>6} {'test':>6} {'other area':>16} {'unseen':>7} {'seconds':>8}  region (its products)")
    print_row(gbm)
    means = {}
    for name, seeded in runs.items():
        for r in seeded:
            print_row(r)
        means[name] = mean_row(f"{name}, mean" if len(seeded) > 1 else name, seeded)
        if len(seeded) > 1:
            print_row(means[name])
    default = means["default recipe (make train)"]
    print(f"default recipe - gradient boosting: test {default['test'] - gbm['test']:+.3f}, "
          f"other area {default['area'] - gbm['area']:+.3f}")
    if unseen:
        print("per unseen scene (mean over seeds): " + "; ".join(
            f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in m["unseen"].items()) for name, m in means.items()))


if __name__ == "__main__":
    main()
