"""Search efficiency: TPE with median pruning against random search without pruning, each
given the same wall-clock budget on the demo space; best validation mIoU of each and ratio.
"""

from __future__ import annotations

import argparse
import os
import time

from common import CACHE, ROOT

BUDGET_MIN = 12


def search(space, kind: str, budget_s: float) -> tuple[float, int, int]:
    import optuna

    from lc.tracking import store
    from lc.tracking.storage import open_study
    from lc.tracking.study import objective, parent_run

    variant = space.model_copy(update={
        "name": f"bench-{kind}-{int(time.time())}",
        "sampler": space.sampler.model_copy(update={"kind": "tpe" if kind == "tpe" else "random"}),
        "pruner": space.pruner.model_copy(update={"kind": "median" if kind == "tpe" else "none"}),
        "register_best": False,
    })
    storage = str(CACHE / f"{variant.name}.journal")
    store.configure()
    study = open_study(variant, storage)
    parent = parent_run(variant, study, storage)
    study.optimize(lambda t: objective(t, variant, parent), timeout=budget_s, catch=(Exception,))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    return max(t.value for t in complete), len(study.trials), pruned


def main() -> None:
    from lc.tracking.space import load_spec

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default=str(ROOT / "studies" / "demo.yaml"))
    parser.add_argument("--minutes", type=float, default=BUDGET_MIN, help="wall-clock budget of each search")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{CACHE / 'mlflow.db'}")
    CACHE.mkdir(parents=True, exist_ok=True)
    space = load_spec(args.space)
    results = {kind: search(space, kind, args.minutes * 60) for kind in ("tpe", "random")}
    print(f"budget {args.minutes:g} min of wall clock each, space {args.space}")
    print(f"{'search':>22} {'best val mIoU':>14} {'trials':>7} {'pruned':>7}")
    for kind, (best, n, pruned) in results.items():
        label = "TPE + median pruning" if kind == "tpe" else "random, no pruning"
        print(f"{label:>22} {best:14.3f} {n:7d} {pruned:7d}")
    print(f"ratio TPE/random best val mIoU: {results['tpe'][0] / results['random'][0]:.3f}")


if __name__ == "__main__":
    main()
