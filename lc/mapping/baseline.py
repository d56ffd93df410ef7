"""The per-pixel baseline: gradient boosting on the U-Net's own splits, pixels and harmonisation.

``lc baseline CONFIG`` fits scikit-learn's ``HistGradientBoostingClassifier`` on pixels of the
training chips, as the U-Net sees them (harmonised, normalised; the same no-data and border
buffer), without B10, which L2A products lack. It is scored on the validation chips (with their
twins) and the test chips with the U-Net's metrics, and, where the experiment has an area to
map, on that whole scene against its ground truth, as ``lc predict`` scores a map. Everything
goes to one MLflow run (tag ``role=baseline``) in the experiment's MLflow experiment, so every
comparison of a U-Net with the baseline is on the same splits and the same pixels.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import rasterio
from rasterio.windows import Window
from sklearn.ensemble import HistGradientBoostingClassifier

from lc.config import ExperimentConfig, resolved_yaml
from lc.learning.datamodule import ChipDataset, LandCoverData
from lc.learning.inputs import IGNORE, model_input
from lc.learning.scenes import load_scene
from lc.mapping.accuracy import evaluate_rasters
from lc.metrics import metrics_from_confusion
from lc.raster import Grid, open_classmap
from lc.sentinel2.bands import BAND_ID, BAND_NAMES
from lc.tracking import store
from lc.worldcover import index_to_code_lut

log = logging.getLogger(__name__)
FEATURES = [BAND_ID[b] for b in BAND_NAMES if b != "B10"]  # the bands every level has
STRIP_ROWS = 256


@dataclass
class BaselineResult:
    run_id: str
    val: dict
    test: dict
    new_area: dict | None
    seconds: float


def chip_pixels(dataset: ChipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, 12) and class indices (n,) of every labelled pixel of a dataset's chips."""
    xs, ys = [], []
    for i in range(len(dataset)):
        x, y = (t.numpy() for t in dataset[i])
        keep = y != IGNORE
        xs.append(x[FEATURES][:, keep].T)
        ys.append(y[keep])
    return np.concatenate(xs), np.concatenate(ys)


def scores(model: HistGradientBoostingClassifier, dataset: ChipDataset, codes: list[int]) -> dict:
    """The U-Net's metrics (``lc.metrics``) of the model on a dataset's labelled pixels."""
    x, y = chip_pixels(dataset)
    k = len(codes)
    cm = np.bincount(y * k + model.predict(x), minlength=k * k).reshape(k, k)
    return metrics_from_confusion(cm, codes)


def map_scene(model: HistGradientBoostingClassifier, data: LandCoverData, harmonisation: str, scene: Path,
              out: Path) -> Path:
    """Classify every pixel of a scene bundle, strip by strip, into a WorldCover-coded map on its grid."""
    arrays = load_scene(scene)
    lut = index_to_code_lut(data.codes)
    with rasterio.open(scene / "image.tif") as src:
        grid = Grid(src.crs, src.transform, src.height, src.width)
    with open_classmap(out, grid.crs, grid.transform, grid.width, grid.height) as dst:
        for row in range(0, grid.height, STRIP_ROWS):
            raw = np.asarray(arrays.image[row : row + STRIP_ROWS])
            x = model_input(raw, arrays.bands, arrays.stats, harmonisation, data.norm)[..., FEATURES]
            classes = lut[model.predict(x.reshape(-1, len(FEATURES)))].reshape(raw.shape[:2])
            classes[(raw == 0).all(axis=-1)] = 0
            dst.write(classes, 1, window=Window(0, row, grid.width, len(raw)))
    return out


def fit(data: LandCoverData, pixels: int, seed: int) -> HistGradientBoostingClassifier:
    """Gradient boosting on ``pixels`` pixels drawn from the training chips (seeded)."""
    x, y = chip_pixels(data.dataset("train"))
    keep = np.random.default_rng(seed).permutation(len(x))[:pixels]
    log.info("gradient boosting on %d of %d training pixels", len(keep), len(x))
    return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, early_stopping=True,
                                          random_state=seed).fit(x[keep], y[keep])


def run_baseline(cfg: ExperimentConfig, new_area: Path | None, pixels: int = 300_000) -> BaselineResult:
    """Fit, score and log the per-pixel baseline of ``cfg``; ``new_area``: a scene bundle to map too."""
    store.experiment_id(cfg.mlflow_experiment)
    mlflow.set_experiment(cfg.mlflow_experiment)
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"baseline {cfg.name}") as run:
        mlflow.set_tags({"role": "baseline", "experiment": cfg.name, "split_key": store.split_key(cfg.data),
                         "git_commit": store.git_commit(), "model": "HistGradientBoostingClassifier"})
        mlflow.log_params({**store.flatten({"data": cfg.data.model_dump(mode="json")}), "baseline.pixels": pixels,
                           "baseline.features": ",".join(BAND_NAMES[i] for i in FEATURES)})
        mlflow.log_text(resolved_yaml(cfg), "config.yaml")
        data = LandCoverData(cfg.data)
        data.setup()
        model = fit(data, pixels, cfg.data.seed)
        val, test = scores(model, data.validation_dataset(), data.codes), scores(model, data.dataset("test"), data.codes)
        mlflow.log_metrics({"best_val_miou": val["miou"], "test_miou": test["miou"], "test_oa": test["overall_accuracy"],
                            "test_kappa": test["kappa"], "test_f1": test["macro_f1"]})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for stage, metrics in (("val", val), ("test", test)):
                store.log_evaluation(stage, metrics, metrics["class_order"], folder, f"per-pixel baseline, {stage}")
            area = None
            if new_area is not None:
                baseline_map = map_scene(model, data, cfg.data.harmonisation, new_area, folder / "baseline_map.tif")
                area = evaluate_rasters(baseline_map, new_area / "label.tif", folder / "metrics_new_area.json",
                                        model_classes=data.codes)
                mlflow.log_metrics({"new_area_miou": area["miou"], "new_area_oa": area["overall_accuracy"],
                                    "new_area_kappa": area["kappa"]})
                mlflow.set_tag("new_area", new_area.name)
                store.log_evaluation("new_area", area, area["class_order"], folder, "per-pixel baseline, new area")
        seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", seconds)
    return BaselineResult(run.info.run_id, val, test, area, seconds)


def find_baseline(experiment: str, split_key: str, harmonisation: str) -> str | None:
    """The latest finished baseline run on these splits with this harmonisation, if any."""
    store.configure()
    found = mlflow.search_runs(
        experiment_names=[experiment], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.role = 'baseline' and tags.split_key = '{split_key}' and "
                      f"params.`data.harmonisation` = '{harmonisation}' and attributes.status = 'FINISHED'")
    return found[0].info.run_id if found else None
