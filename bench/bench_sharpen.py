"""Bringing 20 m bands to 10 m: every method against bicubic on Wald's protocol.

The 10 m and 20 m bands of a product are degraded by 2; the degraded 20 m bands are brought
back to 20 m with each method (the degraded 10 m bands drive the sharpening) and compared
with the originals. Prints ERGAS and SAM, and each method's ratio to bicubic (< 1 = better).
"""

from __future__ import annotations

import argparse

import numpy as np

from common import bench_product
from lc.sentinel2.bands import TEN_M, bands_at
from lc.sentinel2.prepare import read_band, to_reflectance
from lc.sentinel2.quality import wald_protocol
from lc.sentinel2.resample import RESAMPLERS
from lc.sentinel2.safe import open_product


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--products", type=int, default=3, help="how many of the default products")
    args = parser.parse_args()
    rows = {m: [] for m in RESAMPLERS}
    for index in range(args.products):
        product = open_product(bench_product(args.size, index))
        load = lambda b: to_reflectance(next(read_band(product, b))[1], product, b).astype(np.float32)  # noqa: E731
        fine = np.stack([load(b) for b in TEN_M])
        coarse = np.stack([load(b) for b in bands_at(20)])
        for method in RESAMPLERS:
            rows[method].append(wald_protocol(fine, coarse, method))
    base = {k: np.mean([r[k] for r in rows["cubic"]]) for k in ("ergas", "sam")}
    print(f"Wald's protocol, 20 m bands, {args.products} products of {args.size}^2 px at 10 m")
    print(f"{'method':>10} {'ERGAS':>8} {'SAM deg':>8} {'ERGAS/cubic':>12} {'SAM/cubic':>10}")
    for method, results in rows.items():
        e, s = (np.mean([r[k] for r in results]) for k in ("ergas", "sam"))
        print(f"{method:>10} {e:8.3f} {s:8.3f} {e / base['ergas']:12.3f} {s / base['sam']:10.3f}")


if __name__ == "__main__":
    main()
