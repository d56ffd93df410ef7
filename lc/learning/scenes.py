"""Scenes for training: each scene bundle is decoded once into a memory-mapped cache
(``cache/`` in the bundle: image (H, W, bands) uint16, labels (H, W) uint8 and the scene's
statistics); every process (data-loader workers included) opens its own maps."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio

from lc.learning.harmonise import SceneStats, sample_stride, scene_statistics
from lc.raster import atomic_output


@dataclass
class SceneArrays:
    """A scene bundle's pixels as memory maps (opened lazily, once per process)."""

    path: Path
    bands: tuple[str, ...]
    height: int
    width: int
    stats: SceneStats
    crs: str = ""
    origin: tuple[int, int] = (0, 0)  # the map-grid (row, col) of pixel (0, 0): -north / res, west / res
    res: float = 10.0
    _maps: dict = field(default_factory=dict, repr=False)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in the scene's CRS."""
        west, north = self.origin[1] * self.res, -self.origin[0] * self.res
        return west, north - self.height * self.res, west + self.width * self.res, north

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

    def window_statistics(self, n: int, seed: int) -> list[SceneStats]:
        """Statistics of ``n`` random windows of the scene, from a tenth of its area to all of it (seeded): the
        scene statistics of other class mixes. Sampled like the scene's own (every ``sample_stride`` pixel).
        Only windows mostly holding data count; a scene that offers none within ``20 n`` draws gives its own."""
        rng = np.random.default_rng(seed)
        stride = sample_stride(self.height, self.width)
        out = []
        for _ in range(20 * n):
            if len(out) == n:
                break
            side = np.sqrt(rng.uniform(0.1, 1.0))
            h, w = max(int(self.height * side), stride), max(int(self.width * side), stride)
            row, col = rng.integers(0, self.height - h + 1), rng.integers(0, self.width - w + 1)
            sample = np.asarray(self.image[row : row + h : stride, col : col + w : stride]).reshape(-1, len(self.bands))
            if (sample > 0).all(axis=1).mean() > 0.5:  # mostly data, not the swath's edge
                window = scene_statistics(sample, self.bands)
                out.append(replace(window, level=self.stats.level, sun_zenith=self.stats.sun_zenith,
                                   view_zenith=self.stats.view_zenith))
        return out or [self.stats]


def _build_cache(scene: Path) -> SceneStats:
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
    return stats


def _cached_statistics(scene: Path) -> SceneStats | None:
    """The cache's scene statistics; None where there is no cache, an older image, or an older cache format."""
    path = scene / "cache" / "stats.json"
    if not path.exists() or path.stat().st_mtime < (scene / "image.tif").stat().st_mtime:
        return None
    try:
        return SceneStats.from_dict(json.loads(path.read_text()))
    except TypeError:  # written before a statistic was added
        return None


def load_scene(scene: Path) -> SceneArrays:
    """Open a scene bundle for training, building its cache on first use."""
    scene = Path(scene)
    if not (scene / "scene.json").exists():
        raise FileNotFoundError(f"{scene}: not a scene bundle (no scene.json); run `lc prepare` first")
    cache = scene / "cache"
    with open(scene / ".cache.lock", "w") as lock:  # parallel workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        stats = _cached_statistics(scene) or _build_cache(scene)
    info = json.loads((scene / "scene.json").read_text())
    stats = stats.with_scene(info)
    image = np.load(cache / "image.npy", mmap_mode="r")
    res, _, west, _, _, north = info["transform"]
    origin = (round(-north / res), round(west / res))
    return SceneArrays(scene, stats.bands, image.shape[0], image.shape[1], stats, info["crs"], origin, res)
