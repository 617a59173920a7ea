"""Liveness (`/health`), readiness (`/ready`) and the startup warm-up that readiness waits for.

`/health` answers as long as the process does (launchd / a load balancer restarts it otherwise). `/ready` is
200 only once the models are loaded and one warm-up inference has gone through both paths (a whole file and a
stream): the first inference pays for lazy initialisation (Core ML compiles and places the model on its
compute units, NumPy faults in the weights), and a request that arrives before that would pay it instead.
`/metrics` (Prometheus text) is added here too; whether it needs the API key is DS_METRICS_PUBLIC's business
(app/web/auth.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.metrics import metrics_endpoint

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)

WARM_UP_SECONDS = 1.0


def warm_up(engine: Any) -> float:
    """One second of silence through `transcribe` and through a stream; returns the seconds it took."""
    started = time.monotonic()
    silence = np.zeros(int(16000 * WARM_UP_SECONDS), np.float32)
    engine.transcribe(silence)
    session = engine.open_stream()
    session.feed(silence)
    session.finish()
    return time.monotonic() - started


def mark_ready(app: Any, warm_up_seconds: float | None = None) -> None:
    app.state.ready = True
    metrics = getattr(app.state, "metrics", None)
    if metrics is not None:
        metrics.ready.set(1)
        if warm_up_seconds is not None:
            metrics.warm_up_seconds.set(warm_up_seconds)


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={
        503: {"description": 'not ready yet (`{"status": "starting"}`) or shutting down (`"draining"`)'}
    },
)
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the models are loaded and the warm-up inference ran, else 503."""
    state = request.app.state
    if getattr(state, "engine", None) is None or not getattr(state, "ready", False):
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})
    if state.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


router.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
