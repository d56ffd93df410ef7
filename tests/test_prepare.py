"""SAFE + WorldCover -> scene bundle: radiometry, resampling, alignment, atomic output."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from lc.sentinel2.bands import BANDS, BY_NAME, TEN_M
from lc.sentinel2.prepare import prepare
from lc.sentinel2.resample import RESAMPLERS
from lc.sentinel2.safe import ProductError, open_product
from lc.synth.products import DEFAULT_PRODUCTS, EPIRUS, THRACE
from tests.helpers import make_products, variant


def _image(scene):
    with rasterio.open(scene / "image.tif") as src:
        return src.read(), src.descriptions, src.profile


def _native_reflectance(product, band):
    """(DN + offset) from the band file; valid values below 1 (negative reflectance) read as 1."""
    with rasterio.open(product.band_files[band]) as src:
        dn = src.read(1).astype(np.int64)
    return np.where(dn > 0, np.clip(dn + product.metadata.offset(band), 1, None), 0)


@pytest.mark.parametrize("scene", ["epirus_L1C", "thessaly_L1C", "thessaly_L2A", "thrace_L2A"])
def test_ten_metre_bands_are_reflectance_times_10000_exactly(tiny_raw, tiny_scenes, scene):
    raw, manifest = tiny_raw
    entry = next(p for p in manifest["products"] if p["scene"] == scene)
    product = open_product(raw / entry["path"])
    image, names, profile = _image(tiny_scenes[scene])
    assert names == product.bands and profile["dtype"] == "uint16" and profile["nodata"] == 0
    for band in TEN_M:
        expected = _native_reflectance(product, band)
        got = image[product.bands.index(band)]
        valid = got > 0
        assert valid.mean() > 0.9
        assert np.array_equal(got[valid], expected[valid])


def test_every_baseline_gives_the_same_values(tmp_path):
    old = variant(DEFAULT_PRODUCTS[0], baseline="02.09")
    new = variant(DEFAULT_PRODUCTS[0], baseline="05.10")
    l2a_old = variant(DEFAULT_PRODUCTS[3], baseline="02.14")
    l2a_new = variant(DEFAULT_PRODUCTS[3], baseline="05.10")
    images = {}
    for spec in (old, new, l2a_old, l2a_new):
        raw = tmp_path / f"raw-{spec.level}-{spec.baseline}"
        manifest = make_products(raw, spec)
        product = raw / manifest["products"][0]["path"]
        assert (open_product(product).metadata.add_offset is None) == (spec.baseline < "04.00")
        images[spec.level, spec.baseline] = _image(prepare(product, tmp_path / f"scene-{spec.level}-{spec.baseline}"))[0]
    assert np.array_equal(images["L1C", "02.09"], images["L1C", "05.10"])
    assert np.array_equal(images["L2A", "02.14"], images["L2A", "05.10"])


@pytest.mark.parametrize("method", RESAMPLERS)
def test_resampled_bands_keep_their_native_means(tiny_raw, tmp_path, method, recwarn):
    raw, manifest = tiny_raw
    product = open_product(raw / manifest["products"][0]["path"])
    image, _, _ = _image(prepare(product.path, tmp_path / method, method=method))
    assert not [w for w in recwarn if issubclass(w.category, NotGeoreferencedWarning)]  # scratch files stay quiet
    for band in ("B05", "B11", "B01", "B09"):
        f = BY_NAME[band].resolution // 10
        got = image[product.bands.index(band)].astype(float)
        h, w = got.shape
        means = got.reshape(h // f, f, w // f, f).mean(axis=(1, 3))
        native = _native_reflectance(product, band)
        rel = np.abs(means - native) / native
        assert np.median(rel) < 0.05, (band, method)  # interpolation is not mean-preserving per block
        assert abs(means.mean() - native.mean()) / native.mean() < 0.005, (band, method)


def test_zip_and_folder_give_identical_bundles(tmp_path):
    folder_raw, zip_raw = tmp_path / "folder", tmp_path / "zip"
    spec = DEFAULT_PRODUCTS[0]
    m1 = make_products(folder_raw, spec)
    m2 = make_products(zip_raw, variant(spec, zipped=True))
    assert m2["products"][0]["path"].endswith(".zip")
    scenes = []
    for raw, m in ((folder_raw, m1), (zip_raw, m2)):
        p = m["products"][0]
        scenes.append(prepare(raw / p["path"], tmp_path / f"scene-{raw.name}", [raw / w for w in p["worldcover"]]))
    for name in ("image.tif", "label.tif"):
        a = rasterio.open(scenes[0] / name)
        b = rasterio.open(scenes[1] / name)
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform and a.crs == b.crs
    meta = [json.loads((s / "scene.json").read_text()) for s in scenes]
    for key in ("product_id", "level", "processing_baseline", "crs", "transform", "bands", "class_pixels"):
        assert meta[0][key] == meta[1][key]


@pytest.mark.parametrize("scene", ["epirus_L1C", "thessaly_L1C", "thrace_L2A"])
def test_labels_align_with_the_generators_truth(tiny_raw, tiny_scenes, scene):
    raw, manifest = tiny_raw
    entry = next(p for p in manifest["products"] if p["scene"] == scene)
    truth = rasterio.open(raw / entry["truth"]).read(1)
    with rasterio.open(tiny_scenes[scene] / "label.tif") as src:
        labels = src.read(1)
        assert src.colormap(1)[40][:3] == (240, 150, 255)
    valid = truth > 0
    assert (labels[valid] == truth[valid]).mean() >= 0.995
    assert (labels[~valid] == 0).all()


def test_nodata_stays_nodata_in_image_and_labels(tiny_raw, tiny_scenes):
    image, _, _ = _image(tiny_scenes["thessaly_L1C"])
    labels = rasterio.open(tiny_scenes["thessaly_L1C"] / "label.tif").read(1)
    nodata = (image == 0).all(axis=0)
    assert 0.01 < nodata.mean() < 0.2  # the swath edge
    assert ((image == 0).any(axis=0) == nodata).all()  # a pixel is valid in every band or none
    assert (labels[nodata] == 0).all() and (labels[~nodata] > 0).all()


def test_scene_json_records_what_was_done(tiny_scenes):
    scene = json.loads((tiny_scenes["epirus_L1C"] / "scene.json").read_text())
    assert scene["level"] == "L1C" and scene["processing_baseline"] == "03.01"
    assert scene["bands"] == [b.name for b in BANDS] and scene["crs"] == "EPSG:32634"
    assert scene["resampling"]["to_10m"] == "sharpen" and len(scene["worldcover_tiles"]) == 2
    assert scene["transform"][2] == EPIRUS.ulx and scene["tile"] == "34SEJ"


# --- bad input: one clear error naming the file, nothing half-written -----------------------------


def _copy_product(tiny_raw, tmp_path, index=0):
    raw, manifest = tiny_raw
    entry = manifest["products"][index]
    dst = tmp_path / entry["path"]
    shutil.copytree(raw / entry["path"], dst)
    return dst, [raw / w for w in entry["worldcover"]]


def _assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_missing_band_file(tiny_raw, tmp_path):
    product, _ = _copy_product(tiny_raw, tmp_path)
    next(product.rglob("*_B03.jp2")).unlink()
    out = tmp_path / "scene"
    with pytest.raises(ProductError, match=r"B03\.jp2 is missing"):
        prepare(product, out)
    _assert_nothing_written(out)


@pytest.mark.parametrize(("damage", "message"), [
    ("truncate", r"_B04\.jp2: \d+ bytes, but manifest\.safe lists \d+: the file is truncated"),
    ("flip", r"_B04\.jp2: its MD5 differs from the one manifest\.safe lists"),
])
def test_a_band_file_that_is_not_what_the_manifest_lists(tiny_raw, tmp_path, damage, message):
    product, _ = _copy_product(tiny_raw, tmp_path)
    jp2 = next(product.rglob("*_B04.jp2"))
    data = jp2.read_bytes()
    jp2.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-20] + bytes(20))
    out = tmp_path / "scene"
    with pytest.raises(ProductError, match=message):
        prepare(product, out)
    _assert_nothing_written(out)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "last tiles"])
def test_truncated_or_corrupt_jp2_without_a_manifest(tiny_raw, tmp_path, damage):
    """Decoding errors stop the read, even those GDAL's JPEG 2000 threads only log (a tiled band
    cut short decodes to zeros in its missing tiles otherwise)."""
    product, _ = _copy_product(tiny_raw, tmp_path)
    (product / "manifest.safe").unlink()
    jp2 = next(product.rglob("*_B04.jp2"))
    if damage == "last tiles":
        with rasterio.open(jp2) as src:
            profile, band = src.profile, src.read(1)
        profile.update(driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=32, BLOCKYSIZE=32)
        with rasterio.open(jp2, "w", **profile) as dst:
            dst.write(band, 1)
    data = jp2.read_bytes()
    cut = {"truncate": data[: len(data) // 2], "garbage": b"\x00\x01garbage" * 100, "last tiles": data[: int(len(data) * 0.9)]}
    jp2.write_bytes(cut[damage])
    out = tmp_path / "scene"
    with pytest.raises(ProductError, match=r"_B04\.jp2: cannot be decoded"):
        prepare(product, out)
    _assert_nothing_written(out)


def test_zip_without_a_safe_inside(tmp_path):
    bad = tmp_path / "product.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "not a product")
    with pytest.raises(ProductError, match=r"product\.zip: no MTD_MSIL1C\.xml or MTD_MSIL2A\.xml"):
        prepare(bad, tmp_path / "scene")
    _assert_nothing_written(tmp_path / "scene")


def test_unknown_product_type(tiny_raw, tmp_path):
    product, _ = _copy_product(tiny_raw, tmp_path)
    mtd = product / "MTD_MSIL1C.xml"
    mtd.write_text(mtd.read_text().replace("<PRODUCT_TYPE>S2MSI1C<", "<PRODUCT_TYPE>S2MSI1B<"))
    with pytest.raises(ProductError, match=r"MTD_MSIL1C\.xml: unknown product type 'S2MSI1B'"):
        prepare(product, tmp_path / "scene")
    _assert_nothing_written(tmp_path / "scene")


def test_ground_truth_that_does_not_overlap(tiny_raw, tmp_path):
    raw, manifest = tiny_raw
    epirus = manifest["products"][0]
    thrace = next(p for p in manifest["products"] if p["area"]["name"] == THRACE.name)
    out = tmp_path / "scene"
    with pytest.raises(ProductError, match=r"N39E024_Map\.tif does not overlap the scene"):
        prepare(raw / epirus["path"], out, [raw / w for w in thrace["worldcover"]])
    _assert_nothing_written(out)


def test_existing_output_needs_overwrite(tiny_raw, tmp_path):
    raw, manifest = tiny_raw
    product = raw / manifest["products"][0]["path"]
    out = prepare(product, tmp_path / "scene", method="nearest")
    before = (out / "image.tif").read_bytes()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        prepare(product, out)
    assert (out / "image.tif").read_bytes() == before
    prepare(product, out, method="cubic", overwrite=True)
    assert json.loads((out / "scene.json").read_text())["resampling"]["to_10m"] == "cubic"
    _assert_nothing_written(tmp_path / "other")


def test_cli_reports_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from lc.cli.main import app

    result = CliRunner().invoke(app, ["prepare", str(tmp_path / "missing.SAFE"), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "missing.SAFE: no such product" in result.output


@pytest.mark.parametrize("method", ["sharpen", "cubic"])
def test_strips_give_exactly_the_whole_scene(tiny_raw, tmp_path, monkeypatch, method):
    """Bands are brought to 10 m strip by strip (bounded memory); the strips' context rows make
    the result identical to treating the scene whole, swath edge included."""
    from lc.sentinel2 import tenmetres

    raw, manifest = tiny_raw
    entry = next(p for p in manifest["products"] if p["scene"] == "thessaly_L1C")  # zipped, with a swath edge
    whole = prepare(raw / entry["path"], tmp_path / "whole", method=method)
    monkeypatch.setattr(tenmetres, "STRIP_ROWS", 12)  # 5 strips of 60 rows
    strips = prepare(raw / entry["path"], tmp_path / "strips", method=method)
    with rasterio.open(whole / "image.tif") as a, rasterio.open(strips / "image.tif") as b:
        first, second = a.read(), b.read()
    assert (first == 0).any() and (first > 0).any()
    assert np.array_equal(first, second)
