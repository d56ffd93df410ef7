"""Acquire real inputs: ESA WorldCover tiles and Sentinel-2 SAFE zips from CDSE.

Every transfer goes through `download`: resumable (`<name>.part` + HTTP Range),
retried with exponential back-off on transient failures, verified (size, MD5 when
published, optional content check) and renamed to its final name only once verified.
Endpoints default to the real services; `LC_*_URL` environment variables or function
arguments point them elsewhere (tests use a server on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import netrc
import os
import re
import stat
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import quote, urlsplit

import requests
from tqdm import tqdm

log = logging.getLogger(__name__)

WORLDCOVER_URL = "https://esa-worldcover.s3.eu-central-1.amazonaws.com"
CDSE_CATALOGUE_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1"
CDSE_DOWNLOAD_URL = "https://zipper.dataspace.copernicus.eu/odata/v1"
CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)
CDSE_CLIENT_ID = "cdse-public"

# name -> (environment variable, default)
ENDPOINTS: dict[str, tuple[str, str]] = {
    "worldcover": ("LC_WORLDCOVER_URL", WORLDCOVER_URL),
    "catalogue": ("LC_CDSE_CATALOGUE_URL", CDSE_CATALOGUE_URL),
    "download": ("LC_CDSE_DOWNLOAD_URL", CDSE_DOWNLOAD_URL),
    "token": ("LC_CDSE_TOKEN_URL", CDSE_TOKEN_URL),
}

WORLDCOVER_VERSIONS = {2020: "v100", 2021: "v200"}
WORLDCOVER_TILE_DEG = 3
PRODUCT_TYPES = {"L1C": "S2MSI1C", "L2A": "S2MSI2A"}
# MGRS tile: UTM zone 01-60, latitude band C-X (no I, O), 100 km square letters.
MGRS_TILE = re.compile(r"(0[1-9]|[1-5]\d|60)[C-HJ-NP-X][A-HJ-NP-Z][A-HJ-NP-V]")

RETRIES = 5
BACKOFF_S = 2.0
TIMEOUT_S = 60.0
MAX_RETRY_AFTER_S = 300.0
PAGE_SIZE = 100
CHUNK = 1 << 16  # bytes per write; an interruption loses at most the chunk in flight
TOKEN_MARGIN_S = 60.0
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)

CREDENTIALS_HELP = (
    "Sentinel-2 downloads need a (free) Copernicus Data Space Ecosystem account, "
    "https://dataspace.copernicus.eu. Give it as the environment variables "
    "CDSE_USERNAME and CDSE_PASSWORD, or as a line "
    "'machine {host} login <email> password <password>' in ~/.netrc (chmod 600)."
)
OFFLINE_HELP = (
    "Acquiring real data needs HTTPS access to these hosts (allow them through any "
    "firewall; HTTPS_PROXY is honoured) and, for Sentinel-2, a Copernicus Data Space "
    "Ecosystem account (CDSE_USERNAME/CDSE_PASSWORD or ~/.netrc). Endpoints can be "
    "redirected with " + ", ".join(env for env, _ in ENDPOINTS.values()) + ". "
    "Without network access, `lc synth` makes realistic synthetic products offline."
)

T = TypeVar("T")
Headers = Mapping[str, str] | Callable[[], Mapping[str, str]] | None
BBox = tuple[float, float, float, float]


class AcquireError(RuntimeError):
    """A source could not deliver what was asked; the message says what to do."""


class NotFoundError(AcquireError):
    """The resource does not exist upstream (HTTP 404)."""


class _NoNetrc(requests.auth.AuthBase):
    """Stops requests from adding ~/.netrc logins as Basic auth: that would replace the
    bearer token of a download and send the password where it is not wanted."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


def _session() -> requests.Session:
    """A session for every request here (proxies from the environment still apply)."""
    http = requests.Session()
    http.auth = _NoNetrc()
    return http


