"""One training run, tracked in MLflow: ``train(cfg)`` is what ``lc train`` runs.

The run holds the resolved config (params + YAML), the split (chips and class balance per
split), the normalisation statistics, per-epoch metrics, learning curves, confusion matrices
and per-class metrics on val and test, tags (git commit, scenes), and the model logged with
its preprocessing contract.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import mlflow
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from mlflow.exceptions import MlflowException

from lc.config import ExperimentConfig, resolved_yaml
from lc.figures import plot_learning_curves
from lc.learning.averaging import WeightAverage
from lc.learning.batchnorm import recalibrate_batchnorm
from lc.learning.contract import ModelContract
from lc.learning.datamodule import LandCoverData
from lc.learning.hardware import resolve_precision
from lc.learning.module import LandCoverModule
from lc.learning.unet import uses_reflectance_input
from lc.tracking import models, store

log = logging.getLogger(__name__)
MONITOR = "val_miou"


class EpochHistory(Callback):
    """Collects each epoch's metrics and logs them to the active MLflow run (step = epoch).

    Lightning calls callbacks' epoch-end hooks before the module's, which computes the
    training metrics; so an epoch is recorded when the next one starts, and the last one
    when fitting ends.
    """

    def __init__(self) -> None:
        self.history: list[dict] = []

    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        if not trainer.is_global_zero or epoch < 0 or any(h["epoch"] == epoch for h in self.history):
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train_", "val_"))}
        mlflow.log_metrics(metrics, step=epoch)
        self.history.append({"epoch": epoch, **metrics})

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)


@dataclass
class TrainResult:
    run_id: str
    model_uri: str | None
    val: dict
    test: dict
    epochs: int
    seconds: float
    val_area_miou: float | None = None  # the validation areas alone (data.val_scenes)


def _log_split(data: LandCoverData) -> None:
    summary = data.split.summary()
    mlflow.log_dict(summary, "split.json")
    mlflow.log_dict(data.norm.model_dump(mode="json"), "normalisation.json")
    for split, pixels in summary["class_pixels"].items():
        total = sum(pixels.values()) or 1
        mlflow.log_metrics({f"class_share_{split}_{code}": n / total for code, n in pixels.items()})
    mlflow.log_metrics({f"chips_{s}": n for s, n in summary["chips"].items()})
    if data.split.missing_in_val:
        mlflow.set_tag("missing_in_val", ",".join(map(str, data.split.missing_in_val)))
        log.warning("classes %s are in training but not in validation", data.split.missing_in_val)


def trainer_for(cfg: ExperimentConfig, callbacks: Sequence[Callback], checkpoint_dir: Path) -> L.Trainer:
    """A Lightning trainer; accelerator, devices, precision and strategy come from the config.

    No ``deterministic`` flag: on the CPU the kernels are deterministic anyway (seeded runs give
    the same metrics, a test checks it), and the flag would push torchmetrics' confusion matrix
    onto a slow fallback; on a GPU it would stop the 2-D cross-entropy, which has no
    deterministic CUDA kernel. GPU runs are seeded but not bit-identical.
    """
    t = cfg.train
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices,
        precision=resolve_precision(t.precision, t.accelerator), strategy=t.strategy, logger=False,
        num_sanity_val_steps=0,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False,
        callbacks=[
            EarlyStopping(MONITOR, mode="max", patience=t.patience),
            ModelCheckpoint(dirpath=checkpoint_dir, monitor=MONITOR, mode="max", save_top_k=1, filename="best",
                            save_weights_only=True),
            *([WeightAverage(t.weight_average)] if t.weight_average else []),
            *callbacks,
        ],
    )


def evaluator_for(cfg: ExperimentConfig) -> L.Trainer:
    """A trainer for the final validation and test: one device, and none of the fit's
    callbacks (a pruner must not judge a trial again on its best checkpoint)."""
    t = cfg.train
    return L.Trainer(accelerator=t.accelerator, devices=1, precision=resolve_precision(t.precision, t.accelerator),
                     logger=False,
                     enable_checkpointing=False, enable_model_summary=False)


def train(
    cfg: ExperimentConfig,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
    log_model: bool | Callable[[float], bool] = True,
    on_run_start: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train, validate and test one configuration inside an MLflow run.

    ``log_model`` may decide from the best val mIoU (a study logs only its best models);
    ``on_run_start`` hears the run id as soon as the run exists.
    A run that raises ends as FAILED with the error as a tag; a pruned one
    (``optuna.TrialPruned``) or an interrupted one ends as KILLED.
    """
    L.seed_everything(cfg.train.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    store.experiment_id(cfg.mlflow_experiment)
    mlflow.set_experiment(cfg.mlflow_experiment)
    started = time.perf_counter()
    with mlflow.start_run(run_name=run_name or cfg.name, parent_run_id=parent_run_id, nested=parent_run_id is not None) as run:
        try:  # from the start: a SIGTERM while the run is being described still ends it KILLED, not FAILED
            if on_run_start is not None:
                on_run_start(run.info.run_id)
            mlflow.set_tags({"git_commit": store.git_commit(), "experiment": cfg.name,
                             "scenes": ",".join(Path(p).name for p in cfg.data.scenes),
                             "split_key": store.split_key(cfg.data),
                             "precision": resolve_precision(cfg.train.precision, cfg.train.accelerator), **(tags or {})})
            mlflow.log_params(store.flatten(cfg.model_dump(mode="json")))
            mlflow.log_text(resolved_yaml(cfg), "config.yaml")
            result = _fit_and_log(cfg, run.info.run_id, callbacks, log_model)
        except BaseException as exc:
            _end_unsuccessfully(run.info.run_id, exc)
            raise
        result.seconds = time.perf_counter() - started
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.set_tag("state", "COMPLETE")
    return result


def _end_unsuccessfully(run_id: str, exc: BaseException) -> None:
    """Tag and close the active run: PRUNED/INTERRUPTED as KILLED, errors as FAILED."""
    import optuna

    if isinstance(exc, optuna.TrialPruned):
        tags, status = {"state": "PRUNED"}, "KILLED"
    elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
        tags, status = {"state": "INTERRUPTED"}, "KILLED"
    else:
        tags, status = {"state": "FAILED", "error": f"{type(exc).__name__}: {exc}"[:4000]}, "FAILED"
    store.end_run(run_id, status, tags)
    with contextlib.suppress(MlflowException):  # recorded above; this only leaves the active run
        mlflow.end_run(status)


def _recalibrate_for_prediction(module: LandCoverModule, data: LandCoverData, cfg: ExperimentConfig) -> None:
    """The BatchNorm statistics of prediction's tiles (``lc.learning.batchnorm``), in float32 on the CPU."""
    windows = data.calibration_dataset(cfg.predict.chip_size, cfg.train.batchnorm_windows)
    if not len(windows):
        log.warning("no window of the training scenes has enough data: BatchNorm keeps its running averages")
        return
    loader = torch.utils.data.DataLoader(windows, batch_size=cfg.predict.batch_size)
    module.cpu()
    seconds = time.perf_counter()
    recalibrate_batchnorm(module.model, (x for x, _ in loader))
    mlflow.log_metrics({"batchnorm_windows": len(windows), "batchnorm_seconds": time.perf_counter() - seconds})


def _fit_and_log(cfg: ExperimentConfig, run_id: str, callbacks: Sequence[Callback],
                 log_model: bool | Callable[[float], bool]) -> TrainResult:
    data = LandCoverData(cfg.data, reflectance_input=uses_reflectance_input(cfg.model.weights, cfg.data.harmonisation))
    data.setup()
    _log_split(data)
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    history = EpochHistory()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trainer = trainer_for(cfg, [history, *callbacks], folder / "checkpoints")
        fit_started = time.perf_counter()
        trainer.fit(module, datamodule=data)
        mlflow.log_metrics({"fit_seconds": time.perf_counter() - fit_started, "optimizer_steps": trainer.global_step})
        best = trainer.checkpoint_callback.best_model_path
        if best:  # the weights of the best epoch (a weights-only checkpoint: no code is unpickled)
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        if cfg.train.batchnorm_windows:
            _recalibrate_for_prediction(module, data, cfg)
        evaluator = evaluator_for(cfg)
        evaluator.validate(module, datamodule=data, verbose=False)
        evaluator.test(module, datamodule=data, verbose=False)
        val, test = module.results["val"], module.results["test"]
        mlflow.log_metrics({"best_val_miou": val["miou"], "test_miou": test["miou"], "test_oa": test["overall_accuracy"],
                            "test_kappa": test["kappa"], "test_f1": test["macro_f1"], "epochs": trainer.current_epoch})
        area = module.results.get("val_area", {}).get("miou")  # the validation areas (data.val_scenes) alone
        if area is not None:
            mlflow.log_metric("best_val_area_miou", area)
        plot_learning_curves(history.history, folder / "learning_curves.png", title=cfg.name)
        mlflow.log_artifact(str(folder / "learning_curves.png"), "figures")
        mlflow.log_artifact(str(folder / "learning_curves.csv"), "figures")
        for stage, metrics in (("val", val), ("test", test)):
            store.log_evaluation(stage, metrics, data.codes, folder, f"{stage} confusion matrix")
    wanted = log_model(val["miou"]) if callable(log_model) else log_model
    model_uri = models.log_model(module.model, ModelContract.of_training(cfg, data, val["miou"])) if wanted else None
    return TrainResult(run_id, model_uri, val, test, trainer.current_epoch, 0.0, area)
