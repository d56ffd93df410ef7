"""A real HTTP server on 127.0.0.1 for the acquisition tests.

Each path has a script of replies, used in order (the last one repeats). A reply can
serve a body with HTTP Range support, fail with a status, or cut the body mid-way
(Content-Length announces the whole, the connection closes early). Every request is
recorded, so tests can assert on what the client sent.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    ranged: bool = True  # honour Range requests (206 / 416)
    cut_at: int | None = None  # close the connection after this many body bytes

    @classmethod
    def json(cls, payload: object, status: int = 200) -> Reply:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, ranged=False)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scripts: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, path: str, *replies: Reply) -> None:
        """Answer `path` with `replies` in order, repeating the last."""
        self.scripts[path] = list(replies)

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            script = self.scripts.get(seen.path)
            if not script:
                return Reply(404, b"not here")
            return script.pop(0) if len(script) > 1 else script[0]


class _Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            self.command, parts.path,
            {k: v[0] for k, v in parse_qs(parts.query).items()},
            dict(self.headers.items()), self.rfile.read(length),
        )
        reply = self.server.next_reply(seen)
        status, body, headers = _ranged(reply, self.headers.get("Range")) if reply.ranged else (
            reply.status, reply.body, {})
        self.send_response(status)
        for key, value in {**reply.headers, **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: reply.cut_at] if reply.cut_at is not None else body)


def _ranged(reply: Reply, range_header: str | None) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of a reply honouring 'Range: bytes=N-'."""
    size = len(reply.body)
    headers = {"Accept-Ranges": "bytes"}
    m = re.fullmatch(r"bytes=(\d+)-", range_header or "")
    if reply.status != 200 or not m:
        return reply.status, reply.body, headers
    first = int(m.group(1))
    if first >= size:
        return 416, b"", {**headers, "Content-Range": f"bytes */{size}"}
    return 206, reply.body[first:], {**headers, "Content-Range": f"bytes {first}-{size - 1}/{size}"}
