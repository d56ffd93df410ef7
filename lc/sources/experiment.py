"""An experiment's raw products and scenes: generate (offline) or acquire, then prepare.

``make_data(cfg)`` is what ``make data EXP=…`` runs. It reuses what already exists and is
still current, so running it again costs nothing: synthetic products are made again when the
seed, size or product list changed, and a scene bundle is prepared again when its product or
ground truth is not the one its ``scene.json`` records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lc.config import ExperimentConfig
from lc.sentinel2.prepare import prepare, provenance
from lc.sentinel2.safe import open_product
from lc.synth.products import DEFAULT_PRODUCTS, synthesize

MANIFEST = "synth.json"
PRODUCTS = "products.json"  # what `make data` made: product, ground truth, role, scene


@dataclass(frozen=True)
class RawProduct:
    """A product on disk with the ground-truth tiles that cover it and its role."""

    path: Path
    worldcover: list[Path]
    role: str
    scene: str


def synthetic_products(cfg: ExperimentConfig) -> list[RawProduct]:
    """Generate the offline products unless ``raw_dir`` already holds them for this seed, size and list."""
    raw, src = cfg.raw_dir, cfg.source
    manifest_path = raw / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    wanted = (src.seed, src.size, [s.scene for s in DEFAULT_PRODUCTS])
    if manifest is None or (manifest["seed"], manifest["size"], [p["scene"] for p in manifest["products"]]) != wanted:
        manifest = synthesize(raw, seed=src.seed, size=src.size)
    return [
        RawProduct(raw / p["path"], [raw / w for w in p["worldcover"]], p["role"], p["scene"])
        for p in manifest["products"]
    ]


def acquired_products(cfg: ExperimentConfig) -> list[RawProduct]:
    """Search and download the experiment's products and WorldCover tiles (network)."""
    from lc.sources import cdse, http, worldcover  # only this path needs the network code

    src = cfg.source
    http.check_reachable(http.endpoints())
    products = []
    for role, spec in (("train", src.train), ("predict", src.predict)):
        if spec is None:
            continue
        hits = cdse.latest_baselines([
            hit
            for tile in spec.tiles
            for hit in cdse.search_sentinel2(
                tile=tile, bbox=None, start=spec.start, end=spec.end, level=spec.level, max_cloud=spec.max_cloud
            )
        ])
        for path in cdse.fetch_sentinel2(hits, cfg.raw_dir):
            bbox = product_bbox(path)
            tiles = worldcover.fetch_worldcover(bbox, src.worldcover_year, cfg.raw_dir / "worldcover")
            products.append(RawProduct(path, tiles, role, scene_name(path)))
    return products


def product_bbox(path: Path) -> tuple[float, float, float, float]:
    """Longitude/latitude box of a product's tile, from its metadata."""
    from rasterio.warp import transform_bounds

    from lc.sentinel2.prepare import product_grid

    grid = product_grid(open_product(path))
    return transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21)


def scene_name(product: Path) -> str:
    """Scene bundle name of a real product: tile, date and level, e.g. ``T34SEJ_20210925_L1C``."""
    meta = open_product(product).metadata
    parts = meta.product_uri.split("_")
    return f"{parts[5]}_{parts[2][:8]}_{meta.level}"


def experiment_products(cfg: ExperimentConfig, role: str) -> list[RawProduct]:
    """The products of ``role`` that ``make data`` made for an experiment."""
    listing = cfg.raw_dir / PRODUCTS
    if not listing.exists():
        raise FileNotFoundError(f"{listing} does not exist: run `make data EXP={cfg.name}` first")
    products = [RawProduct(Path(p["path"]), [Path(w) for w in p["worldcover"]], p["role"], p["scene"])
                for p in json.loads(listing.read_text())]
    return [p for p in products if p.role == role]


def is_current(scene: Path, product: RawProduct) -> bool:
    """Whether a scene bundle was prepared from exactly this product and ground truth (same
    files, sizes and modification times, as its ``scene.json`` records them)."""
    if not (scene / "scene.json").exists():
        return False
    recorded = json.loads((scene / "scene.json").read_text())["provenance"]
    return (recorded["product"] == provenance(product.path)
            and recorded["worldcover"] == [provenance(w) for w in product.worldcover])


def make_data(cfg: ExperimentConfig, overwrite: bool = False) -> list[Path]:
    """Raw products (synthetic or acquired) -> prepared scene bundles under ``scenes_dir``."""
    products = synthetic_products(cfg) if cfg.source.kind == "synth" else acquired_products(cfg)
    (cfg.raw_dir / PRODUCTS).write_text(json.dumps([
        {"path": str(p.path), "worldcover": [str(w) for w in p.worldcover], "role": p.role, "scene": p.scene}
        for p in products
    ], indent=1))
    scenes = []
    for product in products:
        out = cfg.scenes_dir / product.scene
        if overwrite or not is_current(out, product):
            prepare(product.path, out, product.worldcover, overwrite=True)
        scenes.append(out)
    missing = [s for s in cfg.data.scenes if not (s / "scene.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(map(str, missing))}: listed in data.scenes of the config but not prepared by its source"
        )
    return scenes
