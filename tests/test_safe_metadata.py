"""The metadata reader gets exactly what ESA's real files say (../shared fixtures)."""

from __future__ import annotations

import json

import pytest

from lc.sentinel2.safe import ProductError, parse_product_metadata, parse_tile_geocoding


def test_every_real_product_file(s2_metadata):
    expected = json.loads((s2_metadata / "expected.json").read_text())["products"]
    assert len(expected) == 19
    for item in expected:
        meta = parse_product_metadata((s2_metadata / item["path"]).read_bytes(), item["path"])
        got = {
            "level": meta.level,
            "processing_baseline": meta.processing_baseline,
            "quantification_value": meta.quantification_value,
            "nodata": meta.nodata,
            "add_offset": meta.add_offset,
        }
        want = {k: item[k] for k in got}
        assert got == want, item["path"]


def test_every_real_tile_file(s2_metadata):
    expected = json.loads((s2_metadata / "expected.json").read_text())["tiles"]
    assert len(expected) == 15
    for item in expected:
        tile = parse_tile_geocoding((s2_metadata / item["path"]).read_bytes(), item["path"])
        assert tile.crs == item["crs"], item["path"]
        for res, pos in item["geoposition"].items():
            assert tile.geoposition[int(res)] == (pos["ulx"], pos["uly"]), item["path"]
        for res, size in item["size"].items():
            assert tile.size[int(res)] == (size["rows"], size["cols"]), item["path"]


def test_offsets_matter_only_from_baseline_04(s2_metadata):
    old = parse_product_metadata(
        (s2_metadata / "samumantha_stac_testing/MTD_MSIL2A.xml").read_bytes()
    )
    new = parse_product_metadata((s2_metadata / "vhgauto_turb/MTD_MSIL2A.xml").read_bytes())
    assert old.offset("B04") == 0 and new.offset("B04") == -1000
    assert new.offset("B8A") == -1000


def test_unknown_product_type_is_named():
    xml = b"<root><PRODUCT_TYPE>S2MSI1B</PRODUCT_TYPE></root>"
    with pytest.raises(ProductError, match="unknown product type 'S2MSI1B'"):
        parse_product_metadata(xml, "x/MTD_MSIL1C.xml")


def test_broken_xml_names_the_file():
    with pytest.raises(ProductError, match="x/MTD_TL.xml: not valid XML"):
        parse_tile_geocoding(b"<a><b>", "x/MTD_TL.xml")