class _Transient(Exception):
    """A failure worth retrying (network error, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# ---------------------------------------------------------------- endpoints, input


def endpoint(name: str, given: str | None = None) -> str:
    """Base URL of endpoint `name`: `given`, else its environment variable, else the default."""
    env, default = ENDPOINTS[name]
    return (given or os.environ.get(env) or default).rstrip("/")


def endpoints(*, worldcover: bool = True, sentinel2: bool = True) -> list[str]:
    """The endpoints an acquisition will contact, for `check_reachable`."""
    names = (["worldcover"] if worldcover else []) + (
        ["catalogue", "token", "download"] if sentinel2 else []
    )
    return [endpoint(name) for name in names]


def validate_bbox(bbox: Sequence[float]) -> BBox:
    """Check a (W, S, E, N) box in degrees; W < E and S < N (no antimeridian crossing)."""
    if len(bbox) != 4:
        raise ValueError(f"bbox needs 4 numbers W,S,E,N, got {len(bbox)}")
    w, s, e, n = (float(v) for v in bbox)
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(
            f"bbox {w},{s},{e},{n} is not W,S,E,N with -180<=W<E<=180 and -90<=S<N<=90 "
            "(split a box that crosses the antimeridian)"
        )
    return w, s, e, n


def parse_bbox(text: str) -> BBox:
    """Parse 'W,S,E,N' (degrees, EPSG:4326)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"bbox {text!r} is not four comma-separated numbers W,S,E,N") from None
    return validate_bbox(values)


def normalise_tile(tile: str) -> str:
    """'T34SEJ' / '34sej' -> '34SEJ'; refuses anything that is not an MGRS tile id."""
    tid = tile.strip().upper().removeprefix("T")
    if not MGRS_TILE.fullmatch(tid):
        raise ValueError(f"{tile!r} is not a Sentinel-2 (MGRS) tile id such as 34SEJ")
    return tid


# ---------------------------------------------------------------- WorldCover


def worldcover_version(year: int) -> str:
    """WorldCover algorithm version of a map year (2020: v100, 2021: v200)."""
    try:
        return WORLDCOVER_VERSIONS[year]
    except KeyError:
        raise ValueError(f"WorldCover exists for {sorted(WORLDCOVER_VERSIONS)}, not {year}") from None


def _tile_starts(lo: float, hi: float) -> range:
    """Lower edges of the 3° tiles that overlap [lo, hi) (a box edge on a border adds nothing)."""
    step = WORLDCOVER_TILE_DEG
    return range(math.floor(lo / step) * step, math.ceil(hi / step) * step, step)


def _tile_id(lat: int, lon: int) -> str:
    """'N36E021' for the tile whose south-west corner is (lat, lon)."""
    return f"{'N' if lat >= 0 else 'S'}{abs(lat):02d}{'E' if lon >= 0 else 'W'}{abs(lon):03d}"


def worldcover_tiles(bbox: BBox, year: int) -> list[str]:
    """File names of the WorldCover tiles covering `bbox` (W, S, E, N), south to north."""
    version = worldcover_version(year)
    w, s, e, n = validate_bbox(bbox)
    return [
        f"ESA_WorldCover_10m_{year}_{version}_{_tile_id(lat, lon)}_Map.tif"
        for lat in _tile_starts(s, n)
        for lon in _tile_starts(w, e)
    ]


def worldcover_url(name: str, year: int, base_url: str | None = None) -> str:
    """URL of tile `name` in ESA's bucket layout: <base>/<version>/<year>/map/<name>."""
    return f"{endpoint('worldcover', base_url)}/{worldcover_version(year)}/{year}/map/{name}"


def check_tiff(path: Path) -> None:
    """Refuse a file that does not start like a (Big)TIFF, e.g. a saved error page."""
    with path.open("rb") as f:
        head = f.read(4)
    if head not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise AcquireError(f"{path.name} is not a GeoTIFF")


