"""lc.sources (WorldCover, CDSE, HTTP transfers) against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import stat
import threading
import time
import zipfile
from datetime import date, datetime, timezone
from urllib.parse import parse_qs

import pytest
from typer.testing import CliRunner

from lc.cli.acquire import app
from lc.sources import cdse, http, worldcover
from lc.sources.cdse import ProductHit
from lc.sources.http import AcquireError, NotFoundError
from tests.acquire_server import FakeServer, Reply

FAST = {"retries": 3, "backoff": 0.0, "progress": False}
USER, PASSWORD = "someone-SECRETUSER@example.org", "pw-SECRETPASS-42"
TOKEN = "eyJ-test-access-token"
NAME_A = "S2A_MSIL2A_20210705T092031_N0301_R093_T34SEJ_20210705T112506.SAFE"
NAME_B = "S2B_MSIL2A_20210710T091559_N0301_R093_T34SEJ_20210710T120407.SAFE"
NAME_B_REPROCESSED = "S2B_MSIL2A_20210710T091559_N0500_R093_T34SEJ_20230301T084512.SAFE"
ID_A, ID_B, ID_B2 = (
    "0a8e5f8e-7f3c-4f33-9d55-8a1d2a7f1c01",
    "1b9f6a9f-803d-4044-8e66-9b2e3b802d02",
    "2ca07ba0-914e-4155-9f77-ac3f4c913e03",
)
CATALOGUE = "/odata/v1/Products"
TOKEN_PATH = "/auth/realms/CDSE/protocol/openid-connect/token"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def server():
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def offline(server, tmp_path_factory, monkeypatch):
    """Every endpoint on the local server, no credentials, an empty home (no ~/.netrc)."""
    monkeypatch.setenv("LC_WORLDCOVER_URL", f"{server.url}/wc")
    monkeypatch.setenv("LC_CDSE_CATALOGUE_URL", f"{server.url}/odata/v1")
    monkeypatch.setenv("LC_CDSE_DOWNLOAD_URL", f"{server.url}/zipper/odata/v1")
    monkeypatch.setenv("LC_CDSE_TOKEN_URL", f"{server.url}{TOKEN_PATH}")
    for var in ("CDSE_USERNAME", "CDSE_PASSWORD", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("CDSE_USERNAME", USER)
    monkeypatch.setenv("CDSE_PASSWORD", PASSWORD)


def tiff_bytes(seed: int, size: int = 150_000) -> bytes:
    return b"II*\x00" + hashlib.shake_256(str(seed).encode()).digest(size - 4)


def safe_zip_bytes(name: str, size: int = 200_000) -> bytes:
    """A small product zip holding <name>/ with metadata and one band."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}/MTD_MSIL2A.xml", "<Level-2A_User_Product/>")
        zf.writestr(f"{name}/GRANULE/L2A_T34SEJ/IMG_DATA/R10m/T34SEJ_B02_10m.jp2",
                    hashlib.shake_256(name.encode()).digest(size))
    return buffer.getvalue()


def odata_product(pid: str, name: str, body: bytes, cloud: float, start: str) -> dict:
    """One product as the CDSE OData catalogue returns it with $expand=Attributes."""
    md5 = hashlib.md5(body).hexdigest()
    return {
        "@odata.mediaContentType": "application/octet-stream",
        "Id": pid,
        "Name": name,
        "ContentType": "application/octet-stream",
        "ContentLength": len(body),
        "OriginDate": "2021-07-05T11:52:41.000Z",
        "PublicationDate": "2021-07-05T12:10:03.148Z",
        "ModificationDate": "2021-07-05T12:10:03.148Z",
        "Online": True,
        "EvictionDate": "",
        "S3Path": f"/eodata/Sentinel-2/MSI/L2A/2021/07/05/{name}",
        "Checksum": [
            {"Value": md5.upper(), "Algorithm": "MD5", "ChecksumDate": "2021-07-05T12:09:59.000Z"},
            {"Value": hashlib.blake2b(body).hexdigest()[:64], "Algorithm": "BLAKE3",
             "ChecksumDate": "2021-07-05T12:10:00.000Z"},
        ],
        "ContentDate": {"Start": start, "End": start},
        "Footprint": "geography'SRID=4326;POLYGON ((21.0 37.0, 22.2 37.0, 22.2 38.0, 21.0 38.0, 21.0 37.0))'",
        "GeoFootprint": {"type": "Polygon", "coordinates": [[[21.0, 37.0], [22.2, 37.0], [22.2, 38.0],
                                                             [21.0, 38.0], [21.0, 37.0]]]},
        "Attributes": [
            {"@odata.type": "#OData.CSC.StringAttribute", "Name": "productType",
             "Value": "S2MSI2A", "ValueType": "String"},
            {"@odata.type": "#OData.CSC.DoubleAttribute", "Name": "cloudCover",
             "Value": cloud, "ValueType": "Double"},
            {"@odata.type": "#OData.CSC.StringAttribute", "Name": "tileId",
             "Value": "34SEJ", "ValueType": "String"},
            {"@odata.type": "#OData.CSC.StringAttribute", "Name": "processingBaseline",
             "Value": name.split("_")[3][1:3] + "." + name.split("_")[3][3:], "ValueType": "String"},
        ],
    }


