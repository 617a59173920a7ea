"""Web infrastructure, in one place: auth, body limits and upload admission, drain, instrumentation and the
access log, the error table, typed dependencies, the replica header, and the connection guard uvicorn runs
(app/web/connections.py). None of it imports a route; `install_web_layer` puts it in front of the routes."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.formparsers import MultiPartParser

from app.service.services import Services
from app.web.auth import ApiKeyAuth
from app.web.drain import DrainMiddleware
from app.web.errors import install_error_handlers
from app.web.instrumentation import Instrumentation
from app.web.limits import BodyDeadline, UploadAdmission, UploadLimit
from app.web.logs import redact_api_keys
from app.web.replica import ReplicaHeader

log = logging.getLogger("app")


def install_web_layer(app: FastAPI, services: Services) -> None:
    """The middlewares, in their order, and the error handlers."""
    settings = services.settings
    # Uploads stay in memory up to the upload cap (they are bounded by it): Starlette would otherwise spool any
    # file part over 1 MB to a temporary file, and audio must not touch the disk (process-wide class attribute).
    MultiPartParser.spool_max_size = settings.max_upload_bytes
    # add_middleware wraps: the last added runs first. Order per request: ReplicaHeader (with DS_REPLICA_ID:
    # `X-Replica` on every response) -> Instrumentation (counts everything, 401s, 408s and 413s included) -> CORS
    # (if configured) -> DrainMiddleware (503 once shutting down) -> ApiKeyAuth (refuses before any body is read)
    # -> BodyDeadline (408 for a stalled or too slow body) -> UploadLimit (413) -> UploadAdmission (the upload
    # routes: queue place and buffered-bytes budget, 503 before the body is read) -> the routes.
    app.add_middleware(
        UploadAdmission, admission=services.admission, budget_bytes=settings.max_buffered_upload_bytes
    )
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(
        BodyDeadline,
        idle_seconds=settings.body_timeout_seconds,
        min_bytes_per_second=settings.min_upload_bytes_per_second,
    )
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    if api_key:
        app.add_middleware(ApiKeyAuth, api_key=api_key, metrics_public=settings.metrics_public)
        redact_api_keys()  # uvicorn logs websocket URLs, `?api_key=` included
    else:
        log.info("DS_API_KEY is not set: every route is open")
    app.add_middleware(DrainMiddleware, drain=services.drain)
    if settings.cors_origins:  # outermost: preflights are answered before auth, errors carry the headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(Instrumentation, metrics=services.metrics)
    # Outermost: every answer says which replica gave it, refusals and errors included.
    if settings.replica_id:
        app.add_middleware(ReplicaHeader, replica_id=settings.replica_id)
    install_error_handlers(app)
