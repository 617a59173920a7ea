"""Limits on request bodies, enforced as they stream in, before anything is parsed or buffered: the upload cap
(413), the body deadline and minimum rate (408), and admission of uploads (a queue place and a share of the
buffered-bytes budget, 503 + Retry-After) before their bodies are read.

Written as raw ASGI because the multipart parser would otherwise read (and buffer) the whole body before any
route code runs, and FastAPI turns errors raised while parsing into a generic 400.
"""

from __future__ import annotations

import asyncio
import time
from typing import NoReturn

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.service.admission import Admission, ServiceBusy
from app.web.errors import (
    ApiError,
    api_error,
    body_timeout,
    body_too_slow,
    send_error,
    upload_budget_full,
    upload_too_large,
)

UPLOAD_PATHS = frozenset({"/transcribe", "/v1/audio/transcriptions"})  # transcribed now: a worker's place first
JOB_PATHS = frozenset({"/jobs"})  # held in memory too (until stored in the job queue), then queued: no worker
# Scope key of the queue place UploadAdmission took for the route (app/web/deps.py hands it to the route).
UPLOAD_TICKET = "deepspeech.upload_ticket"


class _Refused(Exception):
    """Raised from a wrapped `receive` to stop the app; the _Guard that raised it answers instead."""


class _Guard:
    """One request through a middleware that may refuse it from inside `receive`: from then on the app's own
    answer (a 400 for a body that could not be parsed) is dropped and the refusal goes out, unless a response
    had started (uvicorn then closes the connection)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.refusal: ApiError | None = None
        self.started = False

    def refuse(self, error: ApiError) -> NoReturn:
        self.refusal = error
        raise _Refused

    async def send(self, message: Message) -> None:
        if self.refusal is None:
            self.started = self.started or message["type"] == "http.response.start"
            await self._send(message)

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive) -> None:
        try:
            await app(scope, receive, self.send)
        except _Refused:
            if self.refusal is None:  # an outer guard's: it answers
                raise
        if self.refusal is not None and not self.started:
            await send_error(self._send, scope["path"], self.refusal)


def _content_length(scope: Scope) -> int | None:
    declared = dict(scope["headers"]).get(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


class UploadLimit:
    """ASGI middleware: 413 as soon as Content-Length or the bytes received exceed `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await send_error(send, scope["path"], upload_too_large(self.max_bytes))
            return
        guard = _Guard(send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    guard.refuse(upload_too_large(self.max_bytes))
            return message

        await guard.run(self.app, scope, counting_receive)


class _BodyClock:
    """How long the next body chunk may take: `idle` seconds, and no later than a body arriving at
    `min_rate` bytes a second after a slack of `idle` seconds would have it."""

    def __init__(self, idle: float, min_rate: int) -> None:
        self.idle = idle
        self.min_rate = min_rate
        self.started: float | None = None
        self.received = 0
        self.done = False
        self.rate_bound = False  # whether the rate, not the idle time, set the last allowance

    def allowance(self) -> float | None:
        """Seconds for the next chunk; None once the body is in (no deadline after it)."""
        if self.done:
            return None
        now = time.monotonic()
        if self.started is None:
            self.started = now
        wait = self.idle
        if self.min_rate:
            wait = min(wait, self.started + self.idle + self.received / self.min_rate - now)
        self.rate_bound = wait < self.idle
        return max(wait, 0.0)

    def took(self, message: Message) -> None:
        if message["type"] != "http.request":  # disconnected
            self.done = True
            return
        self.received += len(message.get("body", b""))
        self.done = not message.get("more_body", False)

    def error(self) -> ApiError:
        return body_too_slow(self.min_rate) if self.rate_bound else body_timeout(self.idle)


class BodyDeadline:
    """ASGI middleware: 408 (and close) when a request body goes `idle_seconds` without a byte, or falls below
    `min_bytes_per_second` on average once a slack of `idle_seconds` is spent.

    Only while the body arrives: once its last chunk is in, `receive` is the wait for the client's disconnect (a
    streamed response waits there for as long as it streams) and has no deadline. Websockets pass untouched.
    Neither uvicorn nor Starlette has a body deadline (uvicorn's timeouts are keep-alive and shutdown)."""

    def __init__(self, app: ASGIApp, idle_seconds: float, min_bytes_per_second: int) -> None:
        self.app = app
        self.idle_seconds = idle_seconds
        self.min_bytes_per_second = min_bytes_per_second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = _Guard(send)
        clock = _BodyClock(self.idle_seconds, self.min_bytes_per_second)

        async def timed_receive() -> Message:
            wait = clock.allowance()
            if wait is None:
                return await receive()
            try:
                async with asyncio.timeout(wait):
                    message = await receive()
            except TimeoutError:
                guard.refuse(clock.error())
            clock.took(message)
            return message

        await guard.run(self.app, scope, timed_receive)


class UploadBudget:
    """Bytes of upload bodies held at once over all requests. An upload alone always fits (else one larger than
    the budget but under the upload cap could never run)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int, own: int = 0) -> bool:
        """Take `size` more bytes for a request that holds `own` already; False if that goes over the budget."""
        if self.held > own and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class UploadAdmission:
    """ASGI middleware for the upload routes: a queue place (Admission.reserve) and the body's bytes against the
    shared budget are taken before the body is read, so that a full queue or budget is a 503 + Retry-After that
    the client gets before it sends its body, and the memory held is bounded by the budget, not by the number of
    clients. Content-Length is reserved whole; a body without one is counted as it arrives (503 when it goes
    over). Both are given back when the request ends; the route runs its transcription on the ticket
    (app/web/deps.py: UploadTicketDep)."""

    def __init__(self, app: ASGIApp, admission: Admission, budget_bytes: int) -> None:
        self.app = app
        self.admission = admission
        self.budget = UploadBudget(budget_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in UPLOAD_PATHS | JOB_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            ticket = self.admission.reserve() if path in UPLOAD_PATHS else None
        except ServiceBusy as exc:
            await send_error(send, path, api_error(exc, path))
            return
        declared = _content_length(scope)
        held = 0
        try:
            if declared is not None and not self.budget.take(declared):
                await send_error(
                    send, path, api_error(upload_budget_full(self.budget.held, self.budget.limit), path)
                )
                return
            held = declared or 0
            guard = _Guard(send)

            async def counting_receive() -> Message:
                nonlocal held
                message = await receive()
                size = len(message.get("body", b""))
                if message["type"] == "http.request" and size:
                    if not self.budget.take(size, own=held):
                        guard.refuse(api_error(upload_budget_full(self.budget.held, self.budget.limit), path))
                    held += size
                return message

            scope[UPLOAD_TICKET] = ticket
            await guard.run(self.app, scope, receive if declared is not None else counting_receive)
        finally:
            if ticket is not None:
                ticket.release()
            self.budget.give(held)
