"""GPU check (run on a machine with CUDA): mixed-precision training and tiled prediction.

1. Lightning trains the U-Net for a few epochs with accelerator=gpu, precision=16-mixed on
   small synthetic scenes; metrics must be finite and the model must learn.
2. Tiled prediction on CUDA with autocast gives the same map as on the CPU (>= 99.5% of
   pixels), and its throughput is printed next to the bare forward pass on the GPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402

from lc.config import ExperimentConfig  # noqa: E402
from lc.learning.contract import ModelContract  # noqa: E402
from lc.learning.datamodule import LandCoverData  # noqa: E402
from lc.learning.module import LandCoverModule  # noqa: E402
from lc.mapping.predict import predict_scene  # noqa: E402
from lc.mapping.tiling import tile_origins  # noqa: E402
from lc.sentinel2.prepare import prepare  # noqa: E402
from lc.synth.products import synthesize  # noqa: E402


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    work = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    manifest = synthesize(work / "raw", size=384)
    scenes = {p["scene"]: prepare(work / "raw" / p["path"], work / p["scene"], [work / "raw" / w for w in p["worldcover"]])
              for p in manifest["products"]}
    print(f"synth + prepare {time.perf_counter() - t:.1f} s")
    cfg = ExperimentConfig.model_validate({
        "name": "gpu", "raw_dir": "x", "scenes_dir": "x",
        "data": {"scenes": [str(scenes["epirus_L1C"]), str(scenes["thessaly_L1C"])], "chip_size": 64, "block_size": 128,
                 "batch_size": 8, "num_workers": 4, "augmentation": "flips"},
        "train": {"max_epochs": 40, "lr": 0.002, "accelerator": "gpu", "precision": "16-mixed"},
    })
    L.seed_everything(0, workers=True)
    data = LandCoverData(cfg.data)
    data.setup()
    module = LandCoverModule(cfg.model, cfg.train, data.codes, data.class_weights)
    trainer = L.Trainer(max_epochs=40, accelerator="gpu", devices=1, precision="16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0)
    t = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - t
    train_loss = float(trainer.callback_metrics["train_loss"])
    trainer.test(module, datamodule=data, verbose=False)
    val, test = module.results["val"], module.results["test"]
    print(f"train 40 epochs on GPU 16-mixed: {fit_s:.1f} s; val mIoU {val['miou']:.3f}, test mIoU {test['miou']:.3f}, "
          f"train loss {train_loss:.3f}")
    assert np.isfinite(val["miou"]) and val["miou"] > 0.3, "the model did not learn on the GPU"

    model = module.model.float().eval()
    contract = ModelContract.of_training(cfg, data, val["miou"])
    maps = {}
    for device in ("cuda", "cpu"):
        t = time.perf_counter()
        maps[device] = predict_scene(model, contract, scenes["thrace_L2A"], work / f"map-{device}.tif", device=device,
                                     tile=128, overlap=32, batch_size=16)
        print(f"predict on {device}: {time.perf_counter() - t:.2f} s")
    a, b = (rasterio.open(maps[d]).read(1) for d in ("cuda", "cpu"))
    agreement = (a == b).mean()
    print(f"CUDA autocast map vs CPU fp32 map: {agreement:.4%} of pixels agree")
    assert agreement >= 0.995

    # throughput on a larger scene: end to end vs bare forward on the same tiles
    big = work / "big"
    big.mkdir()
    with rasterio.open(scenes["thrace_L2A"] / "image.tif") as src:
        tile = src.read()
        profile = src.profile | {"width": 4608, "height": 4608}
        with rasterio.open(big / "image.tif", "w", **profile) as dst:
            dst.write(np.tile(tile, (1, 12, 12)))
            dst.descriptions = src.descriptions
    predict_scene(model, contract, big, work / "warm.tif", device="cuda", tile=512, overlap=64, batch_size=16)
    t = time.perf_counter()
    predict_scene(model, contract, big, work / "big.tif", device="cuda", tile=512, overlap=64, batch_size=16)
    e2e = time.perf_counter() - t
    n = len(tile_origins(4608, 512, 64)) ** 2
    x = torch.randn(16, 13, 512, 512, device="cuda")
    model.cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, n, 16):
            torch.softmax(model(x[: min(16, n - i)]).float(), 1).cpu()
        torch.cuda.synchronize()
    bare = time.perf_counter() - t
    print(f"4608^2 px on GPU: end to end {e2e:.2f} s ({4608 ** 2 / e2e / 1e6:.1f} Mpx/s), bare forward+softmax "
          f"on the same {n} tiles {bare:.2f} s, ratio {bare / e2e:.2f}")


def profile_predict() -> None:
    """Where the time of a big prediction on the GPU goes (cProfile, top functions)."""
    import cProfile
    import pstats

    from lc.learning.unet import build_unet
    from lc.worldcover import WORLDCOVER

    work = Path(tempfile.mkdtemp())
    manifest = synthesize(work / "raw", size=384)
    entry = next(p for p in manifest["products"] if p["role"] == "predict")
    scene = prepare(work / "raw" / entry["path"], work / "scene")
    big = work / "big"
    big.mkdir()
    with rasterio.open(scene / "image.tif") as src:
        profile = src.profile | {"width": 4608, "height": 4608}
        with rasterio.open(big / "image.tif", "w", **profile) as dst:
            dst.write(np.tile(src.read(), (1, 12, 12)))
            dst.descriptions = src.descriptions
    contract = ModelContract(harmonisation="scene_standardise", normalisation={"mean": [0.0] * 13, "std": [1.0] * 13},
                             classes=[{"code": c.code, "name": c.name, "colour": c.colour} for c in WORLDCOVER[:4]],
                             chip_size=512, encoder="resnet18")
    model = build_unet("resnet18", 4)
    predict_scene(model, contract, big, work / "warm.tif", device="cuda", tile=512, overlap=64, batch_size=16)
    cProfile.runctx("predict_scene(model, contract, big, work / 'p.tif', device='cuda', tile=512, overlap=64, batch_size=16)",
                    globals(), locals(), str(work / "prof"))
    pstats.Stats(str(work / "prof")).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    profile_predict() if "--profile" in sys.argv else main()