def page(products: list[dict], next_link: str | None = None) -> Reply:
    payload: dict = {"@odata.context": "$metadata#Products(Attributes())", "value": products}
    if next_link:
        payload["@odata.nextLink"] = next_link
    return Reply.json(payload)


def hit_for(body: bytes, pid: str = ID_A, name: str = NAME_A, **changes) -> ProductHit:
    fields = {"id": pid, "name": name, "date": datetime(2021, 7, 5, 9, 20, 31, tzinfo=timezone.utc),
              "cloud_cover": 3.2, "size": len(body), "checksum": hashlib.md5(body).hexdigest()}
    return ProductHit(**{**fields, **changes})


def product_path(pid: str) -> str:
    return f"/zipper/odata/v1/Products({pid})/$value"


def token_reply() -> Reply:
    return Reply.json({"access_token": TOKEN, "expires_in": 600, "refresh_expires_in": 3600,
                       "refresh_token": "eyJ-refresh", "token_type": "Bearer",
                       "not-before-policy": 0, "scope": "AUDIENCE_PUBLIC openid email profile"})


# ---------------------------------------------------------------- WorldCover tiles


@pytest.mark.parametrize(
    ("bbox", "year", "ids"),
    [
        ((21.5, 36.5, 23.5, 38.5), 2021, ["N36E021"]),  # inside one tile (Peloponnese)
        ((21.0, 36.0, 24.0, 39.0), 2021, ["N36E021"]),  # edges on tile borders add nothing
        ((20.5, 37.0, 21.5, 40.0), 2021, ["N36E018", "N36E021", "N39E018", "N39E021"]),
        ((-1.0, -1.0, 1.0, 1.0), 2021, ["S03W003", "S03E000", "N00W003", "N00E000"]),
        ((-58.5, -34.8, -58.3, -34.5), 2020, ["S36W060"]),  # Buenos Aires
        ((-74.1, 40.6, -73.8, 40.9), 2021, ["N39W075"]),  # New York
    ],
)
def test_worldcover_tiles(bbox, year, ids):
    version = {2020: "v100", 2021: "v200"}[year]
    assert worldcover.worldcover_tiles(bbox, year) == [
        f"ESA_WorldCover_10m_{year}_{version}_{i}_Map.tif" for i in ids
    ]


@pytest.mark.parametrize(
    ("bbox", "year"),
    [((21, 36, 24, 39), 2019), ((24, 36, 21, 39), 2021), ((21, 39, 24, 36), 2021), ((0, 0, 200, 1), 2021)],
)
def test_worldcover_tiles_refuses_bad_input(bbox, year):
    with pytest.raises(ValueError):
        worldcover.worldcover_tiles(bbox, year)


def test_parse_bbox():
    assert http.parse_bbox("21.5, 36.5,23.5,38.5") == (21.5, 36.5, 23.5, 38.5)
    for text in ("21,36,24", "a,b,c,d", "24,36,21,39"):
        with pytest.raises(ValueError):
            http.parse_bbox(text)


