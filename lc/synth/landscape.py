"""Synthetic landscapes with the structure of real land, as a 10 m WorldCover class map.

Terrain drives everything: a river carves a valley, lakes sit in hollows, wetlands fringe
the water, fields form rectangular patchworks on the lowland, towns with street grids and
small parks grow near the river and are joined by roads, forests cover large patches of
the hills, shrub and bare ground take the high terrain. Every field and patch is an
*object* (its own id) so that the spectra can vary between objects as well as within them.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

TREE, SHRUB, GRASS, CROP, BUILT, BARE, WATER, WETLAND = 10, 20, 30, 40, 50, 60, 80, 90

# Crop states of a field (spectra differ; all are WorldCover cropland except meadows).
CROP_STATES = ("green", "ripening", "ploughed", "stubble", "meadow")
CROP_STATE_P = (0.34, 0.18, 0.2, 0.16, 0.12)


@dataclass
class Landscape:
    """A class map and what the spectra need to know about it (all arrays share one grid)."""

    classes: np.ndarray  # uint8 WorldCover codes
    objects: np.ndarray  # int32 object id, unique across classes
    crop_state: np.ndarray  # int8 index into CROP_STATES for field pixels, -1 elsewhere
    elevation: np.ndarray  # float32, 0..1
    shading: np.ndarray  # float32 illumination factor from the terrain slope


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale`` pixels across."""
    h, w = shape
    coarse = (max(2, int(np.ceil(h / scale)) + 3), max(2, int(np.ceil(w / scale)) + 3))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 0.8)
    big = cv2.resize(field, (int(coarse[1] * scale), int(coarse[0] * scale)), interpolation=cv2.INTER_CUBIC)
    oy, ox = rng.integers(0, big.shape[0] - h + 1), rng.integers(0, big.shape[1] - w + 1)
    out = big[oy : oy + h, ox : ox + w]
    return ((out - out.mean()) / (out.std() + 1e-6)).astype(np.float32)


def fractal(rng: np.random.Generator, shape: tuple[int, int], scales: tuple[float, ...]) -> np.ndarray:
    """Sum of noise octaves, amplitude growing with scale, rescaled to 0..1."""
    total = sum(s**0.6 * smooth_noise(rng, shape, s) for s in scales)
    lo, hi = np.percentile(total, (0.5, 99.5))
    return np.clip((total - lo) / (hi - lo), 0, 1).astype(np.float32)


