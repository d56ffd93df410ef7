"""A sample design for accuracy assessment (Olofsson et al. 2014, section 4): stratified random
sampling with the map classes as strata, proportional allocation with a minimum per stratum,
and the sample size derived from a target standard error of overall accuracy.

Points are pixel centres drawn without replacement. Drawing streams the map by strips twice
(count the strata, then pick the drawn ranks), so a full tile or a region of tiles needs no
more than a strip in memory. The same seed and map give the same points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from lc.worldcover import CODES, NODATA, class_name

DESIGN_FORMAT = "landcover-sample/1"


class Stratum(BaseModel):
    """One map class as a stratum: its mapped pixels N_h and the points n_h drawn from them."""

    model_config = ConfigDict(frozen=True)
    code: int
    name: str
    mapped_pixels: int
    weight: float  # W_h = N_h / N
    sample_size: int
    inclusion_probability: float  # n_h / N_h


class SampleDesign(BaseModel):
    """What was drawn and how: written beside the points, checked when they are assessed."""

    model_config = ConfigDict(frozen=True)
    format: Literal["landcover-sample/1"] = DESIGN_FORMAT
    design: str = "stratified random sampling of pixels, strata = map classes (Olofsson et al. 2014)"
    allocation: str = "proportional to mapped area, at least min_per_stratum a stratum (all of a smaller one)"
    map: str
    crs: str
    pixel_area_m2: float
    seed: int
    n: int
    min_per_stratum: int
    target_se: float | None = None
    expected_users_accuracy: float | None = None
    strata: list[Stratum]

    def mapped_counts(self) -> dict[int, int]:
        return {s.code: s.mapped_pixels for s in self.strata}


def sample_size_for_se(mapped: Sequence[int], target_se: float, users_accuracy: float | Sequence[float]) -> int:
    """Olofsson et al. (2014) eq. 13: ``n = (sum_h W_h S_h / S(O))^2`` with ``S_h = sqrt(U_h (1 - U_h))``,
    ``U_h`` the user's accuracy expected of stratum h. Rounded up."""
    mapped = np.asarray(mapped, dtype=float)
    users = np.broadcast_to(np.asarray(users_accuracy, dtype=float), mapped.shape)
    if not 0 < target_se < 1 or np.any((users <= 0) | (users >= 1)) or mapped.sum() <= 0:
        raise ValueError(f"need 0 < target SE < 1 ({target_se}), 0 < expected user's accuracy < 1 and a mapped area")
    weights = mapped / mapped.sum()
    return math.ceil(round(float((weights * np.sqrt(users * (1 - users))).sum() / target_se) ** 2, 9))


def allocate(mapped: Sequence[int], n: int, minimum: int) -> np.ndarray:
    """Points per stratum: proportional to ``mapped``, at least ``minimum`` (or all pixels of a
    smaller stratum), summing to ``n``. Rounds by largest remainder."""
    size = np.asarray(mapped, dtype=np.int64)
    low, high = np.minimum(minimum, size), size
    if n > size.sum():
        raise ValueError(f"a sample of {n} points is larger than the {int(size.sum())} mapped pixels")
    if low.sum() > n:
        raise ValueError(f"{n} points cannot give {minimum} to each of the {int((size > 0).sum())} mapped classes "
                         f"({int(low.sum())} needed): raise the sample size or lower the minimum per class")
    share = _clipped_proportional(size.astype(float), float(n), low.astype(float), high.astype(float))
    counts = np.floor(share + 1e-9).astype(np.int64)
    remainder = share - counts
    for h in np.argsort(-remainder, kind="stable")[: n - int(counts.sum())]:
        counts[h] += 1
    return counts


def _clipped_proportional(size: np.ndarray, n: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Shares proportional to ``size`` summing to ``n``, each clipped into [low, high]: the
    strata that hit a bound are fixed there and the rest shared again, until none does."""
    fixed = np.zeros(size.shape, dtype=bool)
    share = np.zeros(size.shape)
    while True:
        free = ~fixed & (size > 0)
        left = n - share[fixed].sum()
        share[free] = left * size[free] / size[free].sum() if free.any() else 0.0
        below, above = free & (share < low), free & (share > high)
        if not (below.any() or above.any()):
            return share
        share[below], share[above] = low[below], high[above]
        fixed |= below | above


def count_strata(strips: Iterable[tuple[int, np.ndarray]]) -> np.ndarray:
    """(256,) pixels of each uint8 value."""
    counts = np.zeros(256, dtype=np.int64)
    for _, strip in strips:
        counts += np.bincount(strip.reshape(-1), minlength=256)
    return counts


def draw_ranks(mapped: np.ndarray, sizes: np.ndarray, seed: int) -> list[np.ndarray]:
    """For each stratum, the sorted ranks (in raster order) of the pixels drawn without replacement."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(int(big), size=int(n), replace=False)) if n else np.empty(0, np.int64)
            for big, n in zip(mapped, sizes)]


def pick_pixels(strips: Iterable[tuple[int, np.ndarray]], codes: Sequence[int],
                ranks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and stratum codes of the pixels with the drawn ranks, in one pass over the map."""
    seen = dict.fromkeys(codes, 0)
    wanted = dict(zip(codes, ranks))
    picked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for first_row, strip in strips:
        flat = strip.reshape(-1)
        order = np.argsort(flat, kind="stable")  # pixels grouped by value, raster order kept
        bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=256))])
        for code in codes:
            start, stop = seen[code], seen[code] + int(bounds[code + 1] - bounds[code])
            r = wanted[code]
            hit = r[(r >= start) & (r < stop)] - start
            if hit.size:
                pixels = order[bounds[code] + hit]
                rows, cols = np.divmod(pixels, strip.shape[1])
                picked.append((rows + first_row, cols, np.full(hit.size, code)))
            seen[code] = stop
    if not picked:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    rows, cols, strata = (np.concatenate(part) for part in zip(*picked))
    return rows, cols, strata


def design_for(map_path: str, crs: str, pixel_area: float, counts: np.ndarray, *, n: int | None, seed: int,
               min_per_stratum: int, target_se: float | None = None,
               expected_users_accuracy: float = 0.8) -> SampleDesign:
    """The design of a sample of a map whose value counts are ``counts`` (256,)."""
    unknown = sorted(set(np.flatnonzero(counts).tolist()) - {*CODES, NODATA})
    if unknown:
        raise ValueError(f"{map_path}: holds values that are not WorldCover classes: {unknown}")
    mapped = counts[list(CODES)]
    if mapped.sum() == 0:
        raise ValueError(f"{map_path}: no mapped pixel to sample")
    if (n is None) == (target_se is None):
        raise ValueError("give either a sample size or a target standard error of overall accuracy")
    present = mapped > 0
    if n is None:
        n = max(sample_size_for_se(mapped[present], target_se, expected_users_accuracy),
                int(np.minimum(min_per_stratum, mapped).sum()))
    sizes = allocate(mapped, n, min_per_stratum)
    total = mapped.sum()
    strata = [Stratum(code=c, name=class_name(c), mapped_pixels=int(big), weight=float(big / total),
                      sample_size=int(k), inclusion_probability=float(k / big))
              for c, big, k in zip(CODES, mapped, sizes) if big]
    return SampleDesign(map=map_path, crs=crs, pixel_area_m2=pixel_area, seed=seed, n=int(n),
                        min_per_stratum=min_per_stratum, target_se=target_se,
                        expected_users_accuracy=expected_users_accuracy if target_se is not None else None,
                        strata=strata)
