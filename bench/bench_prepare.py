"""`prepare` time against its floor: merely decoding every band of the same product.

Both use the same thread pool over bands (GDAL decodes JPEG 2000 outside the GIL), so the
ratio is what preparing costs on top of reading. Goal: <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import rasterio

from common import bench_product, timer
from lc.sentinel2.prepare import prepare
from lc.sentinel2.safe import open_product


def decode_all(path: Path) -> None:
    product = open_product(path)

    def read(band: str) -> None:
        with rasterio.open(product.band_files[band]) as src:
            src.read(1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(read, product.bands))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2196, help="scene edge in 10 m pixels (a fifth of a tile)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    product = bench_product(args.size)
    print(f"product: {product.name} ({args.size}^2 px at 10 m, 13 bands)")
    print(f"{'method':>9} {'decode s':>9} {'prepare s':>10} {'ratio':>6}")
    for method in ("cubic", "sharpen"):
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            t: dict[str, float] = {}
            with timer(t, "decode"):
                decode_all(product)
            out = Path(tempfile.mkdtemp()) / "scene"
            with timer(t, "prepare"):
                prepare(product, out, method=method)
            shutil.rmtree(out.parent)
            best = {k: min(v, best.get(k, v)) for k, v in t.items()}
        print(f"{method:>9} {best['decode']:9.2f} {best['prepare']:10.2f} {best['prepare'] / best['decode']:6.2f}")


if __name__ == "__main__":
    main()
