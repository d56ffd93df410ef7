"""Sentinel-2 products from the Copernicus Data Space Ecosystem (CDSE): catalogue search,
login, and verified downloads of SAFE zips."""

from __future__ import annotations

import netrc
import os
import re
import stat
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

import requests

from lc.sources.http import (
    BACKOFF_S,
    NETWORK_ERRORS,
    RETRIES,
    TIMEOUT_S,
    AcquireError,
    BBox,
    Transient,
    download,
    endpoint,
    get_json,
    is_transient,
    retry_after,
    retrying,
    session,
    update_manifest,
    validate_bbox,
)

CDSE_CLIENT_ID = "cdse-public"
PRODUCT_TYPES = {"L1C": "S2MSI1C", "L2A": "S2MSI2A"}
# MGRS tile: UTM zone 01-60, latitude band C-X (no I, O), 100 km square letters.
MGRS_TILE = re.compile(r"(0[1-9]|[1-5]\d|60)[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]")

PAGE_SIZE = 100
TOKEN_MARGIN_S = 60.0

CREDENTIALS_HELP = (
    "Sentinel-2 downloads need a (free) Copernicus Data Space Ecosystem account, "
    "https://dataspace.copernicus.eu. Give it as the environment variables "
    "CDSE_USERNAME and CDSE_PASSWORD, or as a line "
    "'machine {host} login <email> password <password>' in ~/.netrc (chmod 600)."
)


def normalise_tile(tile: str) -> str:
    """'T34SEJ' / '34sej' -> '34SEJ'; refuses anything that is not an MGRS tile id."""
    tid = tile.strip().upper().removeprefix("T")
    if not MGRS_TILE.fullmatch(tid):
        raise ValueError(f"{tile!r} is not a Sentinel-2 (MGRS) tile id such as 34SEJ")
    return tid


# ---------------------------------------------------------------- Sentinel-2 search


@dataclass(frozen=True)
class ProductHit:
    """One Sentinel-2 product in the CDSE catalogue."""

    id: str
    name: str  # e.g. S2A_MSIL2A_20210715T092031_N0301_R093_T34SEJ_20210715T112506.SAFE
    date: datetime  # sensing start, UTC
    cloud_cover: float | None  # percent
    size: int | None  # bytes of the zip
    checksum: str | None  # MD5 (hex, lower case) of the zip, when published

    @property
    def filename(self) -> str:
        """Local zip name: the product name with .zip for .SAFE."""
        return f"{self.name.removesuffix('.SAFE')}.zip"


def _string_attribute(name: str, value: str) -> str:
    return (
        f"Attributes/OData.CSC.StringAttribute/any(att:att/Name eq '{name}' "
        f"and att/OData.CSC.StringAttribute/Value eq '{value}')"
    )


def _wkt_polygon(bbox: BBox) -> str:
    w, s, e, n = bbox
    return f"POLYGON(({w} {s},{e} {s},{e} {n},{w} {n},{w} {s}))"


def _odata_filter(
    *, tile: str | None, bbox: BBox | None, start: date, end: date, level: str,
    max_cloud: float | None,
) -> str:
    """OData $filter for Sentinel-2 products of `level` sensed from `start` to `end` (inclusive)."""
    if level not in PRODUCT_TYPES:
        raise ValueError(f"level must be one of {sorted(PRODUCT_TYPES)}, not {level!r}")
    if tile is None and bbox is None:
        raise ValueError("give a tile, a bbox, or both")
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    parts = [
        "Collection/Name eq 'SENTINEL-2'",
        _string_attribute("productType", PRODUCT_TYPES[level]),
        f"ContentDate/Start ge {start.isoformat()}T00:00:00.000Z",
        f"ContentDate/Start lt {(end + timedelta(days=1)).isoformat()}T00:00:00.000Z",
    ]
    if tile is not None:
        # The name always carries the tile; the tileId attribute is missing on some products.
        parts.append(f"contains(Name,'_T{normalise_tile(tile)}_')")
    if bbox is not None:
        parts.append(f"OData.CSC.Intersects(area=geography'SRID=4326;{_wkt_polygon(validate_bbox(bbox))}')")
    if max_cloud is not None:
        parts.append(
            "Attributes/OData.CSC.DoubleAttribute/any(att:att/Name eq 'cloudCover' "
            f"and att/OData.CSC.DoubleAttribute/Value le {float(max_cloud):.2f})"
        )
    return " and ".join(parts)


