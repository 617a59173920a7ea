"""Service information: which model, backend and decoder are running."""

from __future__ import annotations

from fastapi import APIRouter

from app.web.deps import EngineDep

router = APIRouter(tags=["info"])


@router.get("/info")
async def service_info(engine: EngineDep) -> dict[str, object]:
    """The loaded model, the backend that runs it (and its compute units) and the decoder settings."""
    return engine.info()
