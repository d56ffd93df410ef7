"""Training data: scene arrays, chips, spatially honest splits, normalisation, DataModule.

- Scenes: each scene bundle is decoded once into a memory-mapped cache (``cache/`` in the
  bundle: image (H, W, bands) uint16 and labels (H, W) uint8); workers open their own maps.
- Chips: a regular grid of ``chip_size`` windows; chips with more than ``max_nodata`` of
  unlabelled or no-data pixels are skipped.
- Splits: the scenes are cut into ``block_size`` blocks; whole blocks go to train, val or
  test (seeded), so no chip straddles two splits, and labels within ``buffer`` pixels of a
  block of another split are ignored everywhere, so no neighbouring pixels sit on both
  sides. The assignment is redrawn (deterministically) until validation holds every class
  that training holds; if that is impossible the missing classes are reported.
- Normalisation: per-band mean and std of the *training* chips after harmonisation.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lc.augment import build_policy
from lc.bands import BAND_ID, BAND_NAMES
from lc.config import DataConfig
from lc.geotiff import atomic_output
from lc.harmonise import SceneStats, harmonise, harmonise_affine, sample_stride, scene_statistics
from lc.legend import NODATA

log = logging.getLogger(__name__)
IGNORE = 255
SPLITS = ("train", "val", "test")
MAX_ATTEMPTS = 200


@dataclass
class SceneArrays:
    """A scene bundle's pixels as memory maps (opened lazily, once per process)."""

    path: Path
    bands: tuple[str, ...]
    height: int
    width: int
    stats: SceneStats
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def image(self) -> np.ndarray:
        return self._map("image.npy")

    @property
    def labels(self) -> np.ndarray:
        return self._map("label.npy")

    def _map(self, name: str) -> np.ndarray:
        key = (os.getpid(), name)
        if key not in self._maps:
            self._maps = {key: np.load(self.path / "cache" / name, mmap_mode="r")} | {
                k: v for k, v in self._maps.items() if k[0] == os.getpid()
            }
        return self._maps[key]

    def __getstate__(self) -> dict:  # worker processes open their own maps
        return {**self.__dict__, "_maps": {}}


def _build_cache(scene: Path) -> None:
    """Decode image.tif/label.tif once into .npy files and the scene statistics."""
    cache = scene / "cache"
    with atomic_output(cache, overwrite=True) as tmp:
        tmp.mkdir()
        with rasterio.open(scene / "image.tif") as src:
            image = np.lib.format.open_memmap(tmp / "image.npy", "w+", np.uint16, (src.height, src.width, src.count))
            for i in range(src.count):
                image[:, :, i] = src.read(i + 1)
            bands = tuple(src.descriptions)
            stride = sample_stride(src.height, src.width)
            sample = np.asarray(image[::stride, ::stride]).reshape(-1, src.count)
            image.flush()
            del image
        labels = np.zeros((src.height, src.width), np.uint8)
        if (scene / "label.tif").exists():
            with rasterio.open(scene / "label.tif") as lab:
                labels = lab.read(1)
        np.save(tmp / "label.npy", labels)
        stats = scene_statistics(sample, bands)
        (tmp / "stats.json").write_text(json.dumps(stats.to_dict()))


def load_scene(scene: Path) -> SceneArrays:
    """Open a scene bundle for training, building its cache on first use."""
    scene = Path(scene)
    if not (scene / "scene.json").exists():
        raise FileNotFoundError(f"{scene}: not a scene bundle (no scene.json); run `lc prepare` first")
    cache = scene / "cache"
    with open(scene / ".cache.lock", "w") as lock:  # parallel workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = not (cache / "stats.json").exists() or (
            (cache / "stats.json").stat().st_mtime < (scene / "image.tif").stat().st_mtime)
        if stale:
            _build_cache(scene)
    stats = SceneStats.from_dict(json.loads((cache / "stats.json").read_text()))
    image = np.load(cache / "image.npy", mmap_mode="r")
    return SceneArrays(scene, stats.bands, image.shape[0], image.shape[1], stats)


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