def _parse_product(product: Mapping) -> ProductHit:
    """ProductHit from one entry of an OData `value` list (with $expand=Attributes)."""
    attributes = {a.get("Name"): a.get("Value") for a in product.get("Attributes") or []}
    md5 = next(
        (c["Value"].lower() for c in product.get("Checksum") or []
         if str(c.get("Algorithm", "")).upper() == "MD5" and c.get("Value")),
        None,
    )
    cloud = attributes.get("cloudCover")
    return ProductHit(
        id=product["Id"],
        name=product["Name"],
        date=datetime.fromisoformat(product["ContentDate"]["Start"]),
        cloud_cover=None if cloud is None else float(cloud),
        size=product.get("ContentLength") or None,
        checksum=md5,
    )


def search_sentinel2(
    *,
    tile: str | None,
    bbox: tuple | None,
    start: date,
    end: date,
    level: str,
    max_cloud: float | None,
    catalogue_url: str | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    timeout: float = TIMEOUT_S,
) -> list[ProductHit]:
    """Sentinel-2 products in the CDSE OData catalogue, oldest first (no credentials needed)."""
    url: str | None = endpoint("catalogue", catalogue_url) + "/Products"
    params: dict | None = {
        "$filter": _odata_filter(
            tile=tile, bbox=bbox, start=start, end=end, level=level, max_cloud=max_cloud
        ),
        "$orderby": "ContentDate/Start asc",
        "$top": str(PAGE_SIZE),
        "$expand": "Attributes",
    }
    hits: list[ProductHit] = []
    with session() as http:
        while url:
            page = retrying(
                lambda: get_json(http, url, params, timeout),
                what=f"catalogue search {url}", retries=retries, backoff=backoff,
            )
            hits.extend(_parse_product(p) for p in page.get("value", []))
            url, params = page.get("@odata.nextLink"), None  # the link carries the query
    return hits