def fetch_worldcover(
    bbox: BBox,
    year: int,
    out: Path,
    base_url: str | None = None,
    *,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    timeout: float = TIMEOUT_S,
    progress: bool = True,
) -> list[Path]:
    """Download the WorldCover tiles covering `bbox` into `out`; tiles absent upstream are skipped.

    Records version, year, URL, size and sha256 of each tile (and the absent ones) in
    `out/ESA_WorldCover_10m_<year>_<version>_manifest.json`.
    """
    out = Path(out)
    version = worldcover_version(year)
    manifest = out / f"ESA_WorldCover_10m_{year}_{version}_manifest.json"
    header = {"source": "ESA WorldCover", "version": version, "year": year}
    paths = []
    for name in worldcover_tiles(bbox, year):
        url = worldcover_url(name, year, base_url)
        try:
            path = download(
                url, out / name, retries=retries, backoff=backoff, timeout=timeout,
                verify=check_tiff, progress=progress,
            )
        except NotFoundError:
            log.warning("%s: no such tile upstream (HTTP 404: open sea?), skipped", name)
            _update_manifest(manifest, header, "missing", name, {"url": url, "reason": "HTTP 404"})
            continue
        entry = {"url": url, "size": path.stat().st_size, "sha256": file_digest(path, "sha256")}
        _update_manifest(manifest, header, "tiles", name, entry)
        paths.append(path)
    return paths


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
    with _session() as http:
        while url:
            page = _retrying(
                lambda: _get_json(http, url, params, timeout),
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
        with _session() as http:
            r = http.post(url, data=form, timeout=timeout)
    except _NETWORK_ERRORS as exc:  # `from None`: the chained request holds the form
        raise _Transient(type(exc).__name__) from None
    if _is_transient(r.status_code):
        raise _Transient(f"HTTP {r.status_code}", _retry_after(r))
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
            self._token, lifetime = _retrying(
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
        _update_manifest(out / "sentinel2_manifest.json", header, "products", hit.name, entry)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- transfers


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (hashlib algorithm name)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _is_transient(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(r: requests.Response) -> float | None:
    value = r.headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


def _raise_for_status(r: requests.Response, what: str) -> None:
    """Map an HTTP error to NotFoundError, _Transient (429, 5xx) or AcquireError."""
    status = r.status_code
    if status < 400:
        return
    if status == 404:
        raise NotFoundError(f"{what}: not found (HTTP 404)")
    if _is_transient(status):
        raise _Transient(f"HTTP {status}", _retry_after(r))
    hint = "; check your CDSE account" if status in (401, 403) else ""
    raise AcquireError(f"{what}: HTTP {status} {r.reason}: {r.text[:300]}{hint}")


def _retrying(action: Callable[[], T], *, what: str, retries: int, backoff: float) -> T:
    """Run `action`, retrying _Transient failures with exponential back-off."""
    attempt = 0
    while True:
        try:
            return action()
        except _Transient as exc:
            if attempt >= retries:
                raise AcquireError(f"{what}: gave up after {attempt + 1} attempts ({exc})") from None
            delay = max(backoff * 2**attempt, exc.retry_after or 0.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, exc, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


def _get_json(http: requests.Session, url: str, params: Mapping | None, timeout: float) -> dict:
    try:
        r = http.get(url, params=params, timeout=timeout)
    except _NETWORK_ERRORS as exc:
        raise _Transient(type(exc).__name__) from exc
    _raise_for_status(r, url)
    return r.json()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from 'bytes 100-199/1000' or 'bytes */1000'."""
    m = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    first, total = m.groups()
    return (None if first is None else int(first)), (None if total == "*" else int(total))


def _resume_offset(part: Path, expected_size: int | None) -> int:
    """Bytes already in `part`; a part longer than the expected size is discarded."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        return 0
    return offset


def _transfer(
    http: requests.Session, url: str, part: Path, headers: Headers,
    expected_size: int | None, timeout: float, progress: bool,
) -> None:
    """One attempt: fetch what `part` still lacks (Range), appending to it."""
    offset = _resume_offset(part, expected_size)
    if expected_size is not None and offset == expected_size:
        return
    request_headers = dict(headers() if callable(headers) else headers or {})
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    try:
        with http.get(url, headers=request_headers, stream=True, timeout=timeout) as r:
            if r.status_code == 416:  # nothing left after `offset`
                if _content_range(r.headers.get("Content-Range"))[1] == offset:
                    return  # the part already holds the whole file
                part.unlink()
                raise _Transient("server refused the resume range; restarting")
            _raise_for_status(r, url)
            start, total = _body_span(r)
            if start not in (0, offset):
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting")
            _write_body(r, part, start, total, progress)
    except _NETWORK_ERRORS as exc:
        raise _Transient(type(exc).__name__) from exc
    if total is not None and part.stat().st_size != total:
        raise _Transient(f"connection ended at byte {part.stat().st_size} of {total}")


def _body_span(r: requests.Response) -> tuple[int, int | None]:
    """(offset of the body in the file, total file size) of a 200 or 206 response."""
    if r.status_code == 206:
        first, total = _content_range(r.headers.get("Content-Range"))
        return (first or 0), total
    length = r.headers.get("Content-Length")
    return 0, (int(length) if length and length.isdigit() else None)


def _write_body(r: requests.Response, part: Path, start: int, total: int | None, progress: bool) -> None:
    """Stream the body into `part` at `start` (0 truncates), with a progress bar."""
    name = part.name.removesuffix(".part")
    with part.open("ab" if start else "wb") as f, tqdm(
        total=total, initial=start, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
        disable=not progress, leave=False,
    ) as bar:
        for chunk in r.iter_content(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))


def _verify(
    part: Path, name: str, expected_size: int | None, md5: str | None,
    verify: Callable[[Path], None] | None,
) -> None:
    """Check size, MD5 and content of a finished part; on failure delete it and raise."""
    try:
        size = part.stat().st_size
        if expected_size is not None and size != expected_size:
            raise AcquireError(f"{name}: got {size} bytes, expected {expected_size}")
        if md5 and (got := file_digest(part, "md5")) != md5.lower():
            raise AcquireError(f"{name}: MD5 {got} does not match the published {md5.lower()}")
        if verify is not None:
            verify(part)
    except AcquireError as exc:
        part.unlink(missing_ok=True)
        raise AcquireError(f"{exc}; the download was deleted, run again to retry") from None


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    md5: str | None = None,
    headers: Headers = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    timeout: float = TIMEOUT_S,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` reliably; returns `dest`.

    An existing `dest` (of `expected_size`, when given) is kept without a request.
    Otherwise bytes go to `<dest>.part`, resumed with HTTP Range after an interruption
    (in this call or an earlier run); connection errors, 5xx and 429 are retried
    `retries` times with back-off `backoff * 2**attempt` s. The part is renamed to
    `dest` only after its size, `md5` and `verify(part)` (which raises AcquireError)
    pass; a failed check deletes it. `headers` may be a callable, called per attempt
    (tokens that expire). Raises NotFoundError on 404, AcquireError otherwise.
    """
    dest = Path(dest)
    if dest.is_file() and expected_size in (None, dest.stat().st_size):
        log.info("%s is already complete, skipped", dest.name)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with _session() as http:
        _retrying(
            lambda: _transfer(http, url, part, headers, expected_size, timeout, progress),
            what=f"download of {dest.name} from {url}", retries=retries, backoff=backoff,
        )
    _verify(part, dest.name, expected_size, md5, verify)
    part.replace(dest)
    return dest


# ---------------------------------------------------------------- zips, manifests


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


def _update_manifest(path: Path, header: Mapping, section: str, key: str, entry: Mapping) -> None:
    """Merge `entry` under `section[key]` into the JSON manifest at `path` (atomic write)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(header)
    data.setdefault(section, {})[key] = dict(entry)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- reachability


def _unreachable_reason(exc: requests.RequestException, timeout: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
    return m.group(0) if m else type(exc).__name__


def _probe(url: str, timeout: float) -> str | None:
    """None if `url` answers at all (any HTTP status), else why not."""
    try:
        with _session() as http:
            http.head(url, timeout=timeout, allow_redirects=False).close()
    except requests.RequestException as exc:
        return f"{url} ({_unreachable_reason(exc, timeout)})"
    return None


def check_reachable(urls: list[str], timeout: float = 3.0) -> None:
    """Raise AcquireError naming every endpoint in `urls` that does not answer within `timeout`."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(urls)))
    probes = {pool.submit(_probe, url, timeout): url for url in urls}
    done, _ = wait(probes, timeout=timeout + 1.0)  # name lookups ignore requests' timeout
    pool.shutdown(wait=False, cancel_futures=True)
    problems = [
        probe.result() if probe in done else f"{url} (no answer within {timeout:g} s)"
        for probe, url in probes.items()
    ]
    problems = [p for p in problems if p]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise AcquireError(
            f"cannot reach {len(problems)} of {len(urls)} endpoint(s):\n{listed}\n{OFFLINE_HELP}"
        )
