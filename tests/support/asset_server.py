"""A loopback HTTP file server with faults on demand, for code that downloads (scripts/get_model.py).

It serves `files` (URL path -> bytes) from a thread on a free port, answers `Range: bytes=N-` with 206 (or ignores
it), and on request cuts a body short (an interrupted transfer: the full Content-Length announced, the connection
closed early), redirects, answers another status (404, 503), or serves a truncated copy with an honest or a lying
Content-Length. Every request's path and Range header are recorded.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    """What goes wrong, by URL path; `AssetServer.reset()` clears them all."""

    cut_after: dict[str, int] = field(default_factory=dict)  # close after this many body bytes
    status: dict[str, int] = field(default_factory=dict)  # answer this status, no body
    redirect: dict[str, str] = field(default_factory=dict)  # 302 to this path (as GitHub's release URLs do)
    truncate: dict[str, tuple[int, bool]] = field(default_factory=dict)  # (bytes kept, announce full length)
    ignore_range: bool = False  # answer 200 with the whole file, as servers without Range support do


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None


class AssetServer:
    """Files over HTTP on 127.0.0.1 with faults; use `serving(files)` to start and stop one."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.faults = Faults()
        self.requests: list[Request] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.assets = self  # type: ignore[attr-defined]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def reset(self, files: dict[str, bytes] | None = None) -> None:
        """No faults, no requests recorded, and (if given) these files instead."""
        self.faults = Faults()
        self.requests.clear()
        if files is not None:
            self.files = dict(files)

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request for `path`, in order (None: no Range)."""
        return [r.range for r in self.requests if r.path == path]


@contextmanager
def serving(files: dict[str, bytes]) -> Iterator[AssetServer]:
    server = AssetServer(files)
    thread = threading.Thread(target=server._http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server._http.shutdown()
        server._http.server_close()
        thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a short body is visible only by the length it announced

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server: AssetServer = self.server.assets  # type: ignore[attr-defined]
        path, faults = self.path, server.faults
        server.requests.append(Request(path, self.headers.get("Range")))
        if path in faults.redirect:
            self._empty(302, {"Location": faults.redirect[path]})
            return
        if path in faults.status or path not in server.files:
            self._empty(faults.status.get(path, 404))
            return
        data = server.files[path]
        announced = len(data)
        if path in faults.truncate:
            kept, lie = faults.truncate[path]
            data = data[:kept]
            announced = announced if lie else kept
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match[1]) if match and not faults.ignore_range else 0
        if start and start >= announced:
            self._empty(416, {"Content-Range": f"bytes */{announced}"})
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{announced - 1}/{announced}")
        self.send_header("Content-Length", str(announced - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        if path in faults.cut_after:
            body = body[: faults.cut_after[path]]
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if len(body) < announced - start:
            self.close_connection = True  # the client sees the connection end before the announced length

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