def _acquisition(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what was observed, which processing) from a product name.

    MMM_MSIXXX_<sensing>_N<baseline>_R<orbit>_T<tile>_<generation>: the same
    acquisition reprocessed differs only in baseline and generation time.
    """
    parts = name.removesuffix(".SAFE").split("_")
    if len(parts) != 7:
        return (name,), ()
    return (parts[0], parts[1], parts[2], parts[4], parts[5]), (parts[3], parts[6])


def latest_baselines(hits: Sequence[ProductHit]) -> list[ProductHit]:
    """Keep only the newest processing of each acquisition (CDSE lists reprocessed
    products beside the originals, e.g. N0301 and N0500 for 2021), order kept."""
    best: dict[tuple[str, ...], ProductHit] = {}
    for hit in hits:
        key, rank = _acquisition(hit.name)
        if key not in best or rank > _acquisition(best[key].name)[1]:
            best[key] = hit
    return [hit for hit in hits if best[_acquisition(hit.name)[0]] is hit]


# ---------------------------------------------------------------- CDSE credentials


def _netrc_login(host: str) -> tuple[str, str] | None:
    """(login, password) for `host` from $NETRC or ~/.netrc, if there."""
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return None
    try:
        found = netrc.netrc(str(path)).authenticators(host)
    except netrc.NetrcParseError as exc:  # its message may quote a password: leave it out
        raise AcquireError(f"{path} cannot be parsed (line {exc.lineno})") from None
    if found and found[0] and found[2]:
        return found[0], found[2]
    return None


def cdse_credentials(token_url: str | None = None) -> tuple[str, str]:
    """CDSE (username, password) from CDSE_USERNAME/CDSE_PASSWORD or ~/.netrc."""
    user, password = os.environ.get("CDSE_USERNAME"), os.environ.get("CDSE_PASSWORD")
    if user and password:
        return user, password
    host = urlsplit(endpoint("token", token_url)).hostname or ""
    found = _netrc_login(host)
    if found is None:
        raise AcquireError("no CDSE credentials found. " + CREDENTIALS_HELP.format(host=host))
    return found


def _redact(text: str, *secrets: str) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _error_detail(r: requests.Response) -> str:
    """The OAuth error description of a refused login, else the HTTP reason."""
    try:
        body = r.json()
    except ValueError:
        return r.reason
    if not isinstance(body, dict):
        return r.reason
    return str(body.get("error_description") or body.get("error") or r.reason)


def _request_token(url: str, user: str, password: str, timeout: float) -> tuple[str, float]:
    """(access token, lifetime in s) from the CDSE identity service (password grant)."""
    form = {"client_id": CDSE_CLIENT_ID, "grant_type": "password",
            "username": user, "password": password}
    try:
        with session() as http:
            r = http.post(url, data=form, timeout=timeout)
    except NETWORK_ERRORS as exc:  # `from None`: the chained request holds the form
        raise Transient(type(exc).__name__) from None
    if is_transient(r.status_code):
        raise Transient(f"HTTP {r.status_code}", retry_after(r))
    if r.status_code != 200:
        detail = _redact(_error_detail(r), user, password)
        raise AcquireError(
            f"the CDSE identity service {url} refused the login (HTTP {r.status_code}: "
            f"{detail}); check CDSE_USERNAME/CDSE_PASSWORD or ~/.netrc"
        )
    body = r.json()
    return body["access_token"], float(body.get("expires_in", 600))


class CdseAuth:
    """Bearer headers for CDSE downloads; logs in on first use, renews before expiry."""

    def __init__(
        self, token_url: str | None = None, *, retries: int = RETRIES,
        backoff: float = BACKOFF_S, timeout: float = TIMEOUT_S,
    ) -> None:
        self.token_url = endpoint("token", token_url)
        self._retry = {"retries": retries, "backoff": backoff}
        self._timeout = timeout
        self._token: str | None = None
        self._renew_at = 0.0

    def __call__(self) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._renew_at:
            user, password = cdse_credentials(self.token_url)
            self._token, lifetime = retrying(
                lambda: _request_token(self.token_url, user, password, self._timeout),
                what=f"CDSE login at {self.token_url}", **self._retry,
            )
            self._renew_at = time.monotonic() + max(lifetime - TOKEN_MARGIN_S, 0.0)
        return {"Authorization": f"Bearer {self._token}"}

    def __repr__(self) -> str:
        return f"CdseAuth({self.token_url!r})"


def fetch_sentinel2(
    hits: Sequence[ProductHit],
    out: Path,
    *,
    download_url: str | None = None,
    token_url: str | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    timeout: float = TIMEOUT_S,
    progress: bool = True,
) -> list[Path]:
    """Download `hits` as SAFE zips into `out` (MD5-verified when published, zip-checked).

    Complete zips already in `out` are kept without contacting CDSE; each finished
    product is recorded in `out/sentinel2_manifest.json`.
    """
    out = Path(out)
    base = endpoint("download", download_url)
    auth = CdseAuth(token_url, retries=retries, backoff=backoff, timeout=timeout)
    header = {"source": "Copernicus Data Space Ecosystem"}
    paths = []
    for hit in hits:
        url = f"{base}/Products({quote(hit.id, safe='-')})/$value"
        path = download(
            url, out / hit.filename, expected_size=hit.size, md5=hit.checksum, headers=auth,
            retries=retries, backoff=backoff, timeout=timeout, verify=check_zip,
            progress=progress,
        )
        entry = {"id": hit.id, "file": path.name, "url": url, "date": hit.date.isoformat(),
                 "cloud_cover": hit.cloud_cover, "size": path.stat().st_size, "md5": hit.checksum}
        update_manifest(out / "sentinel2_manifest.json", header, "products", hit.name, entry)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- zips


def check_zip(path: Path) -> None:
    """Refuse a zip that cannot be opened or whose members fail their CRC."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise AcquireError(f"{Path(path).name} is not a readable zip ({exc})") from None
    if bad is not None:
        raise AcquireError(f"{Path(path).name}: member {bad} is corrupt (CRC mismatch)")


def _check_member(info: zipfile.ZipInfo, root: Path, zip_name: str) -> None:
    """Refuse a member that is a symlink or would land outside `root`."""
    name = info.filename
    inner = PurePosixPath(name.replace("\\", "/"))
    escapes = (
        stat.S_ISLNK(info.external_attr >> 16)
        or inner.is_absolute()
        or ".." in inner.parts
        or re.match(r"[A-Za-z]:", name) is not None
        or not (root / inner).resolve().is_relative_to(root)
    )
    if escapes:
        raise AcquireError(f"{zip_name}: member {name!r} escapes the extraction folder; refused")


def safe_extract(zip_path: Path, dest: Path) -> Path:
    """Extract a checked zip into `dest`, refusing it whole if any member could escape.

    Returns the single top-level folder (the .SAFE of a product zip) if there is one,
    else `dest`.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    check_zip(zip_path)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(zip_path) as zf:
        members = zf.infolist()
        for info in members:
            _check_member(info, root, zip_path.name)
        zf.extractall(dest, members)
    tops = {PurePosixPath(info.filename).parts[0] for info in members}
    return dest / tops.pop() if len(tops) == 1 else dest
