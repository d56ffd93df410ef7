"""Search efficiency: TPE with median pruning against random search without pruning, each given
the same wall-clock budget on the demo space, over several sampler seeds. Each search's first trial
is the experiment's recipe, as in `lc study`.

For each seed and each search: the best validation mIoU found, the trials run and pruned, and
the macro mIoU of the best trial's model on the other area (the demo's L2A scene of Thrace,
never used for selection). Printed per seed, then the mean and spread (min-max) of each search.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import CACHE, ROOT

BUDGET_MIN = 8
OTHER_AREA = ROOT / "data" / "demo" / "scenes" / "thrace_L2A"


def other_area_miou(model_uri: str) -> float:
    """Macro mIoU of a trial's model on the other area's scene (every class of its ground truth)."""
    from lc.mapping.accuracy import evaluate_rasters
    from lc.mapping.predict import predict_scene
    from lc.tracking.models import load_model

    model, contract = load_model(model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        out = predict_scene(model, contract, OTHER_AREA, Path(tmp) / "map.tif")
        return evaluate_rasters(out, OTHER_AREA / "label.tif", Path(tmp) / "m.json")["miou"]


def search(space, kind: str, seed: int, budget_s: float) -> dict:
    import optuna

    from lc.tracking import store
    from lc.tracking.storage import open_study
    from lc.tracking.study import objective, parent_run

    variant = space.model_copy(update={
        "name": f"bench-{kind}-{seed}-{int(time.time())}",
        "sampler": space.sampler.model_copy(update={"kind": "tpe" if kind == "tpe" else "random", "seed": seed}),
        "pruner": space.pruner.model_copy(update={"kind": "median" if kind == "tpe" else "none"}),
        "register_best": False,
    })
    storage = str(CACHE / f"{variant.name}.journal")
    store.configure()
    study = open_study(variant, storage)
    parent = parent_run(variant, study, storage)
    study.optimize(lambda t: objective(t, variant, parent), timeout=budget_s, catch=(Exception,))
    best = study.best_trial
    return {"best": best.value, "trials": len(study.trials), "area": other_area_miou(best.user_attrs["model_uri"]),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)}


def main() -> None:
    from lc.tracking.space import load_spec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default=str(ROOT / "studies" / "demo.yaml"))
    parser.add_argument("--minutes", type=float, default=BUDGET_MIN, help="wall-clock budget of each search")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{CACHE / 'mlflow.db'}")
    CACHE.mkdir(parents=True, exist_ok=True)
    space = load_spec(args.space)
    results = {(kind, seed): search(space, kind, seed, args.minutes * 60) for seed in args.seeds
               for kind in ("tpe", "random")}
    labels = {"tpe": "TPE + median pruning", "random": "random, no pruning"}
    print(f"budget {args.minutes:g} min of wall clock each, space {args.space}, sampler seeds {args.seeds}")
    print(f"{'search':>22} {'seed':>5} {'best val mIoU':>14} {'other area':>11} {'trials':>7} {'pruned':>7}")
    for (kind, seed), r in results.items():
        print(f"{labels[kind]:>22} {seed:5d} {r['best']:14.3f} {r['area']:11.3f} {r['trials']:7d} {r['pruned']:7d}")
    for kind, label in labels.items():
        best = [results[kind, s]["best"] for s in args.seeds]
        area = [results[kind, s]["area"] for s in args.seeds]
        print(f"{label:>22}: mean best val mIoU {statistics.mean(best):.3f} ({min(best):.3f}-{max(best):.3f}), "
              f"other area {statistics.mean(area):.3f} ({min(area):.3f}-{max(area):.3f})")


if __name__ == "__main__":
    main()
