"""FastAPI application: `uvicorn app.main:app` (what `make serve` and launchd run)."""

from __future__ import annotations

import importlib.util
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from typing import NoReturn

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.routes import install_routes
from app.service.job_runner import JobWorkers
from app.service.services import Services, warm_up
from app.settings import Settings
from app.speech.alphabet import AlphabetError
from app.speech.decoding import ScorerError
from app.speech.engine import Engine
from app.speech.model_dir import ModelDirectoryError
from app.speech.runtime import CoreMLUnavailable
from app.web import install_web_layer
from app.web.auth import DOCS_ASSETS
from app.web.logs import configure_logging
from app.wyoming.address import WyomingAddress
from app.wyoming.server import WyomingServer

log = logging.getLogger("app")

API_DESCRIPTION = (
    "HTTP routes are below. The two websocket dialects, `/stream` (this service's) and `/vosk` (Vosk server's), "
    "are described in [AsyncAPI](/asyncapi.json) and in the README."
)

# Startup problems an operator fixes by configuration: reported as one line, never as a traceback.
STARTUP_ERRORS = (ModelDirectoryError, ScorerError, AlphabetError, CoreMLUnavailable)


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    owns_engine: bool = False,
    wyoming_listener: socket.socket | None = None,
) -> FastAPI:
    """Build the app; models load once in the lifespan unless a loaded engine is given (tests, `app` below).

    The app closes (at shutdown) an engine it loaded, or one given with `owns_engine`; never one that tests share
    between apps. With DS_WYOMING_URI it serves Wyoming too, on `wyoming_listener` if bound already."""
    settings = settings or Settings()
    services = Services.create(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services.loaded_engine is None:
            services.use_engine(Engine.load(settings))
        if not services.ready:
            seconds = await run_in_threadpool(warm_up, services.engine)
            log.info("warm-up inference done in %.2f s; ready", seconds)
            services.mark_ready(seconds)
        wyoming = await start_wyoming(services, wyoming_listener)
        jobs = JobWorkers(services) if services.job_queue is not None else None
        if jobs is not None:
            jobs.start()
        yield
        if jobs is not None:
            await jobs.stop()
        if wyoming is not None:
            await wyoming.close()
        services.resumable.close_all()
        if engine is None or owns_engine:
            services.engine.close()  # stops the stream batcher's thread

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the package, not a CDN (a private network
    # often has no internet).
    app = FastAPIOffline(
        title="DeepSpeech transcription service",
        summary="Private, on-premise speech-to-text: Mozilla DeepSpeech on Core ML (macOS) or NumPy (anywhere).",
        description=API_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        favicon_url="/static/favicon.svg",
    )
    # The one untyped app.state entry; routes reach it through app/web/deps.py's typed dependencies.
    app.state.services = services
    install_web_layer(app, services)
    install_routes(app)
    return app


async def start_wyoming(services: Services, listener: socket.socket | None) -> WyomingServer | None:
    """The Wyoming listener when DS_WYOMING_URI is set (same engine, limits and drain as the websockets)."""
    uri = services.settings.wyoming_uri
    if not uri:
        return None
    server = WyomingServer(services, WyomingAddress.parse(uri))
    await server.start(listener)
    return server


def bind_wyoming(settings: Settings) -> socket.socket | None:
    """DS_WYOMING_URI's socket, bound before anything serves; a taken address or a missing zeroconf package
    stops startup with one line."""
    if not settings.wyoming_uri:
        return None
    if settings.wyoming_zeroconf and importlib.util.find_spec("zeroconf") is None:
        _exit("DS_WYOMING_ZEROCONF needs the zeroconf package: pip install '.[zeroconf]' (or unset it)")
    try:
        return WyomingAddress.parse(settings.wyoming_uri).bind()
    except OSError as exc:
        _exit(f"DS_WYOMING_URI={settings.wyoming_uri}: cannot listen there: {exc.strerror or exc}")


@cache
def app_from_environment() -> FastAPI:
    """Settings from DS_* variables, models loaded before the server binds; bad setup exits with one line."""
    try:
        settings = Settings()
        configure_logging(settings.log_format, settings.log_level.upper())
        engine = Engine.load(settings)
    except ValidationError as exc:
        configure_logging()
        _exit(settings_problems(exc))
    except STARTUP_ERRORS as exc:
        _exit(str(exc))
    return create_app(settings, engine, owns_engine=True, wyoming_listener=bind_wyoming(settings))


def settings_problems(exc: ValidationError) -> str:
    """One line naming each bad DS_* variable and what is wrong with it."""
    problems = "; ".join(f"DS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
    return f"invalid settings: {problems}"


def _exit(message: str) -> NoReturn:
    log.critical("cannot start: %s", message)
    raise SystemExit(1)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` reads this attribute; importing the module (tests, create_app) loads nothing.
    if name == "app":
        return app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