@dataclass(frozen=True)
class Normalisation:
    """Per-band (13, model order) mean/std applied after harmonisation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"bands": list(BAND_NAMES), "mean": list(self.mean), "std": list(self.std)}


def to_model_bands(x: np.ndarray, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, n) in scene band order -> (H, W, 13) in model order, plus which bands are present."""
    out = np.zeros((*x.shape[:-1], len(BAND_NAMES)), np.float32)
    present = np.zeros(len(BAND_NAMES), bool)
    for j, band in enumerate(bands):
        out[..., BAND_ID[band]] = x[..., j]
        present[BAND_ID[band]] = True
    return out, present


def model_input(raw: np.ndarray, scene_bands: tuple[str, ...], stats: SceneStats, harmonisation: str,
                norm: Normalisation) -> np.ndarray:
    """Scene pixels (H, W, n) uint16 -> model input (H, W, 13) float32.

    Harmonise with the scene's own statistics, reorder to the 13 model bands, normalise
    with the training statistics, fill missing bands (B10 of L2A) and no-data with 0.
    Harmonisation and normalisation are both per-band affine, so they are applied as one.
    """
    h_scale, h_offset = harmonise_affine(harmonisation, stats)
    source = np.array([scene_bands.index(b) if b in scene_bands else 0 for b in BAND_NAMES])
    present = np.array([b in scene_bands for b in BAND_NAMES])
    mean, std = np.asarray(norm.mean, np.float32), np.asarray(norm.std, np.float32)
    scale = np.where(present, h_scale[source] / std, 0).astype(np.float32)
    offset = np.where(present, (h_offset[source] - mean) / std, 0).astype(np.float32)
    x = raw[..., source].astype(np.float32)
    x *= scale
    x += offset
    x[(raw == 0).all(axis=-1)] = 0.0
    return x


