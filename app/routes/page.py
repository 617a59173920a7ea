"""GET /: a small, self-contained page for people (record and stream from the microphone, or transcribe a file).

Everything it needs lives in `app/static` (served at /static): no CDN, so it works offline. The page talks to the
same public API as any client: websocket /stream, POST /transcribe and GET /info.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    """The page itself; `no-cache` so a browser picks up a new version of the service at once."""
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


def install(app: FastAPI) -> None:
    """Add the page at / and its assets at /static (neither appears in the OpenAPI schema)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
