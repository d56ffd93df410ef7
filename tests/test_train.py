"""A real (short) training run on tiny scenes, tracked in a real MLflow store."""

from __future__ import annotations

import json

import lightning as L
import mlflow
import numpy as np
import pytest
import torch

from lc.config import ModelConfig, TrainConfig
from lc.learning.averaging import ema_decay
from lc.learning.batchnorm import recalibrate_batchnorm
from lc.learning.datamodule import LandCoverData
from lc.learning.inputs import IGNORE, model_input
from lc.learning.losses import build_loss
from lc.learning.module import LandCoverModule
from lc.tracking.models import load_model
from lc.tracking.train import evaluator_for, train, trainer_for
from tests.conftest import tiny_config
from tests.helpers import mlflow_store_in


@pytest.fixture(scope="module")
def run(small_scenes, tmp_path_factory):
    with mlflow_store_in(tmp_path_factory.mktemp("mlflow")):
        cfg = tiny_config(small_scenes, data__val_scenes=[str(small_scenes["attica_L2A"])])  # a validation area
        counter = ValidationCounter()
        first, second = train(cfg, callbacks=[counter]), train(cfg, log_model=False)
        first.validations, first.deterministic_algorithms = counter.calls, counter.deterministic_algorithms
        yield cfg, first, second


class ValidationCounter(L.Callback):
    """Counts the validations a caller's callbacks see (a pruner reports at each)."""

    def __init__(self) -> None:
        self.calls = 0
        self.deterministic_algorithms: bool | None = None

    def on_train_start(self, trainer, module) -> None:
        self.deterministic_algorithms = torch.are_deterministic_algorithms_enabled()

    def on_validation_end(self, trainer, module) -> None:
        self.calls += 1


def test_run_holds_config_curves_figures_and_split(run):
    cfg, result, _ = run
    client = mlflow.MlflowClient()
    record = client.get_run(result.run_id)
    assert record.data.params["train.lr"] == "0.003" and record.data.params["model.encoder"] == "resnet18"
    kind = mlflow.get_experiment(record.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"  # MLflow's UI then opens the experiment on its runs
    assert record.data.tags["git_commit"] and record.data.tags["scenes"] == "epirus_L1C,thessaly_L1C"
    history = client.get_metric_history(result.run_id, "val_miou")
    assert [m.step for m in history] == [0, 1]
    assert [m.step for m in client.get_metric_history(result.run_id, "train_miou")] == [0, 1]
    assert [m.step for m in client.get_metric_history(result.run_id, "val_area_miou")] == [0, 1]
    assert record.data.metrics["best_val_area_miou"] == result.val_area_miou
    assert result.validations == 2  # the final evaluation of the best checkpoint is not reported to callers
    # PyTorch's strict determinism stops a CUDA fit at the 2-D cross-entropy (nll_loss2d has no
    # deterministic kernel) and sends torchmetrics' confusion matrix to a slow fallback
    assert result.deterministic_algorithms is False
    artifacts = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for a in client.list_artifacts(result.run_id, "figures")
    }
    for name in ("config.yaml", "split.json", "normalisation.json", "contract.json", "metrics_val.json",
                 "metrics_test.json", "figures/learning_curves.png", "figures/confusion_val.png",
                 "figures/confusion_val.csv", "figures/confusion_test.png", "figures/confusion_test.csv"):
        assert name in artifacts, name
    split = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/split.json"))
    assert set(split["class_pixels"]) == {"train", "val", "test"} and split["chips"]["train"] > 0


def test_the_logged_model_is_the_trained_one(run):
    """Reloaded from its artifact, the network scores exactly the validation the run recorded."""
    cfg, result, _ = run
    model, contract = load_model(result.model_uri)
    assert contract.bands[10] == "B10" and contract.harmonisation == cfg.data.harmonisation
    assert list(contract.codes) == sorted(contract.codes)
    assert all(c.colour.startswith("#") for c in contract.classes)
    data = LandCoverData(cfg.data)
    data.setup()
    assert contract.normalisation == data.norm
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    module.model = model.to(memory_format=module.memory_format)
    evaluator_for(cfg).validate(module, datamodule=data, verbose=False)
    assert module.results["val"]["confusion_matrix"] == result.val["confusion_matrix"]
    assert module.results["val"]["miou"] == result.val["miou"]


def _labelled(dataset) -> int:
    return sum(int((dataset[i][1] != IGNORE).sum()) for i in range(len(dataset)))


def test_validation_scores_the_area_alone_and_with_the_blocks(run):
    cfg, result, _ = run
    data = LandCoverData(cfg.data)
    data.setup()
    model, _ = load_model(result.model_uri)
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    module.model = model.to(memory_format=module.memory_format)
    evaluator_for(cfg).validate(module, datamodule=data, verbose=False)
    area, blocks = _labelled(data.area_dataset()), _labelled(data.dataset("val", twins=True))
    assert area > 0 and blocks > 0
    assert np.sum(module.results["val_area"]["confusion_matrix"]) == area
    assert np.sum(module.results["val"]["confusion_matrix"]) == area + blocks
    assert module.results["val_area"]["miou"] == pytest.approx(result.val_area_miou)


