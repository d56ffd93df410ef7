"""Spatially honest splits: whole blocks of the ground go to train, val or test.

Blocks are squares of ``block_size`` pixels on one map grid per CRS, shared by every scene of
that CRS, so the same ground lands in the same split whichever scene sees it (real MGRS tiles
of one UTM zone overlap by about 10 km on the same pixel grid). The grid is anchored at the
north-west corner of the CRS's scenes: a single scene's blocks start at its own corner.

Chips form a regular grid of ``chip_size`` windows in each scene; chips with more than
``max_nodata`` of unlabelled or no-data pixels are skipped; a chip belongs to the block of its
centre. Whole blocks go to train, val or test (seeded). Labels of a chip that lie in a block
of another split (a chip of a scene whose grid is not aligned with the blocks), or within
``buffer`` pixels of one, in any scene, are ignored: no ground, and no neighbouring pixels, sit
on two sides. The assignment is redrawn (deterministically) until validation holds every class
that training holds; if that is impossible the missing classes are reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from rasterio.warp import transform_bounds

from lc.config import DataConfig
from lc.learning.scenes import SceneArrays
from lc.worldcover import NODATA

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
MAX_ATTEMPTS = 200
BlockId = tuple[str, int, int]  # (CRS, block row, block column) on the CRS's map grid


@dataclass(frozen=True)
class Chip:
    scene: int
    row: int
    col: int


@dataclass(frozen=True)
class SceneBlocks:
    """The split of every block a scene touches (with a margin), -1 for none, and where the
    scene's pixel (0, 0) lies in that array: at pixel (``row0``, ``col0``) of its first block."""

    splits: np.ndarray
    row0: int
    col0: int
    size: int

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The split of the blocks of scene pixels (``rows`` x ``cols``, an outer product)."""
        br = np.clip((rows + self.row0) // self.size, 0, self.splits.shape[0] - 1)
        bc = np.clip((cols + self.col0) // self.size, 0, self.splits.shape[1] - 1)
        return self.splits[br[:, None], bc[None, :]]

    def span(self, start: int, size: int, extent: int, axis: int) -> tuple[int, int]:
        """The first and last origin of a ``size`` window that stays in the block of pixel ``start + size // 2``
        along ``axis`` (0 rows, 1 columns) and inside the scene's ``extent``."""
        offset = self.row0 if axis == 0 else self.col0
        block_start = (start + size // 2 + offset) // self.size * self.size - offset
        low, high = max(block_start, 0), min(block_start + self.size, extent) - size
        return (low, high) if high >= low else (start, start)


@dataclass
class Split:
    """Chips per split, the block assignment that made them, and what it holds."""

    chips: dict[str, list[Chip]]
    blocks: list[SceneBlocks]
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


def ignored(row: int, col: int, size: int, blocks: SceneBlocks, buffer: int) -> np.ndarray:
    """Pixels of a chip whose labels another split owns: in a block that is not the chip's own
    split, or within ``buffer`` px of a block of another split."""
    rows, cols = np.arange(row, row + size), np.arange(col, col + size)
    own = blocks.at(np.array([row + size // 2]), np.array([col + size // 2]))[0, 0]
    out = blocks.at(rows, cols) != own
    for dr in (-buffer, buffer) if buffer else ():
        for dc in (-buffer, buffer):
            other = blocks.at(rows + dr, cols + dc)
            out |= (other != own) & (other >= 0)
    return out


def _anchors(scenes: list[SceneArrays]) -> dict[str, tuple[int, int]]:
    """The map-grid (row, col) where each CRS's blocks start: the north-west corner of its scenes."""
    anchors: dict[str, tuple[int, int]] = {}
    for s in scenes:
        r, c = anchors.get(s.crs, s.origin)
        anchors[s.crs] = (min(r, s.origin[0]), min(c, s.origin[1]))
    return anchors


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


def _assign(block_counts: dict[BlockId, np.ndarray], cfg: DataConfig) -> tuple[dict[BlockId, int], list[int], int]:
    """A seeded assignment of blocks to splits in which validation holds the training classes."""
    block_ids = list(block_counts)
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
        totals = [sum((block_counts[b] for b, s in assignment.items() if s == split), np.zeros(256, np.int64))
                  for split in range(3)]
        train_classes = set(np.flatnonzero(totals[0])) - {NODATA}
        missing = sorted(train_classes - set(np.flatnonzero(totals[1])))
        if best is None or len(missing) < len(best[1]):
            best = (assignment, missing, attempt)
        if not missing:
            break
    return best


def _scene_blocks(scene: SceneArrays, anchor: tuple[int, int], assignment: dict[BlockId, int],
                  cfg: DataConfig) -> SceneBlocks:
    """The splits of the blocks a scene touches, with a margin of ``buffer`` pixels around it."""
    b, margin = cfg.block_size, cfg.buffer
    top, left = scene.origin[0] - anchor[0], scene.origin[1] - anchor[1]
    rows = range((top - margin) // b, (top + scene.height - 1 + margin) // b + 1)
    cols = range((left - margin) // b, (left + scene.width - 1 + margin) // b + 1)
    splits = np.array([[assignment.get((scene.crs, r, c), -1) for c in cols] for r in rows], np.int8)
    return SceneBlocks(splits, top - rows[0] * b, left - cols[0] * b, b)


def split_chips(scenes: list[SceneArrays], cfg: DataConfig) -> Split:
    """Assign whole blocks of each CRS's map grid to train/val/test (seeded) and collect the chips."""
    anchors = _anchors(scenes)
    chip_counts = [_chip_classes(s, cfg) for s in scenes]
    half, b = cfg.chip_size // 2, cfg.block_size

    def block_of(i: int, r: int, k: int) -> BlockId:
        s, (ar, ac) = scenes[i], anchors[scenes[i].crs]
        return s.crs, (s.origin[0] - ar + r + half) // b, (s.origin[1] - ac + k + half) // b

    block_counts: dict[BlockId, np.ndarray] = {}
    for i, counts in enumerate(chip_counts):
        for (r, k), hist in counts.items():
            key = block_of(i, r, k)
            block_counts[key] = block_counts.get(key, np.zeros(256, np.int64)) + hist
    assignment, missing, attempt = _assign(block_counts, cfg)
    if missing:
        log.warning("validation holds none of classes %s that training holds", missing)
    blocks = [_scene_blocks(s, anchors[s.crs], assignment, cfg) for s in scenes]
    chips = {name: [] for name in SPLITS}
    class_pixels = {name: {} for name in SPLITS}
    for i, counts in enumerate(chip_counts):
        for (r, k), hist in counts.items():
            name = SPLITS[assignment[block_of(i, r, k)]]
            chips[name].append(Chip(i, r, k))
            for code in np.flatnonzero(hist):
                if code != NODATA:
                    class_pixels[name][int(code)] = class_pixels[name].get(int(code), 0) + int(hist[code])
    return Split(chips, blocks, class_pixels, [int(m) for m in missing], attempt)


def area_chips(scene: SceneArrays, cfg: DataConfig) -> tuple[list[tuple[int, int]], SceneBlocks]:
    """The (row, col) of every usable chip of a validation area (``data.val_scenes``), and its blocks:
    all validation."""
    return list(_chip_classes(scene, cfg)), SceneBlocks(np.ones((1, 1), np.int8), 0, 0, max(scene.height, scene.width))


def _overlap(a: SceneArrays, b: SceneArrays) -> bool:
    """Whether two scenes share ground; where their CRSs differ (two UTM zones), a's bounds are projected into b's."""
    if a.crs != b.crs and not (a.crs and b.crs):
        return False
    west, south, east, north = a.bounds if a.crs == b.crs else transform_bounds(a.crs, b.crs, *a.bounds, densify_pts=21)
    w, s, e, n = b.bounds
    return max(west, w) < min(east, e) and max(south, s) < min(north, n)


def check_apart(areas: list[SceneArrays], scenes: list[SceneArrays]) -> None:
    """A validation area must not share ground with a training scene, in any UTM zone: it would not be
    another area."""
    for area in areas:
        for scene in scenes:
            if _overlap(area, scene):
                raise ValueError(f"validation area {area.path} overlaps training scene {scene.path}: "
                                 "data.val_scenes must be other areas")
