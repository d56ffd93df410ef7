"""The U-Net against a per-pixel classifier: does spatial context pay?

A histogram gradient-boosting classifier (scikit-learn) gets each pixel's 13 bands after the
same harmonisation and normalisation as the model (from its contract), trained on pixels of
the training split. Both are scored (macro mIoU) on the test blocks of the training area
and on the whole L2A scene of the other area.
"""

from __future__ import annotations

import argparse

import numpy as np

from common import ROOT
from lc.config import load_config
from lc.learning.contract import ModelContract
from lc.learning.datamodule import LandCoverData
from lc.learning.inputs import Normalisation, model_input
from lc.learning.scenes import load_scene
from lc.mapping.accuracy import ConfusionAccumulator
from lc.mapping.predict import predict_scene
from lc.metrics import metrics_from_confusion
from lc.tracking.models import load_model
from lc.worldcover import index_to_code_lut


def chip_windows(data: LandCoverData, split: str):
    """(scene, raw image, labels, labelled-and-valid mask) of each chip of a split."""
    c = data.cfg.chip_size
    for chip in data.split.chips[split]:
        scene = data.scenes[chip.scene]
        raw = np.asarray(scene.image[chip.row : chip.row + c, chip.col : chip.col + c])
        labels = np.asarray(scene.labels[chip.row : chip.row + c, chip.col : chip.col + c])
        yield scene, raw, labels, (labels > 0) & (raw > 0).all(axis=-1)


def pixels(data: LandCoverData, split: str, harmonisation: str, norm: Normalisation, limit: int, seed: int):
    """(features, codes) of labelled pixels of a split's chips."""
    xs, ys = [], []
    for scene, raw, labels, ok in chip_windows(data, split):
        xs.append(model_input(raw, scene.bands, scene.stats, harmonisation, norm)[ok])
        ys.append(labels[ok])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if limit >= len(x):
        return x, y
    keep = np.random.default_rng(seed).permutation(len(x))[:limit]
    return x[keep], y[keep]


def unet_on_chips(model, data: LandCoverData, split: str, terms: ModelContract) -> np.ndarray:
    """U-Net classes of the labelled pixels of a split's chips, in the order of `pixels`."""
    import torch

    out = []
    lut = index_to_code_lut(terms.codes)
    for scene, raw, _, ok in chip_windows(data, split):
        x = model_input(raw, scene.bands, scene.stats, terms.harmonisation, terms.normalisation).transpose(2, 0, 1)
        with torch.inference_mode():
            classes = model(torch.from_numpy(x[None])).argmax(1)[0].numpy()
        out.append(lut[classes][ok])
    return np.concatenate(out)


def miou(truth: np.ndarray, pred: np.ndarray, codes: list[int]) -> float:
    acc = ConfusionAccumulator(sorted(set(codes) | set(np.unique(truth[truth > 0]).tolist())))
    acc.update(truth.astype(np.uint8), pred.astype(np.uint8))
    return metrics_from_confusion(acc.matrix, acc.codes)["miou"]


def main() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models:/landcover/Production")
    parser.add_argument("--config", default=str(ROOT / "experiments" / "demo.yaml"))
    parser.add_argument("--other-area", default=str(ROOT / "data" / "demo" / "scenes" / "thrace_L2A"))
    parser.add_argument("--pixels", type=int, default=300_000)
    args = parser.parse_args()
    model, terms = load_model(args.model)
    cfg = load_config(args.config, [f"data.harmonisation={terms.harmonisation}"])
    data = LandCoverData(cfg.data)
    data.setup()
    x, y = pixels(data, "train", terms.harmonisation, terms.normalisation, args.pixels, 0)
    gbm = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, early_stopping=True, random_state=0).fit(x, y)

    xt, yt = pixels(data, "test", terms.harmonisation, terms.normalisation, 10**9, 0)
    unet_test = unet_on_chips(model, data, "test", terms)
    rows = [("training area, test blocks (pixels of test chips)", miou(yt, gbm.predict(xt), terms.codes),
             miou(yt, unet_test, terms.codes))]

    scene = load_scene(args.other_area)
    raw, labels = np.asarray(scene.image), np.asarray(scene.labels)
    valid = (labels > 0) & (raw > 0).all(axis=-1)
    features = model_input(raw, scene.bands, scene.stats, terms.harmonisation, terms.normalisation)
    gbm_map = np.zeros_like(labels)
    gbm_map[valid] = gbm.predict(features[valid])
    unet_map_path = ROOT / "data" / "bench" / "baseline-unet.tif"
    unet_map_path.parent.mkdir(parents=True, exist_ok=True)
    predict_scene(model, terms, scene.path, unet_map_path, overwrite=True)
    import rasterio

    unet_map = rasterio.open(unet_map_path).read(1)
    unet_map[~valid] = 0
    rows.append(("other area (L2A), whole scene", miou(labels, gbm_map, terms.codes), miou(labels, unet_map, terms.codes)))
    print(f"per-pixel gradient boosting ({len(x)} training pixels) vs U-Net {args.model}, harmonisation {terms.harmonisation}")
    print(f"{'evaluated on':>52} {'GBM mIoU':>9} {'U-Net mIoU':>11}")
    for name, g, u in rows:
        print(f"{name:>52} {g:9.3f} {u:11.3f}")


if __name__ == "__main__":
    main()
