"""What every download shares: endpoints, areas of interest, resumable verified transfers.

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
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import requests
from tqdm import tqdm

log = logging.getLogger(__name__)

WORLDCOVER_URL = "https://esa-worldcover.s3.eu-central-1.amazonaws.com"
CDSE_CATALOGUE_URL = "https://catalogue.dataspace.copernicus.eu/odata/v1"
CDSE_DOWNLOAD_URL = "https://zipper.dataspace.copernicus.eu/odata/v1"
CDSE_TOKEN_URL = (
    "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
)

# name -> (environment variable, default)
ENDPOINTS: dict[str, tuple[str, str]] = {
    "worldcover": ("LC_WORLDCOVER_URL", WORLDCOVER_URL),
    "catalogue": ("LC_CDSE_CATALOGUE_URL", CDSE_CATALOGUE_URL),
    "download": ("LC_CDSE_DOWNLOAD_URL", CDSE_DOWNLOAD_URL),
    "token": ("LC_CDSE_TOKEN_URL", CDSE_TOKEN_URL),
}

RETRIES = 5
BACKOFF_S = 2.0
TIMEOUT_S = 60.0
MAX_RETRY_AFTER_S = 300.0
CHUNK = 1 << 16  # bytes per write; an interruption loses at most the chunk in flight
NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
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


def session() -> requests.Session:
    """A session for every request here (proxies from the environment still apply)."""
    http = requests.Session()
    http.auth = _NoNetrc()
    return http


class Transient(Exception):
    """A failure worth retrying (network error, 5xx, 429)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


# ---------------------------------------------------------------- endpoints, areas


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


# ---------------------------------------------------------------- transfers


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file (hashlib algorithm name)."""
    with Path(path).open("rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def is_transient(status: int) -> bool:
    return status == 429 or status >= 500


def retry_after(r: requests.Response) -> float | None:
    value = r.headers.get("Retry-After", "")
    return min(float(value), MAX_RETRY_AFTER_S) if value.isdigit() else None


def _raise_for_status(r: requests.Response, what: str) -> None:
    """Map an HTTP error to NotFoundError, Transient (429, 5xx) or AcquireError."""
    status = r.status_code
    if status < 400:
        return
    if status == 404:
        raise NotFoundError(f"{what}: not found (HTTP 404)")
    if is_transient(status):
        raise Transient(f"HTTP {status}", retry_after(r))
    hint = "; check your CDSE account" if status in (401, 403) else ""
    raise AcquireError(f"{what}: HTTP {status} {r.reason}: {r.text[:300]}{hint}")


def retrying(action: Callable[[], T], *, what: str, retries: int, backoff: float) -> T:
    """Run `action`, retrying Transient failures with exponential back-off."""
    attempt = 0
    while True:
        try:
            return action()
        except Transient as exc:
            if attempt >= retries:
                raise AcquireError(f"{what}: gave up after {attempt + 1} attempts ({exc})") from None
            delay = max(backoff * 2**attempt, exc.retry_after or 0.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, exc, attempt + 1, retries, delay)
            time.sleep(delay)
            attempt += 1


def get_json(http: requests.Session, url: str, params: Mapping | None, timeout: float) -> dict:
    try:
        r = http.get(url, params=params, timeout=timeout)
    except NETWORK_ERRORS as exc:
        raise Transient(type(exc).__name__) from exc
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
                raise Transient("server refused the resume range; restarting")
            _raise_for_status(r, url)
            start, total = _body_span(r)
            if start not in (0, offset):
                part.unlink()
                raise Transient(f"server resumed at byte {start}, not {offset}; restarting")
            _write_body(r, part, start, total, progress)
    except NETWORK_ERRORS as exc:
        raise Transient(type(exc).__name__) from exc
    if total is not None and part.stat().st_size != total:
        raise Transient(f"connection ended at byte {part.stat().st_size} of {total}")


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
    with session() as http:
        retrying(
            lambda: _transfer(http, url, part, headers, expected_size, timeout, progress),
            what=f"download of {dest.name} from {url}", retries=retries, backoff=backoff,
        )
    _verify(part, dest.name, expected_size, md5, verify)
    part.replace(dest)
    return dest


def update_manifest(path: Path, header: Mapping, section: str, key: str, entry: Mapping) -> None:
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
        with session() as http:
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
