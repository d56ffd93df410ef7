"""Large-scale mapping: a synthetic region across the UTM 34/35 border, mapped by `lc map` on a
real local Dask cluster; the overlap rule, the mosaics, resuming and failures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, shape
from shapely.ops import unary_union
from typer.testing import CliRunner

from lc.cli.main import app
from lc.mapping.mosaic import TileMap, cell_window, owned_strips
from lc.mapping.region import tile_map_path
from lc.synth.region import synthesize_region
from lc.tracking.registry import register
from lc.tracking.train import train
from tests.conftest import tiny_config
from tests.helpers import mlflow_store_in


def tile(name: str, x0: float, y0: float, size: int = 100, epsg: int = 32634) -> TileMap:
    return TileMap(Path(name), CRS.from_epsg(epsg), Affine(10, 0, x0, 0, -10, y0), size, size)


def test_cells_of_a_tile_grid_partition_its_union_without_gap_or_overlap() -> None:
    # four 100 px tiles every 91 px, as MGRS tiles (109.8 km every 100 km)
    tiles = [tile(f"{r}{c}", 500_000 + c * 910, 4_500_000 - r * 910) for r in range(2) for c in range(2)]
    cover = np.zeros((191, 191), dtype=int)
    for t in tiles:
        cell = cell_window(t, tiles)
        col = round((t.transform.c - 500_000) / 10) + cell.col_off
        row = round((4_500_000 - t.transform.f) / 10) + cell.row_off
        cover[row:row + cell.height, col:col + cell.width] += 1
    assert (cover == 1).all()  # every pixel of the union belongs to exactly one tile
    first = cell_window(tiles[0], tiles)  # cut at the midline, 4.5 px into the 9 px overlap: rounds up
    assert (first.col_off, first.row_off, first.width, first.height) == (0, 0, 96, 96)
    alone = cell_window(tiles[0], tiles[:1])
    assert (alone.width, alone.height) == (100, 100)


def footprint(t: TileMap, crs: str = "EPSG:32634"):
    return shape(transform_geom(t.crs, crs, box(*t.bounds).segmentize(20).__geo_interface__))


@pytest.fixture(scope="module")
def region(small_scenes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("region")
    raw = folder / "raw"
    manifest = synthesize_region(raw, size=96)
    with mlflow_store_in(folder):
        result = train(tiny_config(small_scenes))
        register(result.model_uri, result.val["miou"], description="test", tags={})
        yield folder, raw, manifest


def test_the_synthetic_region_shows_the_same_land_where_products_overlap(region) -> None:
    folder, raw, manifest = region
    assert [p["area"]["epsg"] for p in manifest["products"]] == [32634] * 4 + [32635]
    truths = {p["scene"]: rasterio.open(raw / p["truth"]) for p in manifest["products"]}
    west, east = truths["region_00_L2A"], truths["region_01_L2A"]
    overlap = west.bounds.right - east.bounds.left
    assert overlap == 90.0  # 9 of 96 px
    a = west.read(1)[:, -9:]
    b = east.read(1)[:, :9]
    assert (a == b).all()
    tiles = [TileMap(Path(t.name), t.crs, t.transform, t.width, t.height) for t in truths.values()]
    zone35 = footprint(tiles[-1])
    assert zone35.intersection(footprint(tiles[1])).area > 0.3 * 960 * 960  # across the border too


def write_region(folder: Path, raw: Path, products: Path) -> Path:
    spec = {"name": "test-region", "products_dir": str(products), "worldcover_dir": str(raw),
            "out": str(folder / "maps"), "predict": {"chip_size": 32, "overlap": 8, "batch_size": 8}}
    path = folder / "region.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_lc_map_on_a_local_cluster_resumes_and_isolates_a_failure(region) -> None:
    folder, raw, manifest = region
    products = folder / "products"
    shutil.copytree(raw, products, ignore=shutil.ignore_patterns("truth", "ESA_*", "synth.json"))
    broken = products / manifest["products"][2]["path"]
    band = next(broken.rglob("*_B04_10m.jp2"))
    good = band.read_bytes()
    band.write_bytes(good[: len(good) // 3])  # a truncated band
    spec = write_region(folder, raw, products)
    result = CliRunner().invoke(app, ["map", str(spec), "--workers", "2"])
    assert result.exit_code == 1, result.output
    state = json.loads((folder / "maps" / "region.json").read_text())
    failed = state["products"][broken.name]
    assert failed["status"] == "failed" and band.name in failed["error"]
    done = {k: v for k, v in state["products"].items() if v["status"] == "done"}
    assert len(done) == 4 and len({v["worker"] for v in done.values()}) == 2  # both workers mapped
    assert state["model_version"] == "1" and "mosaic_epsg32634.vrt" in " ".join(state["mosaics"])

    band.write_bytes(good)  # repaired; and a map without its record (a run killed before the record was written)
    unfinished = tile_map_path(folder / "maps", products / manifest["products"][0]["path"])
    unfinished.with_suffix(".json").unlink()
    result = CliRunner().invoke(app, ["map", str(spec), "--workers", "1"])  # maps those two again, and only them
    assert result.exit_code == 0, result.output
    state = json.loads((folder / "maps" / "region.json").read_text())
    assert "3 already mapped" in result.output and "2 to map" in result.output
    assert all(v["status"] == "done" for v in state["products"].values())
    assert sum(bool(v.get("skipped")) for v in state["products"].values()) == 3


def test_the_report_shows_the_region(region, tmp_path) -> None:
    from lc.reporting.report import Report, region_section

    folder, *_ = region
    if not (folder / "maps" / "region.json").exists():
        pytest.skip("needs the mapped region of the test before")
    report = Report("region")
    region_section(report, folder / "maps", tmp_path)
    (heading, text, figures), = report.sections
    assert heading == "Region" and text.count("| done") == 5 and "every place counted once" in text
    assert sorted(f.name for f in figures) == ["region_mosaic_epsg32634.png", "region_mosaic_epsg32635.png"]


def test_the_region_counts_every_place_once(region) -> None:
    folder, *_ = region
    maps = folder / "maps"
    if not (maps / "region.metrics.json").exists():
        pytest.skip("needs the mapped region of the test before")
    metrics = json.loads((maps / "region.metrics.json").read_text())
    tiles = [TileMap.open(Path(p)) for p in metrics["tiles"]]
    union = unary_union([footprint(t) for t in tiles]).area / 100  # in 10 m pixels
    naive = sum(t.width * t.height for t in tiles)
    assert metrics["n_pixels"] == pytest.approx(union, rel=0.01) and naive > 1.2 * union
    with rasterio.open(maps / "mosaic_epsg32634.vrt") as vrt:
        mosaic = vrt.read(1)
        for t in [t for t in tiles if t.crs == vrt.crs]:
            cell = cell_window(t, tiles)
            with rasterio.open(t.path) as src:
                own = src.read(1, window=cell)
            col = round((t.transform.c - vrt.transform.c) / 10) + cell.col_off
            row = round((vrt.transform.f - t.transform.f) / 10) + cell.row_off
            assert (mosaic[row:row + cell.height, col:col + cell.width] == own).all()
    (east,) = [t for t in tiles if t.zone == 35]
    owned = sum(int(m.sum()) for _, m in owned_strips(east, tiles))
    assert 0.5 * east.width * east.height < owned < east.width * east.height  # its strip west of 24°E is zone 34's


def test_one_sample_design_over_the_whole_region(region, tmp_path) -> None:
    folder, raw, _ = region
    maps = folder / "maps"
    if not (maps / "region.metrics.json").exists():
        pytest.skip("needs the mapped region of the test before")
    points = tmp_path / "region_points.gpkg"
    printed = CliRunner().invoke(app, ["sample", str(maps), "--n", "300", "--min-per-class", "10", "--out", str(points)])
    assert printed.exit_code == 0, printed.output
    frame = gpd.read_file(points)
    design = json.loads((tmp_path / "region_points.gpkg.design.json").read_text())
    metrics = json.loads((maps / "region.metrics.json").read_text())
    # the strata are the region's mapped pixels, each place once: as many as the region's agreement counted
    assert sum(s["mapped_pixels"] for s in design["strata"]) == sum(
        c["mapped_pixels"] for c in metrics["class_areas"].values())
    assert frame.crs == "EPSG:4326" and set(frame["epsg"]) == {32634, 32635} and len(frame) == 300
    for name, group in frame.groupby("tile"):
        with rasterio.open(maps / "tiles" / name) as src:
            under = src.read(1)[group["row"], group["col"]]
        assert (under == group["stratum"]).all()
    worldcover = [str(p) for p in sorted(raw.glob("ESA_WorldCover_*_Map.tif"))]
    result = CliRunner().invoke(app, ["evaluate", str(maps), "--points", str(points), *sum((["--worldcover", w]
                                                                                            for w in worldcover), [])])
    assert result.exit_code == 0, result.output
    assessment = json.loads((maps / "region.assessment.json").read_text())
    assert assessment["n_used"] == 300 and assessment["design"].startswith("stratified")
    assert sum(c["mapped_pixels"] for c in assessment["per_class"].values()) == sum(
        s["mapped_pixels"] for s in design["strata"])
    from lc.reporting.report import Report, region_section

    report = Report("region")
    region_section(report, maps, tmp_path)
    assert [h for h, *_ in report.sections] == ["Region", "Region: accuracy and class areas estimated from a sample"]


def test_a_killed_lc_map_keeps_what_it_finished_and_redoes_the_rest(region, tmp_path) -> None:
    folder, raw, _ = region
    spec = write_region(tmp_path, raw, raw)
    tiles = tmp_path / "maps" / "tiles"

    def records() -> list[Path]:  # <product>.json, written last; not <product>.metrics.json, written before
        return [p for p in tiles.glob("*.json") if "." not in p.stem]

    run = subprocess.Popen([sys.executable, "-m", "lc.cli.main", "map", str(spec), "--workers", "1"], cwd=folder,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not records() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.1)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the command, its cluster and its workers, at once
        run.wait()
    finished = len(records())
    assert 1 <= finished < 5, finished
    result = CliRunner().invoke(app, ["map", str(spec), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"{finished} already mapped" in result.output and f"{5 - finished} to map" in result.output
    assert len(records()) == 5


def test_a_gpu_machine_gets_one_worker_per_gpu_and_half_precision(monkeypatch) -> None:
    """The sizing rule and the CUDA precision, without a GPU here: torch's answers are replaced."""
    import torch

    from lc.learning.hardware import inference_dtype
    from lc.mapping.region import default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_workers() == (2, 8)  # one per 8 cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert default_workers() == (4, 4)
    cuda = torch.device("cuda")
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert inference_dtype("auto", cuda) == dtype
