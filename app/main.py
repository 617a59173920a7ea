"""FastAPI application: `uvicorn app.main:app` (what `make serve` and launchd run)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.engine import Engine
from app.errors import install_error_handlers
from app.limits import UploadLimit
from app.routes import info, stream, transcribe
from app.settings import Settings

log = logging.getLogger("app")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app; models load once in the lifespan (or a preloaded engine is used, e.g. by tests)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            app.state.engine = Engine.load(settings)
        yield

    app = FastAPI(
        title="DeepSpeech transcription service",
        summary="Private, on-premise speech-to-text: Mozilla DeepSpeech on Core ML (macOS) or NumPy (anywhere).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    if engine is not None:  # preloaded: usable even where no lifespan runs (httpx's ASGITransport)
        app.state.engine = engine
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    install_error_handlers(app)
    app.include_router(transcribe.router)
    app.include_router(stream.router)
    app.include_router(info.router)
    return app


def _app_from_environment() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app()


app = _app_from_environment()