def fit_normalisation(scenes: list[SceneArrays], chips: list[Chip], cfg: DataConfig, max_chips: int = 2000,
                      reflectance: bool = False) -> Normalisation:
    """Mean/std per model band over the valid pixels of training chips (after harmonisation).

    ``reflectance``: encoders pretrained on reflectance (SSL4EO) get x / 10000 instead.
    """
    if reflectance:
        return Normalisation((0.0,) * len(BAND_NAMES), (10000.0,) * len(BAND_NAMES))
    step = max(1, len(chips) // max_chips)
    total = np.zeros(len(BAND_NAMES))
    total_sq = np.zeros(len(BAND_NAMES))
    count = np.zeros(len(BAND_NAMES))
    c = cfg.chip_size
    for chip in chips[::step]:
        scene = scenes[chip.scene]
        raw = np.asarray(scene.image[chip.row : chip.row + c, chip.col : chip.col + c])
        valid = (raw > 0).all(axis=-1)
        x, present = to_model_bands(harmonise(raw[valid].astype(np.float32), cfg.harmonisation, scene.stats), scene.bands)
        total[present] += x[:, present].sum(axis=0)
        total_sq[present] += (x[:, present].astype(np.float64) ** 2).sum(axis=0)
        count[present] += len(x)
    seen = count > 0
    count = np.maximum(count, 1)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    std[~seen] = 1.0  # a band absent from all training chips (B10 of L2A) passes through as 0
    return Normalisation(tuple(map(float, mean)), tuple(map(float, std)))


class ChipDataset(Dataset):
    """Chips of scenes as (image (13, c, c) float32, mask (c, c) int64 class index)."""

    def __init__(self, scenes: list[SceneArrays], chips: list[Chip], blocks: list[np.ndarray], cfg: DataConfig,
                 norm: Normalisation, codes: list[int], augment: str = "none", jitter: bool = False):
        self.scenes, self.chips, self.cfg, self.norm, self.jitter = scenes, chips, cfg, norm, jitter
        self.blocks = blocks  # per scene: the split of each block (for the border buffer)
        self.lut = np.full(256, IGNORE, np.uint8)
        self.lut[codes] = np.arange(len(codes))
        self.augment = build_policy(augment, cfg.chip_size, IGNORE, BAND_ID["B10"], cfg.b10_dropout)
        self.augment.set_random_seed(cfg.seed)

    def __len__(self) -> int:
        return len(self.chips)

    def _window(self, chip: Chip) -> tuple[int, int]:
        """The chip's origin; with ``jitter``, anywhere inside its block (never across it)."""
        if not self.jitter:
            return chip.row, chip.col
        b, c, scene = self.cfg.block_size, self.cfg.chip_size, self.scenes[chip.scene]
        span = lambda start, size: self.augment.py_random.randint(  # noqa: E731
            start - start % b, min(start - start % b + b, size) - c)
        return span(chip.row, scene.height), span(chip.col, scene.width)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chip, c = self.chips[i], self.cfg.chip_size
        scene = self.scenes[chip.scene]
        row, col = self._window(chip)
        raw = np.asarray(scene.image[row : row + c, col : col + c])
        x = model_input(raw, scene.bands, scene.stats, self.cfg.harmonisation, self.norm)
        mask = self.lut[np.asarray(scene.labels[row : row + c, col : col + c])]
        mask[(raw == 0).all(axis=-1) | border_ignore(row, col, c, self.cfg.block_size,
                                                     self.blocks[chip.scene], self.cfg.buffer)] = IGNORE
        out = self.augment(image=x, mask=mask)
        return (torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
                torch.from_numpy(out["mask"].astype(np.int64)))


def _twin(scene: SceneArrays, twin: SceneArrays) -> SceneArrays:
    """Check that a twin (e.g. the L2A of the same acquisition) lies on its scene's grid."""
    grid, twin_grid = ((g["crs"], g["transform"], g["width"], g["height"])
                       for g in (json.loads((s.path / "scene.json").read_text()) for s in (scene, twin)))
    if grid != twin_grid:
        raise ValueError(f"{twin.path} is not on the grid of {scene.path}; a validation twin must be the same tile")
    if twin.labels.any() and not np.array_equal(np.asarray(twin.labels) > 0, np.asarray(scene.labels) > 0):
        log.warning("%s and %s label different pixels", twin.path, scene.path)
    return twin


def _seed_worker(_: int) -> None:
    info = get_worker_info()
    info.dataset.augment.set_random_seed(info.seed % 2**32)


class LandCoverData(L.LightningDataModule):
    """Scenes -> split chips -> loaders; knows the classes and the normalisation."""

    def __init__(self, cfg: DataConfig, reflectance_input: bool = False):
        super().__init__()
        self.cfg, self.reflectance_input = cfg, reflectance_input
        self.scenes: list[SceneArrays] = []

    def setup(self, stage: str | None = None) -> None:
        if self.scenes:
            return
        self.scenes = [load_scene(p) for p in self.cfg.scenes]
        self.twins = {i: _twin(self.scenes[i], load_scene(self.cfg.val_twins[str(p)]))
                      for i, p in enumerate(self.cfg.scenes) if str(p) in self.cfg.val_twins}
        self.split = split_chips(self.scenes, self.cfg)
        train_pixels = self.split.class_pixels["train"]
        self.codes = sorted(train_pixels)
        self.norm = fit_normalisation(self.scenes, self.split.chips["train"], self.cfg, reflectance=self.reflectance_input)
        total = sum(train_pixels.values())
        freq = np.array([train_pixels[c] / total for c in self.codes])
        weights = 1 / np.sqrt(freq)
        self.class_weights = (weights / weights.mean()).tolist()  # inverse sqrt frequency, mean 1

    def dataset(self, split: str, augment: str = "none", scenes: list[SceneArrays] | None = None,
                jitter: bool = False) -> ChipDataset:
        """Chips of one split; ``scenes`` swaps in other scenes on the same grids (e.g. L2A twins)."""
        return ChipDataset(scenes or self.scenes, self.split.chips[split], self.split.blocks, self.cfg, self.norm,
                           self.codes, augment, jitter)

    def validation_dataset(self) -> ChipDataset:
        """Validation chips of the scenes and, again, of their twins (``data.val_twins``): a
        model is then selected on both processing levels, as it will be used."""
        scenes, blocks = list(self.scenes), list(self.split.blocks)
        chips = list(self.split.chips["val"])
        for i, twin in self.twins.items():
            scenes.append(twin)
            blocks.append(self.split.blocks[i])
            chips += [Chip(len(scenes) - 1, c.row, c.col) for c in self.split.chips["val"] if c.scene == i]
        return ChipDataset(scenes, chips, blocks, self.cfg, self.norm, self.codes)

    def _loader(self, dataset: ChipDataset, shuffle: bool) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
                          worker_init_fn=_seed_worker if workers else None, persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.cfg.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", self.cfg.augmentation, jitter=self.cfg.jitter), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation_dataset(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)
