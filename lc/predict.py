"""Map a scene with a registered model: streaming tiled inference with blended overlaps.

Tiles of ``tile`` px overlap by ``overlap`` px; each tile's class probabilities are weighted
by a Hann window (never zero) and accumulated, so tile borders leave no seams. The scene
is processed in strips of one tile row: only the rows no later tile touches are finished,
written and dropped, so memory depends on the scene width and the tile size, never on the
scene height. Edge tiles are snapped inside the scene; no-data in gives no-data out.

The model's contract (band order, harmonisation, normalisation, classes) drives everything.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from tqdm import tqdm

from lc.bands import BAND_NAMES
from lc.data import Normalisation, model_input
from lc.geotiff import atomic_output, open_classmap, to_cog
from lc.harmonise import SceneStats, sample_stride, scene_statistics
from lc.prepare import Grid

log = logging.getLogger(__name__)
CONFIDENCE_NODATA = 255
GDAL_CACHE_MB = 128  # GDAL's block cache would otherwise grow to 5% of RAM with the scene
NET_MULTIPLE = 32  # a U-Net of depth 5 needs sizes divisible by 2^5


class ContractError(ValueError):
    """The input does not fit the model's contract."""


@dataclass(frozen=True)
class ModelContract:
    """The parts of a model's contract that prediction uses."""

    codes: tuple[int, ...]
    harmonisation: str
    norm: Normalisation

    @classmethod
    def from_dict(cls, contract: dict) -> ModelContract:
        if contract.get("bands") != list(BAND_NAMES):
            raise ContractError(f"the model expects bands {contract.get('bands')}, this code knows {list(BAND_NAMES)}")
        norm = contract["normalisation"]
        return cls(tuple(c["code"] for c in contract["classes"]), contract["harmonisation"],
                   Normalisation(tuple(norm["mean"]), tuple(norm["std"])))


