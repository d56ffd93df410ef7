"""Prediction speed and memory: streaming tiled inference against the bare forward pass
and against a naive whole-scene baseline; peak RSS at three scene sizes.

- throughput: end-to-end time of `predict_scene` over the time of the bare forward pass
  on the same tiles (same count, size and batch), i.e. overlap already accounted for;
  goal >= 0.85.
- memory: peak RSS of a fresh process predicting scenes of 1098^2, 5490^2 and 10980^2 px
  (the scenes repeat the demo scene of the other area); flat is the goal.
- naive: whole scene, its model input and all class probabilities held in memory.
Each measurement runs in its own process so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from common import CACHE, ROOT

SIZES = (1098, 5490, 10980)
CLASSES = 8


def big_scene(size: int) -> Path:
    """A scene bundle of ``size``^2 px tiling the demo scene of the other area (made once)."""
    from lc.sentinel2.prepare import IMAGE_PROFILE

    source = ROOT / "data" / "demo" / "scenes" / "thrace_L2A" / "image.tif"
    scene = CACHE / f"scene-{size}"
    if (scene / "image.tif").exists():
        return scene
    scene.mkdir(parents=True, exist_ok=True)
    with rasterio.open(source) as src:
        tile = src.read()
        profile = {**IMAGE_PROFILE, "width": size, "height": size, "count": src.count, "crs": src.crs,
                   "transform": src.transform}
        with rasterio.open(scene / "image.tmp.tif", "w", **profile) as dst:
            for row in range(0, size, 512):
                h = min(512, size - row)
                rows = np.arange(row, row + h) % src.height
                cols = np.arange(size) % src.width
                dst.write(tile[:, rows][:, :, cols], window=Window(0, row, size, h))
            dst.descriptions = src.descriptions
    (scene / "image.tmp.tif").rename(scene / "image.tif")
    return scene


def model_and_contract():
    import torch

    from lc.learning.contract import ModelContract
    from lc.learning.unet import build_unet
    from lc.worldcover import WORLDCOVER

    torch.manual_seed(0)
    contract = ModelContract(
        harmonisation="scene_standardise", normalisation={"mean": [0.0] * 13, "std": [1.0] * 13},
        classes=[{"code": c.code, "name": c.name, "colour": c.colour} for c in WORLDCOVER[:CLASSES]],
        chip_size=256, encoder="resnet18")
    return build_unet("resnet18", CLASSES).eval(), contract


def naive(model, contract, scene: Path, out: Path, tile: int, overlap: int) -> None:
    """The whole scene and all probabilities in memory, then one write."""
    import torch

    from lc.learning.harmonise import scene_statistics
    from lc.learning.inputs import model_input
    from lc.mapping.tiling import hann_window
    from lc.raster import tile_origins
    from lc.worldcover import index_to_code_lut

    terms = contract
    with rasterio.open(scene / "image.tif") as src:
        raw = src.read().transpose(1, 2, 0)
        profile, bands = src.profile, tuple(src.descriptions)
    stats = scene_statistics(raw[::4, ::4].reshape(-1, raw.shape[-1]), bands)
    x = model_input(raw, bands, stats, terms.harmonisation, terms.normalisation).transpose(2, 0, 1)
    h, w = x.shape[1:]
    probs = np.zeros((CLASSES, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    window = hann_window(tile)
    with torch.inference_mode():
        for r in tile_origins(h, tile, overlap):
            for c in tile_origins(w, tile, overlap):
                p = torch.softmax(model(torch.from_numpy(x[None, :, r : r + tile, c : c + tile])), 1)[0].numpy()
                probs[:, r : r + tile, c : c + tile] += p * window
                weight[r : r + tile, c : c + tile] += window
    classes = index_to_code_lut(terms.codes)[(probs / weight).argmax(0)]
    profile.update(count=1, dtype="uint8", nodata=0)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes, 1)


def bare_forward(model, n_tiles: int, tile: int, batch: int) -> float:
    import torch

    x = torch.randn(batch, 13, tile, tile)
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for i in range(0, n_tiles, batch):
            model(x[: min(batch, n_tiles - i)])
    return time.perf_counter() - start


def child(mode: str, size: int, tile: int, overlap: int, batch: int) -> None:
    from lc.mapping.predict import predict_scene
    from lc.raster import tile_origins

    model, contract = model_and_contract()
    scene = big_scene(size)
    out = CACHE / f"map-{mode}-{size}.tif"
    start = time.perf_counter()
    if mode == "streaming":
        predict_scene(model, contract, scene, out, tile=tile, overlap=overlap, batch_size=batch, overwrite=True, device="cpu")
    else:
        naive(model, contract, scene, out, tile, overlap)
    seconds = time.perf_counter() - start
    result = {"mode": mode, "size": size, "seconds": seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if mode == "streaming":
        n_tiles = len(tile_origins(size, tile, overlap)) ** 2
        result["bare_seconds"] = bare_forward(model, n_tiles, tile, batch)
    print(json.dumps(result))


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SIZE"))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--naive-sizes", type=int, nargs="+", default=[1098, 5490])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.tile, args.overlap, args.batch)
        return
    rows = [run_child("streaming", str(s)) for s in args.sizes]
    rows += [run_child("naive", str(s)) for s in args.naive_sizes]
    print(f"U-Net resnet18, {CLASSES} classes, tiles {args.tile} px, overlap {args.overlap}, batch {args.batch}, CPU")
    print(f"{'mode':>10} {'size':>6} {'seconds':>8} {'Mpx/s':>6} {'peak RSS MB':>12} {'vs bare forward':>16}")
    for r in rows:
        ratio = f"{r['bare_seconds'] / r['seconds']:.2f}" if "bare_seconds" in r else ""
        print(f"{r['mode']:>10} {r['size']:>6} {r['seconds']:8.1f} {r['size'] ** 2 / r['seconds'] / 1e6:6.2f} "
              f"{r['peak_rss_mb']:12.0f} {ratio:>16}")
    for r in rows:
        if r["mode"] == "naive":
            s = next(x for x in rows if x["mode"] == "streaming" and x["size"] == r["size"])
            print(f"naive/streaming at {r['size']}: time {r['seconds'] / s['seconds']:.2f}x, "
                  f"peak RSS {r['peak_rss_mb'] / s['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
