"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..dependencies import Hub
from ..errors import not_ready
from ..schemas import Health

router = APIRouter(tags=["operations"])


@router.head(
    "/healthz", response_model=Health, include_in_schema=False
)  # probes that send HEAD: the same answer, without a body
@router.get("/healthz", response_model=Health)
async def healthz(hub: Hub) -> Health:
    """The process is alive: always 200, with the models loaded so far (more may still be loading)."""
    return Health(status="ok", ready=hub.registry.ready, models=sorted(hub.registry.models), failed=hub.registry.failed)


@router.head("/readyz", response_model=Health, include_in_schema=False)
@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(hub: Hub) -> Health | JSONResponse:
    """200 once every checkpoint was tried and the default model is served; `failed` names those that could not be."""
    ready = hub.registry.ready  # read once: the loading thread may flip it while this answers
    status = "ready" if ready else "loading" if hub.registry.loading else "failed"
    health = Health(status=status, ready=ready, models=sorted(hub.registry.models), failed=hub.registry.failed)
    return health if ready else not_ready(health)


@router.head("/metrics", include_in_schema=False)
@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus' text format"}
    },
)
async def prometheus_metrics() -> Response:
    """The process's Prometheus metrics, in the text exposition format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
