"""Spatially honest splits: whole blocks of the scenes go to train, val or test.

Chips form a regular grid of ``chip_size`` windows; chips with more than ``max_nodata`` of
unlabelled or no-data pixels are skipped. The scenes are cut into ``block_size`` blocks;
whole blocks go to train, val or test (seeded), so no chip straddles two splits, and labels
within ``buffer`` pixels of a block of another split are ignored everywhere, so no
neighbouring pixels sit on both sides. The assignment is redrawn (deterministically) until
validation holds every class that training holds; if that is impossible the missing classes
are reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lc.config import DataConfig
from lc.learning.scenes import SceneArrays
from lc.worldcover import NODATA

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Chip:
    scene: int
    row: int
    col: int


@dataclass
class Split:
    """Chips per split, the block assignment that made them, and what it holds."""

    chips: dict[str, list[Chip]]
    blocks: list[np.ndarray]  # per scene: (n_block_rows, n_block_cols) split index, -1 = unused
    class_pixels: dict[str, dict[int, int]]
    missing_in_val: list[int]
    seed_attempt: int

    def summary(self) -> dict:
        return {
            "chips": {s: len(c) for s, c in self.chips.items()},
            "class_pixels": {s: {str(k): v for k, v in sorted(c.items())} for s, c in self.class_pixels.items()},
            "missing_in_val": self.missing_in_val,
            "seed_attempt": self.seed_attempt,
        }


def border_ignore(row: int, col: int, size: int, block: int, blocks: np.ndarray, buffer: int) -> np.ndarray:
    """Pixels of a chip within ``buffer`` px of a block assigned to another split."""
    if buffer == 0:
        return np.zeros((size, size), bool)
    rows, cols = np.arange(row, row + size), np.arange(col, col + size)
    own = blocks[row // block, col // block]
    out = np.zeros((size, size), bool)
    for dr in (-buffer, buffer):
        for dc in (-buffer, buffer):
            br = np.clip((rows + dr) // block, 0, blocks.shape[0] - 1)
            bc = np.clip((cols + dc) // block, 0, blocks.shape[1] - 1)
            other = blocks[br[:, None], bc[None, :]]
            out |= (other != own) & (other >= 0)
    return out


def _chip_grid(scene: SceneArrays, cfg: DataConfig) -> list[tuple[int, int]]:
    c = cfg.chip_size
    return [(r, k) for r in range(0, scene.height - c + 1, c) for k in range(0, scene.width - c + 1, c)]


def _chip_classes(scene: SceneArrays, cfg: DataConfig) -> dict[tuple[int, int], np.ndarray]:
    """Label counts (256 bins) of every usable chip of a scene."""
    c, counts = cfg.chip_size, {}
    labels, image = scene.labels, scene.image
    for r, k in _chip_grid(scene, cfg):
        lab = np.asarray(labels[r : r + c, k : k + c])
        usable = (lab != NODATA) & (np.asarray(image[r : r + c, k : k + c, 0]) > 0)
        if 1 - usable.mean() > cfg.max_nodata:
            continue
        counts[(r, k)] = np.bincount(lab[usable], minlength=256)
    return counts


def split_chips(scenes: list[SceneArrays], cfg: DataConfig) -> Split:
    """Assign whole blocks to train/val/test (seeded) and collect each split's chips."""
    chip_counts = [_chip_classes(s, cfg) for s in scenes]
    block_ids = []  # (scene, block_row, block_col) of every block holding a usable chip
    block_counts: dict[tuple[int, int, int], np.ndarray] = {}
    for i, counts in enumerate(chip_counts):
        for (r, k), hist in counts.items():
            key = (i, r // cfg.block_size, k // cfg.block_size)
            if key not in block_counts:
                block_ids.append(key)
                block_counts[key] = np.zeros(256, np.int64)
            block_counts[key] += hist
    if len(block_ids) < 3:
        raise ValueError(f"only {len(block_ids)} blocks hold usable chips; need 3 (train/val/test): "
                         "use smaller data.block_size or more scenes")
    best = None
    for attempt in range(MAX_ATTEMPTS):
        order = np.random.default_rng([cfg.seed, attempt]).permutation(len(block_ids))
        n = len(order)
        first = int(np.clip(round(cfg.split[0] * n), 1, n - 2))  # every split gets a block
        cuts = [first, int(np.clip(round((cfg.split[0] + cfg.split[1]) * n), first + 1, n - 1))]
        assignment = {block_ids[j]: s for s, part in enumerate(np.split(order, cuts)) for j in part}
        totals = [sum((block_counts[b] for b, s in assignment.items() if s == split), np.zeros(256, np.int64)) for split in range(3)]
        train_classes = set(np.flatnonzero(totals[0])) - {NODATA}
        missing = sorted(train_classes - set(np.flatnonzero(totals[1])))
        if best is None or len(missing) < len(best[1]):
            best = (assignment, missing, attempt)
        if not missing:
            break
    assignment, missing, attempt = best
    if missing:
        log.warning("validation holds none of classes %s that training holds", missing)
    blocks = []
    for i, s in enumerate(scenes):
        grid = np.full((-(-s.height // cfg.block_size), -(-s.width // cfg.block_size)), -1, np.int8)
        for (scene, br, bc), split in assignment.items():
            if scene == i:
                grid[br, bc] = split
        blocks.append(grid)
    chips = {name: [] for name in SPLITS}
    class_pixels = {name: {} for name in SPLITS}
    for i, counts in enumerate(chip_counts):
        for (r, k), hist in counts.items():
            name = SPLITS[blocks[i][r // cfg.block_size, k // cfg.block_size]]
            chips[name].append(Chip(i, r, k))
            for code in np.flatnonzero(hist):
                if code != NODATA:
                    class_pixels[name][int(code)] = class_pixels[name].get(int(code), 0) + int(hist[code])
    return Split(chips, blocks, class_pixels, [int(m) for m in missing], attempt)
