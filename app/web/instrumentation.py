"""Request counting and the structured access log: raw ASGI middleware (HTTP and websockets) that labels every
request by its route *template* (never the raw path: /v1/models/{model_id} is one series however many ids are
asked for), times it and writes one access-log line.

The access log carries method, route, status, duration and audio seconds. It never carries audio, transcripts
or the query string (a websocket's `?api_key=` would otherwise land in the log).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.service.metrics import Metrics, request_audio

access_log = logging.getLogger("app.access")
UNMATCHED = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/v1/models/{model_id}`, `/static` for the mount), else <unmatched>."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None) is not None:
        return str(route.path)
    # Not routed (refused by a middleware before the router ran): match the app's routes ourselves.
    router = getattr(scope.get("app"), "router", None)
    return _match(getattr(router, "routes", ()), scope, depth=0) or UNMATCHED


def _match(routes: Any, scope: Scope, depth: int) -> str | None:
    for candidate in routes:
        try:
            match, child = candidate.matches(scope)
        except Exception:  # noqa: BLE001 - a route we cannot match is no reason to fail a request
            continue
        if match != Match.FULL:
            continue
        route = child.get("route")
        if getattr(route, "path", None):
            return str(route.path)
        if getattr(candidate, "path", None):
            return str(candidate.path)
        # FastAPI >= 0.12x wraps included routers (no `path`); their original router holds the routes.
        inner = getattr(getattr(candidate, "original_router", None), "routes", None)
        if inner is not None and depth < 4:
            return _match(inner, scope, depth + 1)
    return None


class Instrumentation:
    """ASGI middleware: request counter, duration histogram, in-progress gauge and the access-log line.

    Added outermost, so it also counts the 401s and 413s the auth and upload middlewares answer.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500 if kind == "http" else 0
        method = scope.get("method", "WS") if kind == "http" else "WS"
        early_route = route_template(scope)  # before the app runs, for the in-progress gauge
        audio_holder: list[float] = []
        token = request_audio.set(audio_holder)

        async def observing_send(message: Message) -> None:
            nonlocal status
            kind_ = message["type"]
            if kind_ == "http.response.start":
                status = message["status"]
            elif kind_ == "websocket.accept" and status == 0:
                status = 101
            elif kind_ == "websocket.close" and status == 0:
                status = 403  # closed before accept: servers answer the handshake with 403
            elif kind_ == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self.metrics.in_progress.labels(early_route)
        in_progress.inc()
        try:
            await self.app(scope, receive, observing_send)
        finally:
            in_progress.dec()
            request_audio.reset(token)
            if status == 0:  # a websocket the app never answered (error before accept)
                status = 500
            route = route_template(scope)
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.request_seconds.labels(method, route).observe(elapsed)
            _log_access(method, route, status, elapsed, sum(audio_holder) if audio_holder else None)


def _log_access(method: str, route: str, status: int, seconds: float, audio_seconds: float | None) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {
        "method": method,
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
    }
    if audio_seconds is not None:
        fields["audio_seconds"] = round(audio_seconds, 3)
    text = f"{method} {route} {status} {seconds * 1000:.1f} ms"
    if audio_seconds is not None:
        text += f" audio {audio_seconds:.2f} s"
    access_log.info(text, extra={"access": fields})
