"""Transports: thin adapters that parse a wire format, call the service layer and render its results.

A new protocol is one module here plus one line in `ROUTERS`."""

from __future__ import annotations

from fastapi import FastAPI

from app.routes import asyncapi, health, info, jobs, openai, page, stream, transcribe, vosk

ROUTERS = (
    transcribe.router,
    openai.router,
    jobs.router,
    stream.router,
    vosk.router,
    asyncapi.router,
    info.router,
    health.router,
)


def install_routes(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    page.install(app)
