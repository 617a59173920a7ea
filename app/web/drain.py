"""While the service drains (app/service/drain.py): new HTTP requests get 503 + Retry-After and new websockets
close 1001; liveness, readiness and metrics keep answering, since they are how operators watch the shutdown."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.service.drain import Drain
from app.web.errors import SHUTTING_DOWN, send_error

ALWAYS_SERVED = frozenset({"/health", "/ready", "/metrics"})
GOING_AWAY = 1001  # websocket close code: the server is going down


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
                        {"type": "websocket.close", "code": GOING_AWAY, "reason": "the server is shutting down"}
                    )
            else:
                await send_error(send, scope["path"], SHUTTING_DOWN)
            return
        if kind == "websocket":  # streams are tracked by the Admission and ended by the stream controller
            await self.app(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
