"""Prometheus metrics (one CollectorRegistry per app) and the structured access log.

- `Metrics`: the instruments, registered in the app's own registry (tests build many apps in one process; the
  global registry would reject the second app's metrics as duplicates).
- `Instrumentation`: raw ASGI middleware (HTTP and websockets) counting requests by route *template* (never the
  raw path: /v1/models/{model_id} is one series however many ids are asked for), timing them and writing one
  access-log line per request.
- `observe_audio`, `stream_opened`, `stream_closed`: the hooks the routes call (audio seconds, real-time factor,
  active streams). They find the metrics through the app and do nothing in an app without them.

The access log carries method, route, status, duration and audio seconds. It never carries audio, transcripts
or the query string (a websocket's `?api_key=` would otherwise land in the log).
"""

from __future__ import annotations

import json
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("app.access")

# Real-time factor = processing seconds / audio seconds: < 1 is faster than real time. Streams sit near the
# model's cost per second of audio; whole files on Core ML go well below 0.05.
RTF_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
UNMATCHED = "<unmatched>"

# Per request: the audio seconds the route reported, for the access-log line (set by the middleware, filled by
# `observe_audio`; a mutable holder so the route's writes are seen whatever context it runs in).
_request_audio: ContextVar[list[float] | None] = ContextVar("request_audio", default=None)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ds_http_requests",
            "Requests by method, route template and status (websockets: 101 or 403)",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "ds_http_request_duration_seconds",
            "Request duration (websockets: the whole session)",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "ds_http_requests_in_progress",
            "Requests being handled now, by route (the queue in front of the model)",
            ["route"],
            registry=r,
        )
        self.audio_seconds = Counter(
            "ds_audio_seconds", "Seconds of audio transcribed, by route", ["route"], registry=r
        )
        self.processing_seconds = Counter(
            "ds_processing_seconds", "Seconds spent in the model and decoder, by route", ["route"], registry=r
        )
        self.rtf = Histogram(
            "ds_real_time_factor",
            "Processing seconds / audio seconds per transcription or stream",
            ["route"],
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.stream_errors = Counter(
            "ds_stream_errors",
            "Streams ended by an error, by route and code (inference_failed, internal_error, client_too_slow)",
            ["route", "code"],
            registry=r,
        )
        self.active_streams = Gauge(
            "ds_active_streams", "Open websocket streams, by route", ["route"], registry=r
        )
        self.model_load_seconds = Gauge(
            "ds_model_load_seconds",
            "Seconds the model directory, acoustic model and decoder took to load",
            registry=r,
        )
        self.warm_up_seconds = Gauge(
            "ds_warm_up_seconds", "Seconds the startup warm-up inference took", registry=r
        )
        self.ready = Gauge("ds_ready", "1 once models are loaded and warmed up, else 0", registry=r)
        self.queue_depth = Gauge(
            "ds_queue_depth",
            "Transcriptions waiting for a worker (503 once DS_QUEUE_LENGTH wait)",
            registry=r,
        )
        self.workers_busy = Gauge(
            "ds_workers_busy", "Transcriptions running now (at most DS_WORKERS)", registry=r
        )
        self.model = Info("ds_model", "The loaded model, backend, compute units and decoder", registry=r)

    def describe_engine(self, engine: Any, compute_units: str) -> None:
        """Fill the Info metric and the load time from a loaded Engine."""
        self.model.info(
            {
                "model": str(engine.model_dir.name),
                "backend": str(engine.model.backend),
                "compute_units": compute_units if engine.model.backend == "coreml" else "cpu",
                "decoder": str(engine.decoder.description),
            }
        )
        load_seconds = getattr(engine, "load_seconds", None)
        if load_seconds is not None:
            self.model_load_seconds.set(load_seconds)

    def watch_admission(self, admission: Any) -> None:
        """Queue depth and busy workers are read from the Admission when /metrics is scraped."""
        self.queue_depth.set_function(lambda: admission.queued)
        self.workers_busy.set_function(lambda: admission.busy)

    def observe(self, route: str, audio_seconds: float, processing_seconds: float | None) -> None:
        if audio_seconds <= 0:
            return
        self.audio_seconds.labels(route).inc(audio_seconds)
        if processing_seconds is not None:
            self.processing_seconds.labels(route).inc(processing_seconds)
            self.rtf.labels(route).observe(processing_seconds / audio_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- hooks for the routes ------------------------------------------------------------------------------------


def _metrics(app: Any) -> Metrics | None:
    return getattr(app.state, "metrics", None)


def observe_audio(app: Any, route: str, audio_seconds: float, processing_seconds: float | None) -> None:
    """A finished transcription (a file, or one stream's audio): audio seconds, processing seconds, RTF."""
    holder = _request_audio.get()
    if holder is not None:
        holder.append(audio_seconds)
    metrics = _metrics(app)
    if metrics is not None:
        metrics.observe(route, audio_seconds, processing_seconds)


def stream_opened(app: Any, route: str) -> None:
    metrics = _metrics(app)
    if metrics is not None:
        metrics.active_streams.labels(route).inc()


def stream_closed(app: Any, route: str, session: Any | None = None) -> None:
    """The stream is over (eof, client gone or error): the gauge goes down; its audio is counted once."""
    metrics = _metrics(app)
    if metrics is not None:
        metrics.active_streams.labels(route).dec()
    if session is not None:
        observe_stream(app, route, session)


def stream_failed(app: Any, route: str, code: str) -> None:
    metrics = _metrics(app)
    if metrics is not None:
        metrics.stream_errors.labels(route, code).inc()


def observe_stream(app: Any, route: str, session: Any) -> None:
    """A StreamSession's audio and compute time (`processing_seconds`, if the session keeps it)."""
    audio_seconds = float(getattr(session, "audio_seconds", 0.0))
    if audio_seconds > 0:
        observe_audio(app, route, audio_seconds, getattr(session, "processing_seconds", None))


# --- GET /metrics --------------------------------------------------------------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    metrics = _metrics(request.app)
    if metrics is None:
        return Response("metrics are not enabled\n", status_code=404, media_type="text/plain")
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --- middleware ----------------------------------------------------------------------------------------------


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
        token = _request_audio.set(audio_holder)

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
            _request_audio.reset(token)
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


# --- log formatting ------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the access fields when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's own loggers: "uvicorn.error" logs each websocket handshake with its query string
# ("WebSocket /stream?api_key=..." [accepted]), "uvicorn.access" each HTTP request line.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_API_KEY_IN_URL = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)


class RedactApiKey(logging.Filter):
    """Replace `api_key=<key>` in a record's message with `api_key=***` (the key never reaches a log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message.lower():
            record.msg, record.args = _API_KEY_IN_URL.sub(r"\1***", message), None
        return True


def redact_api_keys() -> None:
    """Install RedactApiKey on uvicorn's loggers (idempotent). Filters on a logger see only its own records."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactApiKey) for f in logger.filters):
            logger.addFilter(RedactApiKey())


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """The service's log format: `text` (as before) or `json` (DS_LOG_FORMAT=json), uvicorn's lines included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == "json":  # uvicorn set its own text handlers (propagate=False) before importing the app
        for name in ("uvicorn", "uvicorn.access"):
            logger = logging.getLogger(name)
            if logger.handlers:  # none: switched off (uvicorn --no-access-log); keep it off
                logger.handlers = [handler]
    redact_api_keys()
