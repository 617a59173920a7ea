"""The connection guard: uvicorn's httptools protocol plus what neither uvicorn nor llhttp does for a request's
head, and a cap on open connections below the open-file limit.

Written by hand because uvicorn (0.54) has none of it: `timeout_keep_alive` is armed only after a response, so a
client that connects and sends nothing, or sends its headers a byte at a time, holds a descriptor for ever;
llhttp has no header size limit, so a 64 MiB header is buffered whole; `limit_concurrency` answers 503 only once
a request's headers are in (idle connections keep their descriptors until then) and counts tasks too. Per
connection:
- header deadline (DS_HEADER_TIMEOUT_SECONDS): armed at connect and at the first byte of a later request (the
  keep-alive timer covers the wait between requests), cancelled when the headers are complete; then the
  connection is closed, with a 408 if part of a request had come;
- header size cap (DS_MAX_HEADER_BYTES): 431 and close once the bytes of an unfinished head pass it, counted as
  they arrive, so at most one socket read (256 KiB) more than the cap is ever buffered;
- connection cap (DS_MAX_CONNECTIONS), over uvicorn's own set of connections (websockets included): a connection
  over it closes the one that has waited longest for a request's headers (an attacker's idle socket, or a
  kept-alive one), or gets 503 when every connection is busy; a warning says so, at most every 10 s.
`python -m app` passes the class to uvicorn.Config(http=...); `uvicorn app.main:app` runs without the guard.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.settings import Settings
from app.web.errors import ApiError, header_timeout, headers_too_large, raw_response, too_many_connections

log = logging.getLogger("app")

# Descriptors kept for the service itself (listening socket, model and library files, the event loop's own,
# PyAV, logs) when the connection cap is derived from the open-file limit: 64, or an eighth of a larger limit.
RESERVED_FILES = 64
# What an unlimited soft limit counts as; app/__main__.py raises the soft limit to at most this (OPEN_FILES_CAP).
UNLIMITED_FILES = 65536
CAP_LOG_INTERVAL = 10.0  # seconds between two "connection cap reached" lines

Phase = Literal["between", "head", "body"]  # where the next byte of the connection goes


def default_max_connections(soft_limit: int) -> int:
    """DS_MAX_CONNECTIONS's default: the soft open-file limit less a reserve for the service's own files."""
    files = (
        UNLIMITED_FILES
        if soft_limit == resource.RLIM_INFINITY or soft_limit > UNLIMITED_FILES
        else soft_limit
    )
    return max(files // 2, files - max(RESERVED_FILES, files // 8))


class ConnectionCap:
    """Open connections against the cap, and which of them wait for a request's headers, oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._idle: dict[ConnectionGuard, None] = {}  # insertion order: the longest waiting first
        self._closed = 0
        self._refused = 0
        self._logged_at = -CAP_LOG_INTERVAL

    def waiting(self, connection: ConnectionGuard) -> None:
        self._idle.pop(connection, None)
        self._idle[connection] = None

    def busy(self, connection: ConnectionGuard) -> None:
        self._idle.pop(connection, None)

    def admit(self, connection: ConnectionGuard, open_connections: int) -> bool:
        """False when `connection` is over the cap and no other is idle (it is refused then)."""
        if open_connections <= self.limit:
            return True
        victim = next((other for other in self._idle if other is not connection), None)
        if victim is not None:
            self.busy(victim)
            victim.close_idle()
            self._closed += 1
        else:
            self._refused += 1
        self._report(open_connections)
        return victim is not None

    def _report(self, open_connections: int) -> None:
        now = time.monotonic()
        if now - self._logged_at < CAP_LOG_INTERVAL:
            return
        log.warning(
            "connection cap of %d reached (DS_MAX_CONNECTIONS): %d open; since the last such line %d idle "
            "connection(s) closed for new ones, %d new one(s) refused with 503",
            self.limit,
            open_connections,
            self._closed,
            self._refused,
        )
        self._logged_at, self._closed, self._refused = now, 0, 0


class ConnectionGuard(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline, the header size cap and the connection cap;
    `guarded_protocol` makes the subclass that carries the settings."""

    header_timeout: ClassVar[float]
    max_header_bytes: ClassVar[int]
    cap: ClassVar[ConnectionCap]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: Phase = "between"
        self._head_bytes = 0
        self._begun = 0  # requests begun on this connection

    # --- the connection ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        self.cap.waiting(self)
        if not self.cap.admit(self, len(self.connections)):
            self._refuse(too_many_connections(self.cap.limit))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.cap.busy(self)
        super().connection_lost(exc)

    def close_idle(self) -> None:
        """Closed for a new connection at the cap; out of the count at once (uvicorn's lags a loop turn)."""
        self._disarm()
        self.connections.discard(self)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        phase, begun = self._phase, self._begun
        super().data_received(data)
        if self._phase != "head" or self.transport.is_closing():
            return
        # The whole read is head bytes when it started inside this head, or started between requests and began
        # this one. When it also held the end of an earlier request (pipelining), it is not counted: at most one
        # read more than the cap.
        if (phase == "head" and self._begun == begun) or (phase == "between" and self._begun == begun + 1):
            self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(headers_too_large(self.max_header_bytes))

    # --- httptools parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._head_bytes = "head", 0
        self._begun += 1
        if self._deadline is None:  # a later request: the keep-alive timer stopped at its first byte
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._phase = "body"
        self.cap.busy(self)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._phase = "between"

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete:  # no pipelined request waits
            self.cap.waiting(self)

    # --- deadline and refusals ----------------------------------------------------------------------------------

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "head":  # part of a request came: say why it is closed
            self._refuse(header_timeout(self.header_timeout))
        else:  # nothing at all since connecting: close quietly, as for an idle keep-alive connection
            self.transport.close()

    def _refuse(self, error: ApiError) -> None:
        """Answer `error` (its headers say `connection: close`) and close, before any of the request runs."""
        self._disarm()
        # What came of the request line: an error under /v1/ is in OpenAI's shape.
        path = getattr(self, "url", b"").decode("latin-1")
        self.transport.write(raw_response(path, error))
        self.transport.close()


def guarded_protocol(settings: Settings, open_files: int) -> type[ConnectionGuard]:
    """The protocol class for uvicorn.Config(http=...), with this server's limits."""
    limit = settings.max_connections or default_max_connections(open_files)

    class Guarded(ConnectionGuard):
        header_timeout = settings.header_timeout_seconds
        max_header_bytes = settings.max_header_bytes
        cap = ConnectionCap(limit)

    log.info(
        "connections: at most %d open (DS_MAX_CONNECTIONS); headers within %g s and %d bytes",
        limit,
        settings.header_timeout_seconds,
        settings.max_header_bytes,
    )
    return Guarded
