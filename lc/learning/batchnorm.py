"""BatchNorm statistics recomputed for prediction ("precise BatchNorm").

Training normalises each BatchNorm layer's input with the statistics of its batch of 64 px chips and
keeps an exponential average of them for evaluation. After a few hundred steps that average follows
the last dozen batches of still-moving weights, of chips harmonised with random windows' statistics
(``data.window_statistics``), which prediction never uses, and of chips a sixteenth of a prediction
tile: deep in the U-Net a 64 px chip is 2 x 2 px, mostly border. The trained model's statistics are
recomputed instead over windows of the training scenes as prediction sees them: tiles of its size,
harmonised with their whole scene's statistics, in its batches. Only imagery is used, as the scene
statistics of the harmonisation are, never labels.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that track statistics and learn (a frozen encoder keeps its own)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and (m.weight is None or m.weight.requires_grad)]


def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set the running statistics of ``model``'s trainable BatchNorm layers to the mean and variance of
    their inputs over every pixel of ``batches``, each layer normalising with its batch's statistics as
    in training; nothing else changes. Returns the number of batches."""
    layers = trainable_batchnorms(model)
    sums = {m: torch.zeros(3, m.num_features, dtype=torch.float64) for m in layers}  # n, sum, sum of squares

    def accumulate(layer: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).reshape(layer.num_features, -1)
        sums[layer] += torch.stack([torch.full_like(x[:, 0], x.shape[1]), x.sum(1), (x * x).sum(1)]).cpu()

    modes = [m.training for m in layers]
    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    n = 0
    try:
        for m in layers:
            m.train()
        with torch.no_grad():
            for x in batches:
                model(x)
                n += 1
    finally:
        for hook in hooks:
            hook.remove()
        for m, training in zip(layers, modes):
            m.train(training)
    for m, (count, total, squares) in sums.items():
        if count[0] > 1:
            mean = total / count
            m.running_mean.copy_(mean)
            m.running_var.copy_((squares - count * mean**2) / (count - 1))
    return n
