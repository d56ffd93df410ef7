"""Segmentation losses by name; every one ignores ``IGNORE`` pixels."""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from lc.learning.inputs import IGNORE


class CombinedLoss(nn.Module):
    """Sum of losses (``ce+dice``)."""

    def __init__(self, *losses: nn.Module):
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def build_loss(name: str, class_weights: Sequence[float]) -> nn.Module:
    """The named loss; ``wce`` weights classes by ``class_weights``."""
    weights = torch.tensor(list(class_weights), dtype=torch.float32)
    ce = lambda w=None: nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE)  # noqa: E731
    dice = lambda: smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)  # noqa: E731
    losses = {
        "ce": ce,
        "wce": lambda: ce(weights),
        "dice": dice,
        "focal": lambda: smp.losses.FocalLoss("multiclass", ignore_index=IGNORE),
        "ce+dice": lambda: CombinedLoss(ce(), dice()),
        "lovasz": lambda: smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE),
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(losses)}")
    return losses[name]()
