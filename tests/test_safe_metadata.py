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


def test_mean_sun_and_viewing_angles_of_real_tiles(s2_metadata):
    """The atmospheric harmonisation needs the tile's mean angles; NaN (a band that saw nothing) is skipped."""
    path = ("stactools-packages_sentinel2/S2A_MSIL1C_20200717T221941_R029_T01LAC_20200717T234135.SAFE/GRANULE/"
            "L1C_T01LAC_A026481_20200717T221944/MTD_TL.xml")
    tile = parse_tile_geocoding((s2_metadata / path).read_bytes(), path)
    assert tile.sun_zenith == pytest.approx(45.183085206095)
    assert 2.5 < tile.view_zenith < 3.5


def test_angles_nan_missing_and_broken():
    def tile(angles: str) -> bytes:
        return (b"<t><Tile_Geocoding><HORIZONTAL_CS_CODE>EPSG:32634</HORIZONTAL_CS_CODE></Tile_Geocoding>"
                + angles.encode() + b"</t>")

    assert parse_tile_geocoding(tile("")).sun_zenith is None
    nan = "<Mean_Sun_Angle><ZENITH_ANGLE>NaN</ZENITH_ANGLE></Mean_Sun_Angle>"
    assert parse_tile_geocoding(tile(nan)).sun_zenith is None
    views = "".join(f"<Mean_Viewing_Incidence_Angle><ZENITH_ANGLE>{z}</ZENITH_ANGLE></Mean_Viewing_Incidence_Angle>"
                    for z in (2.0, 4.0, "NaN"))
    assert parse_tile_geocoding(tile(views)).view_zenith == 3.0
    with pytest.raises(ProductError, match="x/MTD_TL.xml: <Mean_Sun_Angle> has a ZENITH_ANGLE that is not a number"):
        parse_tile_geocoding(tile("<Mean_Sun_Angle><ZENITH_ANGLE>high</ZENITH_ANGLE></Mean_Sun_Angle>"), "x/MTD_TL.xml")
    with pytest.raises(ProductError, match="outside"):
        parse_tile_geocoding(tile("<Mean_Sun_Angle><ZENITH_ANGLE>95</ZENITH_ANGLE></Mean_Sun_Angle>"), "x/MTD_TL.xml")
