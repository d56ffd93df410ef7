"""An exponential moving average of the weights, validated and checkpointed in their place.

A few hundred steps of a small batch leave the weights where the last batches pushed them; their
average over the last hundred or so steps lies in a flatter region of the loss, which transfers better
to scenes the model never saw (Izmailov et al. 2018, SWA; Cha et al. 2021, SWAD). The average follows
every optimiser step, with the usual warm-up of its decay so that the random initial weights fade at
once. Validation scores it, and the best checkpoint holds it; training goes on with the raw weights.
"""

from __future__ import annotations

import itertools

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.optim.swa_utils import AveragedModel


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update: ``(1 + n) / (10 + n)`` until that reaches ``decay``."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage(Callback):
    """Keeps an exponential moving average of ``module.model``'s parameters and BatchNorm statistics,
    swapped in from the start of each validation until the next training epoch starts, so across the
    checkpoint that Lightning saves when the training epoch ends."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.average: AveragedModel | None = None
        self._swapped = False

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        def average(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
            if averaged[0].is_floating_point():
                torch._foreach_lerp_(averaged, current, 1 - ema_decay(self.decay, int(updates)))
            else:  # BatchNorm's counts of batches
                torch._foreach_copy_(averaged, current)

        self.average = AveragedModel(module.model, multi_avg_fn=average, use_buffers=True)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
        self.average.update_parameters(module.model)

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.average is not None and not self._swapped:
            self._swap(module)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._swapped:
            self._swap(module)

    def _swap(self, module: L.LightningModule) -> None:
        pairs = zip(itertools.chain(self.average.module.parameters(), self.average.module.buffers()),
                    itertools.chain(module.model.parameters(), module.model.buffers()))
        with torch.no_grad():
            for averaged, current in pairs:
                kept = averaged.detach().clone()
                averaged.copy_(current)
                current.copy_(kept)
        self._swapped = not self._swapped
