"""Tiled inference over a scene of any size, in bounded memory.

Tiles of ``tile`` px overlap by ``overlap`` px; each tile's class probabilities are weighted
by a Hann window (never zero) and accumulated, so tile borders leave no seams. The scene
is processed in strips of one tile row: only the rows no later tile touches are finished,
written and dropped, so memory depends on the scene width and the tile size, never on the
scene height. Edge tiles are snapped inside the scene.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from tqdm import tqdm

from lc.learning.contract import ModelContract
from lc.learning.hardware import inference_dtype
from lc.learning.harmonise import SceneStats
from lc.learning.inputs import model_input
from lc.learning.unet import NET_MULTIPLE
from lc.raster import tile_origins


def hann_window(size: int) -> np.ndarray:
    """2-D blending weights: a Hann window that never reaches zero."""
    w = np.sin(np.pi * (np.arange(size) + 0.5) / size) ** 2
    return np.maximum(np.outer(w, w), 1e-3).astype(np.float32)


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
                 tile: int = 256, overlap: int = 64, batch_size: int = 8, precision: str = "auto"):
        if tile % NET_MULTIPLE or not 0 <= overlap < tile:
            raise ValueError(f"tile must be a multiple of {NET_MULTIPLE} and overlap in [0, tile): {tile}, {overlap}")
        self.device = pick_device(device)
        self.dtype = inference_dtype(precision, self.device)  # None: float32
        self.layout = torch.channels_last if self.dtype is not None else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.layout).eval()
        self.contract, self.tile, self.overlap, self.batch_size = contract, tile, overlap, batch_size

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                                    enabled=self.dtype is not None):
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
                x = model_input(raw, bands, stats, self.contract.harmonisation, self.contract.normalisation)
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
