"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..dependencies import get_hub
from ..inference import ModelHub
from ..schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (models may still be loading)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(hub: ModelHub = Depends(get_hub)) -> Health | JSONResponse:
    """200 only when every model is loaded and warmed up."""
    if not hub.ready:
        return JSONResponse(Health(status="loading").model_dump(), status_code=503, headers={"Retry-After": "1"})
    return Health(status="ready", models=sorted(hub.models))


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
