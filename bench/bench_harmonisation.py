"""L1C -> L2A: train on L1C with each harmonisation method, test on the Thessaly test blocks
in L1C and in L2A of the same acquisition (the synthetic pair shares one grid).

Prints test mIoU on each level and the gap (L1C - L2A) per method.
"""

from __future__ import annotations

import argparse
import os

from common import ROOT
from lc.config import load_config
from lc.learning.datamodule import LandCoverData
from lc.learning.harmonise import METHODS
from lc.learning.scenes import load_scene
from lc.tracking.train import train


def evaluate_on(result, cfg, scenes, scene_index: int) -> float:
    """Test mIoU of a run's best model on the test chips of one scene, ``scenes`` swapped in."""
    import lightning as L

    from lc.learning.module import LandCoverModule
    from lc.tracking.models import load_model

    data = LandCoverData(cfg.data)
    data.setup()
    model, _ = load_model(result.model_uri)
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    module.model = model
    dataset = data.dataset("test", scenes=[load_scene(s) for s in scenes])
    dataset.chips = [c for c in dataset.chips if c.scene == scene_index]
    loader = data._loader(dataset, shuffle=False)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(module, loader, verbose=False)
    return module.results["test"]["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'data' / 'bench' / 'mlflow.db'}")
    rows = []
    for method in METHODS:
        epochs = [f"train.max_epochs={args.epochs}"] if args.epochs else []
        cfg = load_config(args.config, [f"data.harmonisation={method}", "data.val_twins={}",  # selection on L1C only
                                        "mlflow_experiment=bench-harmonisation", *epochs])
        l1c = [str(p) for p in cfg.data.scenes]
        l2a = [p.replace("thessaly_L1C", "thessaly_L2A") for p in l1c]
        k = next(i for i, p in enumerate(l1c) if "thessaly_L1C" in p)
        result = train(cfg, run_name=f"harmonisation {method}")
        rows.append((method, evaluate_on(result, cfg, l1c, k), evaluate_on(result, cfg, l2a, k)))
    print(f"test mIoU, trained on L1C ({cfg.train.max_epochs} epochs at most); L2A = the same acquisition's "
          "surface reflectance")
    print(f"{'method':>18} {'L1C':>7} {'L2A':>7} {'gap':>7}")
    for method, a, b in rows:
        print(f"{method:>18} {a:7.3f} {b:7.3f} {a - b:7.3f}")


if __name__ == "__main__":
    main()