def test_same_config_and_seed_give_the_same_metrics(run):
    _, first, second = run
    assert first.val["miou"] == second.val["miou"]
    assert first.test["confusion_matrix"] == second.test["confusion_matrix"]


def test_metrics_equal_a_hand_computed_confusion_matrix():
    module = LandCoverModule(ModelConfig(encoder="resnet18"), TrainConfig(), [10, 30, 80], [1.0, 1.0, 1.0])
    target = torch.tensor([[0, 0, 1, 1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])
    module.confusion["val_cm"].update(pred, target)
    module.log_dict = lambda *a, **k: None
    module._epoch_end("val")
    m = module.results["val"]
    # reference rows: tree [1, 1, 0], grass [0, 2, 0], water [0, 0, 1]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert m["overall_accuracy"] == pytest.approx(4 / 5)
    assert m["per_class"]["10"]["iou"] == pytest.approx(1 / 2)
    assert m["per_class"]["30"]["iou"] == pytest.approx(2 / 3)
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    # kappa: p_o = 0.8, p_e = (2*1 + 2*3 + 1*1) / 25 = 0.36
    assert m["kappa"] == pytest.approx((0.8 - 0.36) / (1 - 0.36))


@pytest.mark.parametrize("name", ["ce", "wce", "dice", "focal", "ce+dice", "lovasz"])
def test_losses_ignore_nodata(name):
    torch.manual_seed(0)
    loss = build_loss(name, [0.5, 1.0, 2.0])
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :4] = IGNORE
    changed = logits.clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    assert torch.isfinite(loss(logits, target))
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), rel=1e-5)


@pytest.mark.parametrize(("flags", "expected"), [("fpu avx512f avx512_bf16 avx512bw", "bf16-mixed"),
                                                 ("fpu avx512f amx_bf16 amx_tile", "bf16-mixed"),
                                                 ("fpu avx2 avx512f avx512bw", "32-true")])
def test_auto_precision_follows_the_cpu_flags(flags, expected, tmp_path, monkeypatch):
    from lc.learning import hardware

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(hardware, "CPU_FLAGS", tmp_path / "cpuinfo")
    hardware.cpu_has_native_bf16.cache_clear()
    try:
        assert hardware.resolve_precision("auto", "cpu") == expected
        assert hardware.resolve_precision("32-true", "cpu") == "32-true"
        # prediction follows the same flags: bf16 autocast where native, else float32
        cpu = torch.device("cpu")
        assert hardware.inference_dtype("auto", cpu) == (torch.bfloat16 if expected == "bf16-mixed" else None)
        assert hardware.inference_dtype("fp32", cpu) is None and hardware.inference_dtype("bf16", cpu) == torch.bfloat16
    finally:
        hardware.cpu_has_native_bf16.cache_clear()


def test_onecycle_warms_up_then_anneals_per_step(small_scenes):
    cfg = tiny_config(small_scenes, train__scheduler="onecycle", train__max_epochs=1, train__lr=0.01,
                      train__warmup=0.3, data__samples_per_epoch=64)
    data = LandCoverData(cfg.data)
    data.setup()
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False)
    rates = []

    class Rates(L.Callback):
        def on_train_batch_start(self, trainer, *_):
            rates.append(trainer.optimizers[0].param_groups[1]["lr"])

    trainer.callbacks.append(Rates())
    trainer.fit(module, datamodule=data)
    peak = int(np.argmax(rates))
    assert len(rates) == len(data.train_dataloader()) >= 4
    assert 0 < peak < len(rates) - 1 and max(rates) == pytest.approx(0.01, rel=0.05)
    assert rates[0] < 0.01 / 5 and rates[-1] < 0.01 / 5  # warm-up from, and annealing to, a small rate


def test_the_optimiser_is_one_fused_adamw_step_equal_to_the_loop():
    """`lc train` steps AdamW in one fused kernel (5 against 38 ms a step on 2 cores): the same update as
    PyTorch's loop over the parameters, with the encoder at its own rate."""
    module = LandCoverModule(ModelConfig(encoder="resnet18", encoder_lr_factor=0.1), TrainConfig(lr=0.01),
                             [10, 30, 80], [1.0] * 3)
    fused = module.build_optimizer()
    assert all(g["fused"] for g in fused.param_groups)
    assert [g["lr"] for g in fused.param_groups] == pytest.approx([0.001, 0.01])
    params = list(module.parameters())
    copies = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    copy_of = {id(p): c for p, c in zip(params, copies)}
    looped = torch.optim.AdamW([{**g, "params": [copy_of[id(p)] for p in g["params"]], "fused": None}
                                for g in fused.param_groups], foreach=False)
    torch.manual_seed(0)
    for _ in range(3):
        for p, c in zip(params, copies):
            p.grad = torch.randn_like(p)
            c.grad = p.grad.clone()
        fused.step()
        looped.step()
    assert all(torch.allclose(p, c, atol=1e-6) for p, c in zip(params, copies))
    assert all(not torch.equal(p, s) for p, s in zip(params, start))  # every parameter was updated


