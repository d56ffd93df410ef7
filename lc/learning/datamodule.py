"""The DataModule: scenes -> split chips -> augmented batches, with the classes and the
normalisation of the training data (``lc.learning.scenes``, ``splits`` and ``inputs``)."""

from __future__ import annotations

import json
import logging

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lc.config import DataConfig
from lc.learning.augment import build_policy
from lc.learning.inputs import IGNORE, Normalisation, fit_normalisation, model_input
from lc.learning.scenes import SceneArrays, load_scene
from lc.learning.splits import Chip, SceneBlocks, area_chips, check_apart, ignored, split_chips
from lc.learning.unet import NET_MULTIPLE
from lc.raster import tile_origins
from lc.sentinel2.bands import BAND_ID
from lc.worldcover import code_to_index_lut

log = logging.getLogger(__name__)
WINDOWS = 64  # random windows a scene's statistics are drawn from (data.window_statistics)


class ChipDataset(Dataset):
    """Chips of scenes as (image (13, c, c) float32, mask (c, c) int64 class index)."""

    def __init__(self, scenes: list[SceneArrays], chips: list[Chip], blocks: list[SceneBlocks], cfg: DataConfig,
                 norm: Normalisation, codes: list[int], augment: str = "none", jitter: bool = False,
                 length: int | None = None, windows: bool = False):
        self.scenes, self.chips, self.cfg, self.norm, self.jitter = scenes, chips, cfg, norm, jitter
        self.length = length or len(chips)  # more than the chips: each is drawn again, at another position
        self.blocks = blocks  # per scene: the split of each block it touches (what a chip may label)
        self.lut = code_to_index_lut(codes, IGNORE)
        self.augment = build_policy(augment, cfg.chip_size, IGNORE, BAND_ID["B10"], cfg.b10_dropout)
        self.augment.set_random_seed(cfg.seed)
        self.window_stats = cfg.window_statistics if windows else 0.0  # training only
        self.windows = [s.window_statistics(WINDOWS, cfg.seed * 1000 + i) if self.window_stats else []
                        for i, s in enumerate(scenes)]  # drawn once here, not again in every loader worker

    def __len__(self) -> int:
        return self.length

    def _window(self, chip: Chip) -> tuple[int, int]:
        """The chip's origin; with ``jitter``, anywhere inside its block and the scene."""
        if not self.jitter:
            return chip.row, chip.col
        c, scene, blocks = self.cfg.chip_size, self.scenes[chip.scene], self.blocks[chip.scene]
        rows, cols = blocks.span(chip.row, c, scene.height, 0), blocks.span(chip.col, c, scene.width, 1)
        return self.augment.py_random.randint(*rows), self.augment.py_random.randint(*cols)

    def _statistics(self, index: int):
        """The scene's statistics, or with chance ``data.window_statistics`` those of a random window of it."""
        rng = self.augment.py_random
        if not self.window_stats or rng.random() >= self.window_stats:
            return self.scenes[index].stats
        return rng.choice(self.windows[index])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chip, c = self.chips[i % len(self.chips)], self.cfg.chip_size
        scene = self.scenes[chip.scene]
        row, col = self._window(chip)
        raw = np.asarray(scene.image[row : row + c, col : col + c])
        x = model_input(raw, scene.bands, self._statistics(chip.scene), self.cfg.harmonisation, self.norm)
        mask = self.lut[np.asarray(scene.labels[row : row + c, col : col + c])]
        mask[(raw == 0).all(axis=-1) | ignored(row, col, c, self.blocks[chip.scene], self.cfg.buffer)] = IGNORE
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
        self.areas = [load_scene(p) for p in self.cfg.val_scenes]
        check_apart(self.areas, self.scenes)
        self.area_grids = [area_chips(a, self.cfg) for a in self.areas]  # found once, like the split's chips
        self.split = split_chips(self.scenes, self.cfg)
        train_pixels = self.split.class_pixels["train"]
        self.codes = sorted(train_pixels)
        self.norm = fit_normalisation(self.scenes, self.split.chips["train"], self.cfg, reflectance=self.reflectance_input)
        total = sum(train_pixels.values())
        freq = np.array([train_pixels[c] / total for c in self.codes])
        weights = 1 / np.sqrt(freq)
        self.class_weights = (weights / weights.mean()).tolist()  # inverse sqrt frequency, mean 1

    def dataset(self, split: str, augment: str = "none", jitter: bool = False, length: int | None = None,
                twins: bool = False, scenes: list[SceneArrays] | None = None, windows: bool = False) -> ChipDataset:
        """Chips of one split; with ``twins``, again on the twins of their scenes (``data.val_twins``);
        ``scenes`` swaps in other scenes on the same grids; ``windows``: ``data.window_statistics`` applies."""
        scenes, blocks, chips = self._chips(split, twins, scenes)
        return ChipDataset(scenes, chips, blocks, self.cfg, self.norm, self.codes, augment, jitter, length, windows)

    def _chips(self, split: str, twins: bool, scenes: list[SceneArrays] | None = None
               ) -> tuple[list[SceneArrays], list[SceneBlocks], list[Chip]]:
        """The scenes, their blocks and the chips of one split (with ``twins``: on the twins too)."""
        scenes, blocks, chips = list(scenes or self.scenes), list(self.split.blocks), list(self.split.chips[split])
        for i, twin in (self.twins.items() if twins else ()):
            scenes.append(twin)
            blocks.append(self.split.blocks[i])
            chips += [Chip(len(scenes) - 1, c.row, c.col) for c in self.split.chips[split] if c.scene == i]
        return scenes, blocks, chips

    def _with_areas(self, scenes: list[SceneArrays], blocks: list[SceneBlocks], chips: list[Chip]) -> ChipDataset:
        """A dataset of ``chips`` and, after them, every chip of the validation areas (``data.val_scenes``)."""
        scenes, blocks, chips = list(scenes), list(blocks), list(chips)
        for area, (positions, area_blocks) in zip(self.areas, self.area_grids):
            chips += [Chip(len(scenes), r, k) for r, k in positions]
            scenes.append(area)
            blocks.append(area_blocks)
        return ChipDataset(scenes, chips, blocks, self.cfg, self.norm, self.codes)

    def validation_dataset(self) -> ChipDataset:
        """Validation chips of the scenes and, again, of their twins, and every chip of the validation
        areas: a model is then selected on both processing levels and on ground it never saw, as it
        will be used."""
        return self._with_areas(*self._chips("val", twins=True))

    def area_dataset(self) -> ChipDataset:
        """Every chip of the validation areas alone."""
        return self._with_areas([], [], [])

    def _loader(self, dataset: ChipDataset, shuffle: bool, persistent: bool = False) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
                          worker_init_fn=_seed_worker if workers else None, persistent_workers=persistent and workers > 0,
                          generator=torch.Generator().manual_seed(self.cfg.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        """Augmented training chips (and their twins' with ``data.train_on_twins``), ``data.samples_per_epoch``
        an epoch; the workers live as long as the fit, not one epoch."""
        cfg = self.cfg
        chips = self.dataset("train", cfg.augmentation, cfg.jitter, cfg.samples_per_epoch, twins=cfg.train_on_twins,
                             windows=True)
        return self._loader(chips, shuffle=True, persistent=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation blocks (with the twins) and, as a second loader, the validation areas: the
        module scores both together (val mIoU) and the areas alone (val area mIoU)."""
        blocks = self._loader(self.dataset("val", twins=True), shuffle=False, persistent=True)
        return [blocks, self._loader(self.area_dataset(), shuffle=False, persistent=True)] if self.areas else blocks

    def calibration_dataset(self, size: int, limit: int) -> ChipDataset:
        """Up to ``limit`` windows of ``size`` px (at most the scene), overlapping by half, over the training
        scenes (and their twins with ``data.train_on_twins``), evenly spaced, in seeded order, harmonised with
        their whole scene's statistics and not augmented: what prediction feeds the model
        (``lc.learning.batchnorm``)."""
        scenes, blocks, _ = self._chips("train", self.cfg.train_on_twins)
        size = min(size, *(min(s.height, s.width) // NET_MULTIPLE * NET_MULTIPLE for s in scenes))
        grid = [Chip(i, r, c) for i, s in enumerate(scenes)
                for r in tile_origins(s.height, size, size // 2) for c in tile_origins(s.width, size, size // 2)]
        windows = [w for w in grid[:: max(1, -(-len(grid) // limit))]  # read only the windows kept
                   if (np.asarray(scenes[w.scene].image[w.row : w.row + size, w.col : w.col + size]) > 0
                       ).any(axis=-1).mean() > 1 - self.cfg.max_nodata]
        np.random.default_rng(self.cfg.seed).shuffle(windows)  # each batch from several places
        cfg = self.cfg.model_copy(update={"chip_size": size})
        return ChipDataset(scenes, windows, blocks, cfg, self.norm, self.codes)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)
