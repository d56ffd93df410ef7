"""Data loading against what training consumes: loader samples/s over training-step samples/s.

The loader (the config's worker processes: none in the demo, whose chips are made in the training
process, so their time adds to each step's; augmentation on) and the training step (U-Net forward +
backward + `lc train`'s AdamW on the same batch size) are timed apart on the demo scenes. Goal: >= 5,
so data never starves the model, or, made in the training process, costs at most a fifth of a step.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import ROOT
from lc.config import load_config
from lc.learning.datamodule import LandCoverData
from lc.learning.module import LandCoverModule


def loader_rate(data: LandCoverData, batches: int) -> float:
    loader = data.train_dataloader()
    it, seen = iter(loader), 0
    next(it)  # workers started
    start = time.perf_counter()
    for _ in range(batches):
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def step_rate(data: LandCoverData, cfg, steps: int) -> float:
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    optimiser = module.build_optimizer()
    x, y = next(iter(torch.utils.data.DataLoader(data.dataset("train"), batch_size=cfg.data.batch_size)))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = module.loss(module(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "demo.yaml"))
    parser.add_argument("--augmentation", default="radiometric", help="the most expensive policy by default")
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    cfg = load_config(args.config, [f"data.augmentation={args.augmentation}"])
    data = LandCoverData(cfg.data)
    data.setup()
    load = loader_rate(data, args.batches)
    step = step_rate(data, cfg, 8)
    print(f"chips {cfg.data.chip_size}px x 13 bands, batch {cfg.data.batch_size}, {cfg.data.num_workers} workers, "
          f"augmentation {args.augmentation}, encoder {cfg.model.encoder}")
    print(f"loader {load:8.0f} chips/s   training step {step:6.1f} chips/s   ratio {load / step:6.1f}  (goal >= 5)")


if __name__ == "__main__":
    main()