def hann_window(size: int) -> np.ndarray:
    """2-D blending weights: a Hann window that never reaches zero."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering [0, length) with the last tile snapped inside."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def scene_stats_streaming(src: rasterio.DatasetReader, stride: int, rows_per_read: int = 512) -> SceneStats:
    """Scene statistics from every ``stride``-th pixel, read a strip at a time."""
    rows_per_read -= rows_per_read % stride
    parts = []
    for row in range(0, src.height, rows_per_read):
        window = Window(0, row, src.width, min(rows_per_read, src.height - row))
        parts.append(src.read(window=window)[:, ::stride, ::stride].reshape(src.count, -1).T)
    return scene_statistics(np.concatenate(parts), tuple(src.descriptions))


def check_bands(scene_bands: tuple[str, ...], source: Path) -> None:
    """Every model band must be in the scene, except B10 (filled by the contract's policy)."""
    unknown = [b for b in scene_bands if b not in BAND_NAMES]
    missing = [b for b in BAND_NAMES if b not in scene_bands and b != "B10"]
    if unknown or missing:
        raise ContractError(f"{source}: bands do not match the model's contract "
                            f"(missing {missing or 'none'}, unknown {unknown or 'none'})")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class StripAccumulator:
    """Weighted class probabilities of the rows that tiles may still touch (on the model's device)."""

    def __init__(self, classes: int, rows: int, width: int, device: torch.device):
        self.probs = torch.zeros((classes, rows, width), device=device)
        self.weight = torch.zeros((rows, width), device=device)
        self.top = 0  # scene row of the buffer's first row

    def add(self, probs: torch.Tensor, weight: torch.Tensor, row: int, col: int) -> None:
        r = row - self.top
        h, w = weight.shape
        self.probs[:, r : r + h, col : col + w] += probs * weight
        self.weight[r : r + h, col : col + w] += weight

    def pop(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Finish the first ``rows`` rows: (class index, max probability), each (rows, width)."""
        confidence, index = (self.probs[:, :rows] / self.weight[:rows].clamp_min(1e-12)).max(dim=0)
        keep = self.weight.shape[0] - rows
        self.probs[:, :keep] = self.probs[:, rows:].clone()  # shift up
        self.weight[:keep] = self.weight[rows:].clone()
        self.probs[:, keep:] = 0
        self.weight[keep:] = 0
        self.top += rows
        return index.cpu().numpy(), confidence.cpu().numpy()


class TiledPredictor:
    """Runs a network over a scene's image.tif tile by tile, strip by strip.

    Probabilities are blended and reduced on the model's device; only the class index and
    confidence of finished rows come back to the host.
    """

    def __init__(self, model: torch.nn.Module, contract: ModelContract, device: str = "auto",
                 tile: int = 256, overlap: int = 64, batch_size: int = 8):
        if tile % NET_MULTIPLE or not 0 <= overlap < tile:
            raise ValueError(f"tile must be a multiple of {NET_MULTIPLE} and overlap in [0, tile): {tile}, {overlap}")
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.contract, self.tile, self.overlap, self.batch_size = contract, tile, overlap, batch_size

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            return torch.softmax(self.model(x).float(), dim=1)

    def run(self, src: rasterio.DatasetReader, stats: SceneStats, write) -> None:
        """Predict the whole scene; ``write(row, index, confidence, nodata)`` per finished strip."""
        bands = tuple(src.descriptions)
        height, width = src.height, src.width
        tile_h = min(self.tile, math.ceil(height / NET_MULTIPLE) * NET_MULTIPLE)
        tile_w = min(self.tile, math.ceil(width / NET_MULTIPLE) * NET_MULTIPLE)
        rows, cols = tile_origins(height, tile_h, self.overlap), tile_origins(width, tile_w, self.overlap)
        window = torch.from_numpy(hann_window(max(tile_h, tile_w))[:tile_h, :tile_w]).to(self.device)
        acc = StripAccumulator(len(self.contract.codes), tile_h, width, self.device)

        def read(row: int) -> np.ndarray:
            return src.read(window=Window(0, row, width, min(tile_h, height - row))).transpose(1, 2, 0)

        with ThreadPoolExecutor(max_workers=1) as reader, torch.inference_mode():  # decode ahead while the model runs
            pending = reader.submit(read, rows[0])
            for i, row in enumerate(tqdm(rows, desc="predict", unit="strip")):
                raw = pending.result()
                if i + 1 < len(rows):
                    pending = reader.submit(read, rows[i + 1])
                strip_h = raw.shape[0]
                x = model_input(raw, bands, stats, self.contract.harmonisation, self.contract.norm)
                x = np.pad(x, ((0, tile_h - strip_h), (0, max(0, tile_w - width)), (0, 0)))  # scenes smaller than a tile
                tiles = [x[:, c : c + tile_w].transpose(2, 0, 1) for c in cols]
                for start in range(0, len(tiles), self.batch_size):
                    probs = self._forward(np.stack(tiles[start : start + self.batch_size]))
                    for p, c in zip(probs, cols[start : start + self.batch_size]):
                        w = min(tile_w, width - c)
                        acc.add(p[:, :strip_h, :w], window[:strip_h, :w], row, c)
                finished = (rows[i + 1] if i + 1 < len(rows) else height) - acc.top
                offset = acc.top - row
                nodata = (raw[offset : offset + finished] == 0).all(axis=-1)
                top = acc.top
                write(top, *acc.pop(finished), nodata)


def _open_confidence(path: Path, grid: Grid):
    return rasterio.open(path, "w", driver="GTiff", dtype="uint8", count=1, nodata=CONFIDENCE_NODATA, tiled=True,
                         blockxsize=512, blockysize=512, crs=grid.crs, transform=grid.transform,
                         width=grid.width, height=grid.height)


def confidence_path(map_tif: Path) -> Path:
    return map_tif.with_name(map_tif.stem + ".confidence.tif")


def predict_scene(model: torch.nn.Module, contract: dict, scene: Path, out: Path, *, device: str = "auto",
                  tile: int = 256, overlap: int = 64, batch_size: int = 8, overwrite: bool = False) -> Path:
    """Write MAP.tif (COG, WorldCover codes) and MAP.confidence.tif for a scene bundle."""
    terms = ModelContract.from_dict(contract)
    lut = np.asarray(terms.codes, np.uint8)
    for target in (out, confidence_path(out)):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(scene / "image.tif") as src:
        check_bands(tuple(src.descriptions), scene)
        grid = Grid(src.crs, src.transform, src.height, src.width)
        stats = scene_stats_streaming(src, sample_stride(src.height, src.width))
        predictor = TiledPredictor(model, terms, device, tile, overlap, batch_size)
        with atomic_output(out, overwrite=True) as map_tmp, atomic_output(confidence_path(out), overwrite=True) as conf_tmp:
            staging = map_tmp.with_name("stream.tif")  # uncompressed: the COG copy compresses once
            conf_staging = conf_tmp.with_name("stream.tif")
            with open_classmap(staging, grid.crs, grid.transform, grid.width, grid.height, compress="none") as dst, \
                    _open_confidence(conf_staging, grid) as conf:

                def write(row: int, index: np.ndarray, probability: np.ndarray, nodata: np.ndarray) -> None:
                    classes = lut[index]
                    classes[nodata] = 0
                    confidence = np.rint(probability * 100).astype(np.uint8)
                    confidence[nodata] = CONFIDENCE_NODATA
                    window = Window(0, row, grid.width, len(classes))
                    dst.write(classes, 1, window=window)
                    conf.write(confidence, 1, window=window)

                predictor.run(src, stats, write)
            to_cog(staging, map_tmp)
            to_cog(conf_staging, conf_tmp, category_names=False)
            for staged in (staging, conf_staging):
                staged.unlink()
    return out


def predict(model_uri: str, source: Path, out: Path, *, worldcover: list[Path] | None = None, device: str = "auto",
            tile: int = 256, overlap: int = 64, batch_size: int = 8, overwrite: bool = False) -> dict:
    """``lc predict``: a product (prepared on the fly) or a scene bundle -> map (+ evaluation)."""
    from lc.evaluate_map import check_truth_covers, evaluate_map
    from lc.plots import plot_map_quicklook
    from lc.prepare import prepare
    from lc.tracking import load_model

    out = Path(out)
    for target in (out, confidence_path(out)):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    model, contract = load_model(model_uri)
    source = Path(source)
    temporary = None
    if not (source / "image.tif").exists():
        temporary = out.parent / f".{out.stem}.scene"
        shutil.rmtree(temporary, ignore_errors=True)
        scene = prepare(source, temporary)
    else:
        scene = source
    try:
        if worldcover:
            with rasterio.open(scene / "image.tif") as src:
                check_truth_covers(worldcover, Grid(src.crs, src.transform, src.height, src.width))
        predict_scene(model, contract, scene, out, device=device, tile=tile, overlap=overlap,
                      batch_size=batch_size, overwrite=overwrite)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    plot_map_quicklook(out, out.with_suffix(".png"))
    summary = {"map": str(out), "confidence": str(confidence_path(out)), "quicklook": str(out.with_suffix(".png")),
               "model": model_uri, "source": str(source)}
    if worldcover:
        summary["metrics"] = evaluate_map(out, worldcover=worldcover)
    out.with_name(out.stem + ".json").write_text(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=1))
    return summary
