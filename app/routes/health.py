"""Liveness (`/health`), readiness (`/ready`) and the Prometheus metrics (`/metrics`).

`/health` answers as long as the process does (launchd / a load balancer restarts it otherwise). `/ready` is
200 only once the models are loaded and one warm-up inference has gone through both paths (app/service/
services.py's `warm_up`). Whether `/metrics` needs the API key is DS_METRICS_PUBLIC's business (app/web/auth.py).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.web.deps import ServicesDep

router = APIRouter(tags=["health"])


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
async def ready(services: ServicesDep) -> JSONResponse:
    """Readiness: 200 once the models are loaded and the warm-up inference ran, else 503."""
    if services.loaded_engine is None or not services.ready:
        return JSONResponse({"status": "starting"}, status_code=503, headers={"Retry-After": "1"})
    if services.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