def test_fetch_worldcover_downloads_records_and_skips_sea(server, tmp_path):
    land = "ESA_WorldCover_10m_2021_v200_N36E021_Map.tif"
    body = tiff_bytes(1)
    server.route(f"/wc/v200/2021/map/{land}", Reply(body=body))  # N36E024 is left unrouted: 404

    paths = worldcover.fetch_worldcover((21.5, 36.5, 24.5, 38.5), 2021, tmp_path, **FAST)

    assert paths == [tmp_path / land]
    assert paths[0].read_bytes() == body
    assert {s.path for s in server.seen} == {
        f"/wc/v200/2021/map/{land}", "/wc/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36E024_Map.tif"}
    manifest = json.loads((tmp_path / "ESA_WorldCover_10m_2021_v200_manifest.json").read_text())
    assert manifest["version"] == "v200" and manifest["year"] == 2021
    assert manifest["tiles"][land] == {"url": f"{server.url}/wc/v200/2021/map/{land}",
                                       "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert list(manifest["missing"]) == ["ESA_WorldCover_10m_2021_v200_N36E024_Map.tif"]
    assert not list(tmp_path.glob("*.part"))


def test_fetch_worldcover_refuses_a_page_that_is_not_a_tiff(server, tmp_path):
    name = "ESA_WorldCover_10m_2020_v100_N36E021_Map.tif"
    server.route(f"/wc/v100/2020/map/{name}", Reply(body=b"<html>maintenance</html>"))
    with pytest.raises(AcquireError, match="not a GeoTIFF"):
        worldcover.fetch_worldcover((21.5, 36.5, 23.5, 38.5), 2020, tmp_path, **FAST)
    assert list(tmp_path.glob("*.tif*")) == []


# ---------------------------------------------------------------- Sentinel-2 search


def test_search_by_tile_sends_the_filter_and_follows_pages(server):
    a, b = safe_zip_bytes(NAME_A), safe_zip_bytes(NAME_B)
    server.route(
        CATALOGUE,
        page([odata_product(ID_A, NAME_A, a, 3.2, "2021-07-05T09:20:31.024Z")],
             next_link=f"{server.url}{CATALOGUE}?$skip=1&$top=100"),
        page([odata_product(ID_B, NAME_B, b, 18.75, "2021-07-10T09:15:59.024Z")]),
    )

    hits = cdse.search_sentinel2(tile="T34SEJ", bbox=None, start=date(2021, 7, 1),
                                    end=date(2021, 7, 31), level="L2A", max_cloud=20, retries=0)

    assert hits == [
        ProductHit(ID_A, NAME_A, datetime(2021, 7, 5, 9, 20, 31, 24000, tzinfo=timezone.utc),
                   3.2, len(a), hashlib.md5(a).hexdigest()),
        ProductHit(ID_B, NAME_B, datetime(2021, 7, 10, 9, 15, 59, 24000, tzinfo=timezone.utc),
                   18.75, len(b), hashlib.md5(b).hexdigest()),
    ]
    assert hits[0].filename == NAME_A.removesuffix(".SAFE") + ".zip"
    first, second = server.requests_to(CATALOGUE)
    assert first.query == {
        "$filter": "Collection/Name eq 'SENTINEL-2'"
        " and Attributes/OData.CSC.StringAttribute/any(att:att/Name eq 'productType'"
        " and att/OData.CSC.StringAttribute/Value eq 'S2MSI2A')"
        " and ContentDate/Start ge 2021-07-01T00:00:00.000Z"
        " and ContentDate/Start lt 2021-08-01T00:00:00.000Z"
        " and contains(Name,'_T34SEJ_')"
        " and Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover'"
        " and att/OData.CSC.DoubleAttribute/Value le 20.00)",
        "$orderby": "ContentDate/Start asc",
        "$top": "100",
        "$expand": "Attributes",
    }
    assert second.query == {"$skip": "1", "$top": "100"}
    assert "Authorization" not in first.headers  # searching needs no account


def test_search_by_bbox_for_l1c_sends_a_polygon(server):
    server.route(CATALOGUE, page([]))
    hits = cdse.search_sentinel2(tile=None, bbox=(21.5, 36.5, 23.5, 38.5), start=date(2021, 7, 1),
                                    end=date(2021, 7, 1), level="L1C", max_cloud=None, retries=0)
    assert hits == []
    sent = server.requests_to(CATALOGUE)[0].query["$filter"]
    assert "Value eq 'S2MSI1C'" in sent
    assert ("OData.CSC.Intersects(area=geography'SRID=4326;POLYGON((21.5 36.5,23.5 36.5,"
            "23.5 38.5,21.5 38.5,21.5 36.5))')") in sent
    assert "ContentDate/Start lt 2021-07-02T00:00:00.000Z" in sent
    assert "cloudCover" not in sent


@pytest.mark.parametrize(
    "kwargs",
    [{"tile": "34SEJ'; drop", "bbox": None}, {"tile": None, "bbox": None},
     {"tile": "34SEJ", "bbox": None, "level": "L3"}, {"tile": "34SEJ", "bbox": None, "end": date(2021, 6, 1)}],
)
def test_search_refuses_bad_input(kwargs, server):
    args = {"start": date(2021, 7, 1), "end": date(2021, 7, 31), "level": "L2A", "max_cloud": None, **kwargs}
    with pytest.raises(ValueError):
        cdse.search_sentinel2(**args)
    assert server.seen == []


def test_latest_baselines_keeps_the_newest_processing():
    when = datetime(2021, 7, 10, tzinfo=timezone.utc)
    a, b, b2 = (ProductHit(i, n, when, 1.0, 1, None) for i, n in
                ((ID_A, NAME_A), (ID_B, NAME_B), (ID_B2, NAME_B_REPROCESSED)))
    assert cdse.latest_baselines([a, b, b2]) == [a, b2]
    assert cdse.latest_baselines([a, b2, b]) == [a, b2]


# ---------------------------------------------------------------- download


def saved(cut: int) -> int:
    """Bytes a download cut after `cut` bytes keeps: whole chunks (the one in flight is lost)."""
    return cut // http.CHUNK * http.CHUNK


def test_interrupted_download_resumes_with_range(server, tmp_path):
    body = safe_zip_bytes(NAME_A)
    server.route("/f.zip", Reply(body=body, cut_at=150_000), Reply(body=body))
    dest = tmp_path / "f.zip"

    with pytest.raises(AcquireError, match="gave up"):
        http.download(f"{server.url}/f.zip", dest, retries=0, backoff=0, progress=False)
    part = tmp_path / "f.zip.part"
    assert part.stat().st_size == saved(150_000) > 0 and not dest.exists()

    http.download(f"{server.url}/f.zip", dest, expected_size=len(body),
                     md5=hashlib.md5(body).hexdigest(), retries=0, progress=False)

    first, second = server.requests_to("/f.zip")
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={saved(150_000)}-"
    assert dest.read_bytes() == body
    assert not part.exists()


def test_cut_download_is_resumed_within_the_same_call(server, tmp_path):
    body = tiff_bytes(2, size=300_000)
    server.route("/t.tif", Reply(body=body, cut_at=100_000), Reply(body=body, cut_at=140_000), Reply(body=body))
    dest = http.download(f"{server.url}/t.tif", tmp_path / "t.tif", **FAST)
    assert dest.read_bytes() == body
    first_cut = saved(100_000)
    assert [s.headers.get("Range") for s in server.requests_to("/t.tif")] == [
        None, f"bytes={first_cut}-", f"bytes={first_cut + saved(140_000)}-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    body = tiff_bytes(3)
    server.route("/t.tif", Reply(body=body, cut_at=100_000), Reply(body=body, ranged=False))
    dest = http.download(f"{server.url}/t.tif", tmp_path / "t.tif", **FAST)
    assert dest.read_bytes() == body


def test_complete_part_is_finished_without_refetching(server, tmp_path):
    body = tiff_bytes(4)
    (tmp_path / "t.tif.part").write_bytes(body)  # a run that died just before renaming
    server.route("/t.tif", Reply(body=body))
    dest = http.download(f"{server.url}/t.tif", tmp_path / "t.tif", **FAST)
    assert dest.read_bytes() == body
    assert server.requests_to("/t.tif")[0].headers["Range"] == f"bytes={len(body)}-"  # answered 416


@pytest.mark.parametrize(
    ("check", "message"),
    [({"md5": "0" * 32}, "MD5"), ({"expected_size": 123}, "expected 123"),
     ({"verify": cdse.check_zip}, "not a readable zip")],
)
def test_failed_verification_leaves_no_file(server, tmp_path, check, message):
    server.route("/t.tif", Reply(body=tiff_bytes(5)))
    dest = tmp_path / "t.tif"
    with pytest.raises(AcquireError, match=message):
        http.download(f"{server.url}/t.tif", dest, **FAST, **check)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [Reply(503, b"busy"), Reply(429, b"slow down", {"Retry-After": "0"})])
def test_transient_errors_are_retried(server, tmp_path, failure, caplog):
    body = tiff_bytes(6)
    server.route("/t.tif", failure, Reply(body=body))
    dest = http.download(f"{server.url}/t.tif", tmp_path / "t.tif", **FAST)
    assert dest.read_bytes() == body
    assert len(server.requests_to("/t.tif")) == 2
    assert f"HTTP {failure.status}; retry 1/3" in caplog.text


def test_retries_are_bounded_and_back_off(server, tmp_path, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(http.time, "sleep", sleeps.append)
    server.route("/t.tif", Reply(503, b"busy"))
    with pytest.raises(AcquireError, match="gave up after 4 attempts"):
        http.download(f"{server.url}/t.tif", tmp_path / "t.tif", retries=3, backoff=0.5, progress=False)
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(server.seen) == 4


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(NotFoundError):
        http.download(f"{server.url}/nothing.tif", tmp_path / "n.tif", **FAST)
    assert len(server.seen) == 1


def test_complete_file_is_skipped_without_a_request(server, tmp_path):
    dest = tmp_path / "t.tif"
    dest.write_bytes(b"12345")
    assert http.download(f"{server.url}/t.tif", dest, expected_size=5, **FAST) == dest
    assert server.seen == []


def test_progress_bar_shows_the_transfer(server, tmp_path, capsys):
    server.route("/t.tif", Reply(body=tiff_bytes(7)))
    http.download(f"{server.url}/t.tif", tmp_path / "t.tif", retries=0)
    assert "t.tif" in capsys.readouterr().err


# ---------------------------------------------------------------- Sentinel-2 download, credentials


def test_fetch_sentinel2_with_bearer_token(server, tmp_path, credentials, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    a, b = safe_zip_bytes(NAME_A), safe_zip_bytes(NAME_B)
    hits = [hit_for(a), hit_for(b, ID_B, NAME_B)]
    server.route(TOKEN_PATH, token_reply())
    server.route(product_path(ID_A), Reply(body=a))
    server.route(product_path(ID_B), Reply(body=b))

    paths = cdse.fetch_sentinel2(hits, tmp_path, **FAST)

    assert [p.read_bytes() for p in paths] == [a, b]
    assert [p.name for p in paths] == [h.filename for h in hits]
    (login,) = server.requests_to(TOKEN_PATH)  # one login serves both products
    assert login.method == "POST"
    assert parse_qs(login.body.decode()) == {"client_id": ["cdse-public"], "grant_type": ["password"],
                                             "username": [USER], "password": [PASSWORD]}
    for pid in (ID_A, ID_B):
        assert server.requests_to(product_path(pid))[0].headers["Authorization"] == f"Bearer {TOKEN}"
    manifest = (tmp_path / "sentinel2_manifest.json").read_text()
    assert json.loads(manifest)["products"][NAME_A]["md5"] == hashlib.md5(a).hexdigest()
    leaks = caplog.text + "".join(capsys.readouterr()) + manifest
    assert USER not in leaks and PASSWORD not in leaks and TOKEN not in leaks


def test_expired_token_is_renewed(server, tmp_path, credentials):
    a, b = safe_zip_bytes(NAME_A), safe_zip_bytes(NAME_B)
    server.route(TOKEN_PATH, Reply.json({"access_token": TOKEN, "expires_in": 30, "token_type": "Bearer"}))
    server.route(product_path(ID_A), Reply(body=a))
    server.route(product_path(ID_B), Reply(body=b))
    cdse.fetch_sentinel2([hit_for(a), hit_for(b, ID_B, NAME_B)], tmp_path, **FAST)
    assert len(server.requests_to(TOKEN_PATH)) == 2  # 30 s is inside the renewal margin


def test_fetch_sentinel2_skips_complete_zips_without_credentials(server, tmp_path):
    body = safe_zip_bytes(NAME_A)
    (tmp_path / hit_for(body).filename).write_bytes(body)
    assert cdse.fetch_sentinel2([hit_for(body)], tmp_path, **FAST) == [tmp_path / hit_for(body).filename]
    assert server.seen == []


def test_missing_credentials_say_how_to_provide_them(server, tmp_path):
    body = safe_zip_bytes(NAME_A)
    with pytest.raises(AcquireError) as err:
        cdse.fetch_sentinel2([hit_for(body)], tmp_path, **FAST)
    text = str(err.value)
    assert "CDSE_USERNAME" in text and "CDSE_PASSWORD" in text and ".netrc" in text
    assert "machine 127.0.0.1" in text and "dataspace.copernicus.eu" in text
    assert server.seen == [] and list(tmp_path.iterdir()) == []


def test_credentials_from_netrc(server, tmp_path, offline):
    netrc_file = offline / ".netrc"
    netrc_file.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc_file.chmod(0o600)
    body = safe_zip_bytes(NAME_A)
    server.route(TOKEN_PATH, token_reply())
    server.route(product_path(ID_A), Reply(body=body))
    cdse.fetch_sentinel2([hit_for(body)], tmp_path / "out", **FAST)
    (login,) = server.requests_to(TOKEN_PATH)
    assert parse_qs(login.body.decode())["password"] == [PASSWORD]
    # requests would add the .netrc login as Basic auth to every request to the host
    assert "Authorization" not in login.headers
    assert server.requests_to(product_path(ID_A))[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_rejected_credentials_never_leak(server, tmp_path, credentials, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    server.route(TOKEN_PATH, Reply.json(
        {"error": "invalid_grant", "error_description": f"Invalid user credentials for {USER}"}, 401))
    body = safe_zip_bytes(NAME_A)
    with pytest.raises(AcquireError) as err:
        cdse.fetch_sentinel2([hit_for(body)], tmp_path, **FAST)
    text = str(err.value) + repr(err.value) + caplog.text + "".join(capsys.readouterr())
    assert "HTTP 401" in str(err.value) and "Invalid user credentials" in str(err.value)
    assert USER not in text and PASSWORD not in text


def test_unparsable_netrc_does_not_quote_it(tmp_path, offline):
    (offline / ".netrc").write_text(f"machine 127.0.0.1 login {USER} password\n")
    with pytest.raises(AcquireError) as err:
        cdse.cdse_credentials()
    assert ".netrc" in str(err.value) and PASSWORD not in str(err.value)


def test_product_that_is_not_a_zip_is_refused(server, tmp_path, credentials):
    body = b"PK\x03\x04 but not really a zip" * 100
    server.route(TOKEN_PATH, token_reply())
    server.route(product_path(ID_A), Reply(body=body))
    with pytest.raises(AcquireError, match="not a readable zip"):
        cdse.fetch_sentinel2([hit_for(body, checksum=None)], tmp_path, **FAST)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- zips


def test_safe_extract_returns_the_safe_folder(tmp_path):
    zip_path = tmp_path / "p.zip"
    zip_path.write_bytes(safe_zip_bytes(NAME_A))
    safe = cdse.safe_extract(zip_path, tmp_path / "x")
    assert safe == tmp_path / "x" / NAME_A
    assert (safe / "MTD_MSIL2A.xml").read_text() == "<Level-2A_User_Product/>"


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("p.SAFE/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member",
    ["../evil.txt", "/tmp/evil.txt", "p.SAFE/../../evil.txt", "C:/evil.txt", "p.SAFE\\..\\..\\evil.txt",
     _symlink_member()],
    ids=["dotdot", "absolute", "nested-dotdot", "drive", "backslash", "symlink"],
)
def test_safe_extract_refuses_escaping_members(tmp_path, member):
    zip_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("p.SAFE/MTD_MSIL1C.xml", "<ok/>")
        zf.writestr(member, "../../etc/passwd")
    dest = tmp_path / "x"
    with pytest.raises(AcquireError, match="escapes"):
        cdse.safe_extract(zip_path, dest)
    assert list(dest.rglob("*")) == []  # refused whole: nothing written
    assert not (tmp_path / "evil.txt").exists()


# ---------------------------------------------------------------- reachability


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reachable_fails_fast_naming_each_endpoint(server):
    dead = [f"http://127.0.0.1:{_closed_port()}/odata/v1", f"http://127.0.0.1:{_closed_port()}/token"]
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}/wc"
        started = time.monotonic()
        with pytest.raises(AcquireError) as err:
            http.check_reachable([server.url, *dead, mute], timeout=0.5)
        assert time.monotonic() - started < 1.5
    text = str(err.value)
    assert "3 of 4" in text and all(url in text for url in dead) and server.url + " " not in text
    assert f"{mute} (no answer within 0.5 s)" in text and "Connection refused" in text
    assert "HTTPS access" in text and "CDSE_USERNAME" in text and "lc synth" in text


def test_check_reachable_passes_when_all_answer(server):
    http.check_reachable([server.url, f"{server.url}/anything"], timeout=1.0)  # a 404 still answers
    assert http.endpoints()[0] == f"{server.url}/wc"
    assert http.endpoints(worldcover=False) == [
        f"{server.url}/odata/v1", f"{server.url}{TOKEN_PATH}", f"{server.url}/zipper/odata/v1"]


# ---------------------------------------------------------------- CLI


def _catalogue_with_duplicate(server) -> None:
    a, b = safe_zip_bytes(NAME_A), safe_zip_bytes(NAME_B)
    server.route(CATALOGUE, page([
        odata_product(ID_A, NAME_A, a, 3.2, "2021-07-05T09:20:31.024Z"),
        odata_product(ID_B, NAME_B, b, 18.75, "2021-07-10T09:15:59.024Z"),
        odata_product(ID_B2, NAME_B_REPROCESSED, b, 18.75, "2021-07-10T09:15:59.024Z"),
    ]))


def test_cli_sentinel2_dry_run_lists_without_credentials(server):
    _catalogue_with_duplicate(server)
    result = CliRunner().invoke(app, ["sentinel2", "--tile", "34SEJ", "--start", "2021-07-01",
                                      "--end", "2021-07-31", "--level", "L2A", "--max-cloud", "20",
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert NAME_A in result.output and NAME_B_REPROCESSED in result.output
    assert NAME_B not in result.output  # superseded by its reprocessing
    assert "2021-07-05 09:20" in result.output and "3.2%" in result.output and "18.8%" in result.output
    assert "2 product(s)" in result.output and "MiB" in result.output
    assert {s.path for s in server.seen} == {CATALOGUE}


def test_cli_sentinel2_all_baselines(server):
    _catalogue_with_duplicate(server)
    result = CliRunner().invoke(app, ["sentinel2", "--bbox", "21.5,36.5,23.5,38.5", "--start", "2021-07-01",
                                      "--end", "2021-07-31", "--level", "L2A", "--dry-run",
                                      "--all-baselines"])
    assert result.exit_code == 0, result.output
    assert "3 product(s)" in result.output


def test_cli_sentinel2_without_credentials_exits_with_advice(server, tmp_path):
    _catalogue_with_duplicate(server)
    result = CliRunner().invoke(app, ["sentinel2", "--tile", "34SEJ", "--start", "2021-07-01",
                                      "--end", "2021-07-31", "--level", "L2A", "--out", str(tmp_path / "s2")])
    assert result.exit_code == 1
    assert "CDSE_USERNAME" in result.output and "Traceback" not in result.output


def test_cli_worldcover(server, tmp_path):
    name = "ESA_WorldCover_10m_2021_v200_N36E021_Map.tif"
    server.route(f"/wc/v200/2021/map/{name}", Reply(body=tiff_bytes(8)))
    result = CliRunner().invoke(app, ["worldcover", "--bbox", "21.5,36.5,24.5,38.5", "--year", "2021",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / name).exists()
    assert "absent upstream" in result.output and "N36E024" in result.output


def test_cli_worldcover_dry_run_and_bad_bbox(server):
    result = CliRunner().invoke(app, ["worldcover", "--bbox", "21.5,36.5,23.5,38.5", "--dry-run"])
    assert result.exit_code == 0
    assert result.output.strip() == f"{server.url}/wc/v200/2021/map/ESA_WorldCover_10m_2021_v200_N36E021_Map.tif"
    bad = CliRunner().invoke(app, ["worldcover", "--bbox", "23.5,36.5,21.5,38.5", "--dry-run"])
    assert bad.exit_code == 1 and "W,S,E,N" in bad.output
    assert server.seen == []
