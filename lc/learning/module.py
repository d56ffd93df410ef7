"""LightningModule: the U-Net, its loss, optimiser and scheduler, and torchmetrics.

Metrics accumulate a torchmetrics confusion matrix per stage (synchronised across devices
under DDP) and are derived from it with ``lc.metrics.metrics_from_confusion``, the same
code that evaluates maps: overall accuracy, macro mIoU, per-class IoU, macro F1, kappa.
No-data pixels (``IGNORE``) are excluded from the loss and from every metric. Validation areas
(``data.val_scenes``, a second validation loader) count in val and are also scored alone (``val_area``).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lc.config import ModelConfig, TrainConfig
from lc.learning.hardware import resolve_precision, uses_cuda
from lc.learning.inputs import IGNORE
from lc.learning.losses import build_loss
from lc.learning.unet import build_unet, matmul_small_maps
from lc.metrics import metrics_from_confusion

STAGES = ("train", "val", "test")
AREA = "val_area"  # the validation areas alone


class LandCoverModule(L.LightningModule):
    """U-Net segmentation of WorldCover classes ``codes`` from 13-band chips."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, codes: Sequence[int],
                 class_weights: Sequence[float]):
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.codes = list(codes)
        self.model = build_unet(self.model_cfg.encoder, len(codes), self.model_cfg.weights,
                                self.model_cfg.decoder_channels)
        self.memory_format = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        float32_cpu = not uses_cuda(train_cfg.accelerator) and resolve_precision(train_cfg.precision, "cpu") == "32-true"
        if float32_cpu:  # oneDNN is slow on the last stage's 2x2 maps (lc.learning.unet.SmallMapConv2d)
            matmul_small_maps(self.model)
        self.loss = build_loss(self.train_cfg.loss, class_weights)
        self.confusion = nn.ModuleDict(
            {f"{s}_cm": MulticlassConfusionMatrix(len(codes), ignore_index=IGNORE) for s in (*STAGES, AREA)}
        )
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in (*STAGES, AREA)})  # per chip, over an epoch
        self.results: dict[str, dict] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, area: bool = False) -> torch.Tensor:
        x, y = batch
        logits = self(x.contiguous(memory_format=self.memory_format)).float()
        loss = self.loss(logits, y)
        for name in (stage, AREA) if area else (stage,):
            self.confusion[f"{name}_cm"].update(logits.argmax(1), y)
            self.losses[f"{name}_loss"].update(loss.detach(), weight=len(x))
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _, dataloader_idx: int = 0):
        self._step(batch, "val", area=dataloader_idx == 1)

    def test_step(self, batch, _):
        self._step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        cm = self.confusion[f"{stage}_cm"].compute().cpu().numpy()
        self.confusion[f"{stage}_cm"].reset()
        self.log(f"{stage}_loss", self.losses[f"{stage}_loss"].compute(), prog_bar=stage in ("train", "val"))
        self.losses[f"{stage}_loss"].reset()
        metrics = metrics_from_confusion(cm, self.codes)
        self.results[stage] = metrics
        scalars = {
            f"{stage}_miou": metrics["miou"],
            f"{stage}_oa": metrics["overall_accuracy"],
            f"{stage}_f1": metrics["macro_f1"],
            f"{stage}_kappa": metrics["kappa"],
        }
        scalars |= {f"{stage}_iou_{code}": m["iou"] for code, m in metrics["per_class"].items() if m["iou"] is not None}
        self.log_dict({k: float(v) for k, v in scalars.items() if v is not None}, prog_bar=False)

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        if self.confusion[f"{AREA}_cm"].confmat.sum() > 0:  # a second loader scored validation areas
            self._epoch_end(AREA)
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def on_train_epoch_start(self) -> None:
        """A frozen encoder keeps its weights and its BatchNorm statistics (eval mode)."""
        frozen = self.current_epoch < self.model_cfg.freeze_encoder_epochs
        for p in self.model.encoder.parameters():
            p.requires_grad_(not frozen)
        self.model.encoder.train(not frozen)

    def build_optimizer(self) -> torch.optim.AdamW:
        """AdamW, the encoder at ``encoder_lr_factor`` times the rate. Fused: one kernel for all the
        parameters instead of a loop over them (on 2 CPU cores 5 ms against 38 ms a step for ResNet-18)."""
        cfg = self.train_cfg
        encoder = list(self.model.encoder.parameters())
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if id(p) not in encoder_ids]
        return torch.optim.AdamW(
            [{"params": encoder, "lr": cfg.lr * self.model_cfg.encoder_lr_factor}, {"params": rest, "lr": cfg.lr}],
            weight_decay=cfg.weight_decay, fused=True,
        )

    def configure_optimizers(self):
        cfg = self.train_cfg
        optimizer = self.build_optimizer()
        if cfg.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.max_epochs, 1))
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        if cfg.scheduler == "onecycle":  # sized to the fit's optimiser steps
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], pct_start=cfg.warmup,
                total_steps=max(int(self.trainer.estimated_stepping_batches), 1))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_miou"}}
