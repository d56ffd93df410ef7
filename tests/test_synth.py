"""Synthetic products: ESA's formats, realistic content, deterministic per seed."""

from __future__ import annotations

import hashlib
import re
import zipfile

import numpy as np
import rasterio

from lc.sentinel2.bands import L2A_BANDS
from lc.sentinel2.safe import open_product
from lc.synth.products import worldcover_name
from tests.helpers import make_products


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_set_roles_levels_and_zones(tiny_raw):
    raw, manifest = tiny_raw
    roles = [(p["role"], p["level"]) for p in manifest["products"]]
    assert roles.count(("train", "L1C")) >= 2
    predict = [p for p in manifest["products"] if p["role"] == "predict"]
    assert [p["level"] for p in predict] == ["L2A"]
    zones = {open_product(raw / p["path"]).tile.crs for p in manifest["products"]}
    train_zone = {open_product(raw / p["path"]).tile.crs for p in manifest["products"] if p["role"] == "train"}
    assert len(train_zone) == 1 and len(zones) == 2  # the area to map lies in another UTM zone


def test_products_follow_esa_layout(tiny_raw):
    raw, manifest = tiny_raw
    for p in manifest["products"]:
        product = open_product(raw / p["path"])
        assert product.level == p["level"] and product.metadata.processing_baseline == p["baseline"]
        offset = product.metadata.add_offset
        assert (offset is None) == (p["baseline"] < "04.00")
        if product.level == "L2A":
            assert product.bands == L2A_BANDS and "B10" not in product.band_files
            assert all("/IMG_DATA/R" in f for f in product.band_files.values())
    zipped = [p for p in manifest["products"] if p["zipped"]]
    assert zipped
    names = zipfile.ZipFile(raw / zipped[0]["path"]).namelist()
    assert names[0].split("/")[0].endswith(".SAFE") and any(n.endswith("MTD_MSIL1C.xml") for n in names)


def test_bands_at_native_resolution_lossless_utm(tiny_raw):
    raw, manifest = tiny_raw
    product = open_product(raw / manifest["products"][0]["path"])
    for band, res in (("B02", 10), ("B05", 20), ("B01", 60)):
        with rasterio.open(product.band_files[band]) as src:
            assert src.driver == "JP2OpenJPEG" and src.res == (res, res)
            assert src.crs.to_epsg() == 32634 and src.dtypes[0] == "uint16"


def test_worldcover_tiles_esa_grid_and_colours(tiny_raw):
    raw, manifest = tiny_raw
    assert worldcover_name(39, 21, 2021) in manifest["worldcover"]
    epirus = next(p for p in manifest["products"] if p["scene"] == "epirus_L1C")
    assert len(epirus["worldcover"]) == 2  # straddles the 21 degree meridian
    for name in manifest["worldcover"]:
        with rasterio.open(raw / name) as src:
            assert src.crs.to_epsg() == 4326
            assert np.isclose(src.res[0], 1 / 12000) and np.isclose(src.res[1], 1 / 12000)
            lon0 = int(re.search(r"_[NS]\d{2}([EW])(\d{3})_", name).group(2))
            col = (src.transform.c - lon0) * 12000
            assert np.isclose(col, round(col)), "tile window must sit on ESA's 1/12000 degree grid"
            assert src.colormap(1)[10][:3] == (0, 100, 0)
            assert src.dtypes[0] == "uint8" and src.nodata == 0


def test_landscape_has_eight_classes_and_mixed_pixels(tmp_path):
    manifest = make_products(tmp_path, size=240)
    truth = rasterio.open(tmp_path / manifest["products"][0]["truth"]).read(1)
    assert len(set(np.unique(truth)) - {0}) >= 8
    product = open_product(tmp_path / manifest["products"][0]["path"])
    with rasterio.open(product.band_files["B08"]) as src:
        nir = src.read(1).astype(float)
    water = truth == 80
    # water is dark in the NIR; pixels next to its border are mixed, between water and land
    inner = water & np.roll(water, 1, 0) & np.roll(water, -1, 0) & np.roll(water, 1, 1) & np.roll(water, -1, 1)
    border = water & ~inner
    assert nir[inner].mean() < nir[border].mean() < nir[~water].mean()


def test_deterministic_per_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_products(a, seed=3)
    make_products(b, seed=3)
    make_products(c, seed=4)
    jp2 = sorted(p.relative_to(a) for p in a.rglob("*.jp2"))
    assert jp2 and all(_digest(a / p) == _digest(b / p) for p in jp2)
    assert any(_digest(a / p) != _digest(c / p) for p in jp2 if (c / p).exists())