def test_a_frozen_encoder_keeps_its_batchnorm_statistics(small_scenes):
    cfg = tiny_config(small_scenes, model__freeze_encoder_epochs=1, train__max_epochs=1)
    data = LandCoverData(cfg.data)
    data.setup()
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in module.model.decoder.state_dict().items()}
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
              limit_val_batches=0, enable_model_summary=False).fit(module, datamodule=data)
    after = module.model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k or "weight" in k)
    assert any(not torch.equal(decoder[k], v) for k, v in module.model.decoder.state_dict().items())


def _batchnorm_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def test_the_logged_model_holds_the_batchnorm_statistics_of_prediction_tiles(run):
    """The running averages of training are replaced by the statistics of windows of the training
    scenes of prediction's tile size, harmonised with their whole scene's statistics."""
    cfg, result, _ = run
    model, _ = load_model(result.model_uri)
    logged = _batchnorm_statistics(model)
    data = LandCoverData(cfg.data)
    data.setup()
    windows = data.calibration_dataset(cfg.predict.chip_size, cfg.train.batchnorm_windows)
    size = min(min(s.height, s.width) for s in data.scenes) // 32 * 32  # the tiny scenes are smaller than a tile
    assert 0 < len(windows) <= cfg.train.batchnorm_windows and windows[0][0].shape == (13, size, size)
    first = windows.chips[0]
    scene = data.scenes[first.scene]
    raw = np.asarray(scene.image[first.row : first.row + size, first.col : first.col + size])
    expected = model_input(raw, scene.bands, scene.stats, cfg.data.harmonisation, data.norm).transpose(2, 0, 1)
    assert np.array_equal(windows[0][0].numpy(), expected)  # whole-scene statistics, not augmented
    recalibrate_batchnorm(model, (x for x, _ in torch.utils.data.DataLoader(windows, cfg.predict.batch_size)))
    for k, v in _batchnorm_statistics(model).items():
        assert torch.allclose(v.float(), logged[k].float(), rtol=1e-4, atol=1e-5), k
    assert mlflow.MlflowClient().get_run(result.run_id).data.metrics["batchnorm_windows"] == len(windows)


def test_recalibration_takes_every_pixels_statistics_and_spares_frozen_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.BatchNorm2d(2)).eval()
    model[1].requires_grad_(False)  # frozen: keeps its statistics
    frozen = _batchnorm_statistics(model[1])
    batches = [torch.randn(4, 2, 5, 5) * (i + 1) + 3 * i for i in range(3)]  # batches that differ
    assert recalibrate_batchnorm(model, iter(batches)) == 3
    pixels = torch.cat(batches).transpose(0, 1).reshape(2, -1)
    assert torch.allclose(model[0].running_mean, pixels.mean(1), atol=1e-5)
    assert torch.allclose(model[0].running_var, pixels.var(1), rtol=1e-5)  # within and between the batches
    assert model[0].momentum == 0.1 and not model[0].training and not model[1].training
    assert all(torch.equal(v, frozen[k]) for k, v in _batchnorm_statistics(model[1]).items())


def test_validation_and_the_best_checkpoint_hold_the_weight_average(small_scenes, tmp_path):
    """With ``train.weight_average``, `lc train`'s trainer validates and checkpoints an exponential moving
    average of the weights of every step, and trains on with the raw weights."""
    cfg = tiny_config(small_scenes, train__weight_average=0.9, train__max_epochs=3, train__patience=3,
                      data__samples_per_epoch=32)
    data = LandCoverData(cfg.data)
    data.setup()
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    head = module.model.segmentation_head[0].weight
    steps, validated = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, *_):
            steps.append(head.detach().clone())

        def on_validation_epoch_start(self, *_):
            validated.append(head.detach().clone())

    trainer = trainer_for(cfg, [Record()], tmp_path)
    trainer.fit(module, datamodule=data)
    expected, average = [], steps[0]
    for n, raw in enumerate(steps[1:], start=1):
        average = average * ema_decay(0.9, n) + raw * (1 - ema_decay(0.9, n))
        expected.append(average)
    per_epoch = len(steps) // cfg.train.max_epochs
    assert ema_decay(0.9, 0) == 0.1 and ema_decay(0.9, 1000) == 0.9 and per_epoch >= 3
    for epoch, weights in enumerate(validated):
        assert torch.allclose(weights, expected[(epoch + 1) * per_epoch - 2], atol=1e-6), epoch
        assert not torch.allclose(weights, steps[(epoch + 1) * per_epoch - 1])
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    assert any(torch.equal(best["model.segmentation_head.0.weight"], v) for v in validated)  # an average
    assert torch.equal(head, steps[-1])  # training's own weights, after the last epoch
