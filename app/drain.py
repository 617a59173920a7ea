"""Graceful shutdown: on SIGTERM (launchd's stop, `kill`), stop taking new work, let what was accepted finish.

uvicorn's own shutdown waits for HTTP requests in flight but closes every websocket at once (1012), so an open
stream would lose the transcript of what it already sent. Draining comes first instead:
1. new HTTP requests get 503 + Retry-After and new websockets are refused (1001); `/health` still answers and
   `/ready` turns 503, so a load balancer stops sending work;
2. each open stream gets the final transcript of the audio it sent, then a close with 1001 (going away);
3. requests in flight (an upload still arriving included) run to completion;
4. once nothing is left, or after DS_SHUTDOWN_GRACE_SECONDS, uvicorn shuts down and the process exits 0.
`python -m app` wires it to SIGTERM (app/__main__.py); a second SIGTERM or a Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from app.routes.openai import PREFIX as OPENAI_PREFIX
from app.routes.openai import error_body
from app.service.admission import Admission
from app.web.errors import send_json

log = logging.getLogger(__name__)

# Answer while draining: liveness, readiness (503 while draining) and metrics are how operators watch it.
ALWAYS_SERVED = frozenset({"/health", "/ready", "/metrics"})
GOING_AWAY = 1001  # websocket close code: the server is going down


class ServerDraining(RuntimeError):
    """The service is shutting down: the stream ends with its final transcript."""


class Drain:
    """The shutdown state shared by the middleware, the stream routes and the signal handler."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0  # HTTP requests being handled (not streams, not ALWAYS_SERVED)
        self._event: asyncio.Event | None = None

    @property
    def event(self) -> asyncio.Event:
        """Set when draining begins; created on first use, inside the server's event loop."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.draining:
                self._event.set()
        return self._event

    def begin(self) -> None:
        if not self.draining:
            log.info("draining: no new requests or streams; finishing those in flight")
        self.draining = True
        self.event.set()

    async def wait_idle(self, admission: Admission, timeout: float) -> bool:
        """Wait until no request is in flight and no stream is open (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        while self.in_flight or admission.active_streams:
            if time.monotonic() >= deadline:
                log.warning(
                    "shutdown grace of %.0f s is over with %d request(s) and %d stream(s) still open; "
                    "they are cut off (raise DS_SHUTDOWN_GRACE_SECONDS to give them longer)",
                    timeout,
                    self.in_flight,
                    admission.active_streams,
                )
                return False
            await asyncio.sleep(0.05)
        return True


SHUTTING_DOWN = "the service is shutting down; retry shortly (another instance may take over)"


def _shutting_down(path: str) -> object:
    if path.startswith(OPENAI_PREFIX):  # the OpenAI SDKs read {"error": {...}}
        return error_body(SHUTTING_DOWN, type="server_error", code="server_shutting_down")
    return {"detail": SHUTTING_DOWN}


class DrainMiddleware:
    """Counts HTTP requests in flight and, once draining, refuses new requests and websockets."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get("path") in ALWAYS_SERVED:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            if kind == "websocket":  # accepted first: a close before accept reaches the client as HTTP 403
                if (await receive())["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                    await send(
                        {
                            "type": "websocket.close",
                            "code": GOING_AWAY,
                            "reason": "the server is shutting down",
                        }
                    )
            else:
                await send_json(send, 503, _shutting_down(scope["path"]), ((b"retry-after", b"5"),))
            return
        if kind == "websocket":  # streams are tracked by the Admission and ended by their routes
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
