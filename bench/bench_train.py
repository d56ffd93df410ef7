"""`lc train` throughput against a bare training loop of the same model and batch.

The bare loop: the config's U-Net, one batch of the demo's training chips, `lc train`'s AdamW and the
config's loss, with the precision and memory layout that `lc train` resolves (bfloat16
autocast and channels-last on a CPU with native bfloat16). `lc train` runs as users run it
(the CLI, in a subprocess, into a scratch MLflow store); its run records the optimiser steps
and the seconds of the fit. Ratio = lc train steps/s over bare-loop steps/s, both measured
here in the same run. Goal: >= 0.8. Also the bare loop with smp's decoder widths (256/128/64/32/16, the
default before `model.decoder_channels` halved them): the speed the narrower decoder buys.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

from common import ROOT
from lc.config import SMP_DECODER_CHANNELS, load_config
from lc.learning.datamodule import LandCoverData
from lc.learning.hardware import resolve_precision
from lc.learning.module import LandCoverModule


def bare_steps_per_second(cfg, steps: int) -> float:
    """Steps/s of a plain PyTorch loop: forward, loss, backward, AdamW, on one fixed batch."""
    data = LandCoverData(cfg.data)
    data.setup()
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    optimiser = module.build_optimizer()
    x, y = next(iter(torch.utils.data.DataLoader(data.dataset("train"), batch_size=cfg.data.batch_size)))
    x = x.contiguous(memory_format=module.memory_format)
    precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        with autocast:
            loss = module.loss(module(x).float(), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return steps / (time.perf_counter() - start)


def lc_train_steps_per_second(config: str, overrides: list[str]) -> tuple[float, dict]:
    """Optimiser steps over fit seconds of a real `lc train` run (CLI, scratch MLflow store)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        subprocess.run([sys.executable, "-m", "lc.cli.main", "train", config, *overrides, "mlflow_experiment=bench"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        run = mlflow.MlflowClient(uri).search_runs([mlflow.MlflowClient(uri).get_experiment_by_name("bench").experiment_id])[0]
    metrics = run.data.metrics
    return metrics["optimizer_steps"] / metrics["fit_seconds"], metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "experiments" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the `lc train` run")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for both")
    args = parser.parse_args()
    overrides = [f"train.max_epochs={args.epochs}", *args.overrides]
    cfg = load_config(args.config, overrides)
    bare = bare_steps_per_second(cfg, 30)
    smp_decoder = bare_steps_per_second(load_config(args.config, [*overrides, f"model.decoder_channels={list(SMP_DECODER_CHANNELS)}"]), 30)
    real, metrics = lc_train_steps_per_second(args.config, overrides)
    print(f"{cfg.model.encoder}, batch {cfg.data.batch_size} x {cfg.data.chip_size}px, "
          f"precision {resolve_precision(cfg.train.precision, cfg.train.accelerator)}, "
          f"channels_last {cfg.train.channels_last}, {cfg.data.num_workers} loader workers")
    print(f"bare loop {bare:.2f} steps/s ({1000 / bare:.0f} ms/step); lc train {real:.2f} steps/s "
          f"({metrics['optimizer_steps']:.0f} steps in {metrics['fit_seconds']:.0f} s of fit); "
          f"ratio {real / bare:.2f} (goal >= 0.8)")
    print(f"bare loop with smp's decoder widths {list(SMP_DECODER_CHANNELS)}: {1000 / smp_decoder:.0f} ms/step; decoder "
          f"{list(cfg.model.decoder_channels)}: {bare / smp_decoder:.2f}x as fast")


if __name__ == "__main__":
    main()