def _river(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A meandering river across the grid, 3-7 px wide."""
    h, w = shape
    n = 200
    t = np.linspace(0, 1, n)
    vertical = rng.random() < 0.5
    length, across = (h, w) if vertical else (w, h)
    base = across * rng.uniform(0.3, 0.7) + across * rng.uniform(-0.2, 0.2) * t
    meander = sum(
        across * a * np.sin(2 * np.pi * (f * t + rng.random()))
        for a, f in ((0.08, 1.3), (0.03, 3.7), (0.01, 9.0))
    )
    along = t * (length + 40) - 20
    pos = base + meander
    pts = np.stack([pos, along] if vertical else [along, pos], axis=1)
    mask = np.zeros(shape, np.uint8)
    widths = np.interp(t, [0, 1], rng.uniform(3, 7, 2))
    for i in range(n - 1):
        p0, p1 = pts[i].astype(np.int32), pts[i + 1].astype(np.int32)
        cv2.line(mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, int(round(widths[i])))
    return mask.astype(bool)


def _lakes(rng: np.random.Generator, elevation: np.ndarray, count: int) -> np.ndarray:
    """Lakes with irregular shores, placed in low terrain."""
    h, w = elevation.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    mask = np.zeros((h, w), bool)
    low = np.argwhere(elevation < np.percentile(elevation, 25))
    shore = smooth_noise(rng, (h, w), 12)
    for _ in range(count):
        cy, cx = low[rng.integers(len(low))]
        a, b = rng.uniform(15, 50, 2)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask |= (u / a) ** 2 + (v / b) ** 2 + 0.35 * shore < 1
    return mask


def _fields(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A patchwork of rectangular fields (ids from 1) in a slightly rotated grid."""
    h, w = shape
    angle = rng.uniform(-0.35, 0.35)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    u -= u.min()
    v -= v.min()
    row_edges = np.cumsum(rng.uniform(18, 55, int(v.max() / 18) + 2))
    rows = np.searchsorted(row_edges, v)
    ids = np.zeros(shape, np.int32)
    next_id = 1
    for r in range(len(row_edges) + 1):
        in_row = rows == r
        if not in_row.any():
            continue
        col_edges = np.cumsum(rng.uniform(14, 70, int(u.max() / 14) + 2))
        cols = np.searchsorted(col_edges, u[in_row])
        ids[in_row] = next_id + cols
        next_id += len(col_edges) + 1
    return ids


def _towns(
    rng: np.random.Generator, suitable: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Towns: a street grid of built blocks with small green gaps. Returns (built, parks, centres)."""
    h, w = suitable.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    built = np.zeros((h, w), bool)
    parks = np.zeros((h, w), bool)
    centres = []
    candidates = np.argwhere(suitable)
    edge = smooth_noise(rng, (h, w), 10)
    for _ in range(count):
        if len(candidates) == 0:
            break
        cy, cx = candidates[rng.integers(len(candidates))]
        centres.append((int(cy), int(cx)))
        radius = rng.uniform(25, 65)
        town = np.hypot(yy - cy, xx - cx) + 0.3 * radius * edge < radius
        angle = rng.uniform(0, np.pi / 2)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        pitch = rng.uniform(6, 10)
        block = (np.floor(u / pitch).astype(np.int64) * 7919 + np.floor(v / pitch).astype(np.int64)) % 9973
        green_blocks = rng.random(9973) < 0.12
        green = green_blocks[block] & town
        green &= (np.mod(u, pitch) >= 1) & (np.mod(v, pitch) >= 1)  # streets stay built
        built |= town & ~green
        parks |= green
    return built, parks, centres


def make_landscape(shape: tuple[int, int], seed: int, aridity: float = 0.0) -> Landscape:
    """Generate a landscape; ``aridity`` (0..1) shifts the balance from forest to shrub and bare."""
    rng = np.random.default_rng(seed)
    h, w = shape
    size = float(np.sqrt(h * w))
    elevation = fractal(rng, shape, (size / 1.2, size / 3.5, size / 9, 12.0))

    river = _river(rng, shape)
    dist_river = cv2.distanceTransform((~river).astype(np.uint8), cv2.DIST_L2, 5)
    valley = 1 - np.exp(-dist_river / (0.12 * size))
    elevation = (elevation * (0.35 + 0.65 * valley)).astype(np.float32)
    area_km2 = h * w / 1e4
    lakes = _lakes(rng, elevation, int(rng.integers(1, 3) + area_km2 / 40))
    water = river | lakes

    q = np.percentile(elevation, (45, 72, 88, 94))
    classes = np.full(shape, GRASS, np.uint8)

    forest_noise = smooth_noise(rng, shape, size / 6) + 0.6 * smooth_noise(rng, shape, 25)
    forest = (forest_noise > 0.35 + 0.8 * aridity) & (elevation > q[0] * 0.8)
    high_noise = smooth_noise(rng, shape, 20)
    shrub = elevation + 0.04 * high_noise > q[1] - 0.05 * aridity
    bare = elevation + 0.05 * high_noise > q[2] - 0.08 * aridity
    classes[forest & ~bare] = TREE
    classes[shrub & ~forest] = SHRUB
    classes[bare & ~(forest & (elevation < q[3]))] = BARE

    ag_zone = (elevation < q[0]) & (smooth_noise(rng, shape, size / 5) > -0.6) & ~forest
    field_ids = _fields(rng, shape)
    states = rng.choice(len(CROP_STATES), p=CROP_STATE_P, size=field_ids.max() + 1).astype(np.int8)
    crop_state = np.where(ag_zone, states[field_ids], -1).astype(np.int8)
    meadow = crop_state == CROP_STATES.index("meadow")
    classes[ag_zone & ~meadow] = CROP
    classes[ag_zone & meadow] = GRASS

    dist_water = cv2.distanceTransform((~water).astype(np.uint8), cv2.DIST_L2, 5)
    wet_noise = smooth_noise(rng, shape, 15)
    wetland = (dist_water < 4 + 10 * (wet_noise + 1)) & (wet_noise > 0.1) & (elevation < q[0])
    classes[wetland] = WETLAND
    crop_state[wetland] = -1

    suitable = (elevation < q[0]) & ~water & (dist_water > 8) & (dist_river < 0.35 * size)
    built, parks, centres = _towns(rng, suitable, int(1 + area_km2 / 18))
    for (y0, x0), (y1, x1) in zip(centres, centres[1:]):
        road = np.zeros(shape, np.uint8)
        cv2.line(road, (x0, y0), (x1, y1), 1, 2)
        built |= road.astype(bool)
    classes[built] = BUILT
    classes[parks] = np.where(smooth_noise(rng, shape, 6)[parks] > 0.3, TREE, GRASS)
    classes[water] = WATER
    crop_state[built | parks | water] = -1

    objects = _objects(classes, np.where(crop_state >= 0, field_ids, 0))
    gy, gx = np.gradient(ndimage.gaussian_filter(elevation, 2) * 300.0)  # ~300 m relief
    sun = np.array([-0.5, 0.6])  # from the south-east, in (row, col)
    shading = 1 + 0.15 * np.tanh(-(gy * sun[0] + gx * sun[1]))
    return Landscape(classes, objects, crop_state, elevation, shading.astype(np.float32))


def _objects(classes: np.ndarray, field_ids: np.ndarray) -> np.ndarray:
    """Object ids: each field is an object; elsewhere connected patches of one class."""
    objects = np.zeros(classes.shape, np.int32)
    next_id = 1
    for code in np.unique(classes):
        mask = (classes == code) & (field_ids == 0)
        labels, n = ndimage.label(mask)
        objects[mask] = labels[mask] + next_id - 1
        next_id += n
    fields = field_ids > 0
    objects[fields] = field_ids[fields] + next_id
    return objects
