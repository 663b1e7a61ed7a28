"""GET /trajectory: the flow from base noise to latent, decoded at evenly spaced times."""

from __future__ import annotations

import base64
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from latent_cnf.images import image_pngs, png_bytes, trajectory_strip
from latent_cnf.latent_map import LatentMap
from latent_cnf.model import MAX_TEMPERATURE, Trajectory

from .. import offload
from ..dependencies import Hub
from ..inference import fresh_seed
from ..model_calls import SampleJob
from ..schemas import (
    BINARY,
    ERROR_RESPONSES,
    MAX_MODEL_NAME,
    MAX_SEED,
    MAX_VERSION,
    TEMPERATURE_HELP,
    VERSION_HELP,
    TrajectoryResponse,
    TrajectoryStep,
)

router = APIRouter(tags=["trajectory"])


@router.get(
    "/trajectory",
    response_model=TrajectoryResponse,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"image/png": {"schema": BINARY}}, "description": "PNG strip, or JSON"},
    },
)
async def trajectory(
    request: Request,
    hub: Hub,
    steps: int = Query(11, ge=2, le=64, description="decoded times from t0 to t1"),
    n: int = Query(1, ge=1, le=16, description="rows (samples)"),
    seed: int | None = Query(None, ge=0, le=MAX_SEED),
    label: int | None = Query(None, ge=0, le=9),
    temperature: float = Query(1.0, gt=0, le=MAX_TEMPERATURE, description=TEMPERATURE_HELP),
    model: str | None = Query(None, min_length=1, max_length=MAX_MODEL_NAME),
    version: int | None = Query(None, ge=1, le=MAX_VERSION, description=VERSION_HELP),
    format: Literal["png", "json"] = Query("png"),
) -> Response | TrajectoryResponse:
    """PNG: n rows of `steps` images with each column's time written above it."""
    served = hub.registry.get(model, version)
    served.check_label(label)
    seed = fresh_seed(seed)
    solver = served.sample_solver()
    job = SampleJob(n, label, seed, temperature)
    path = await hub.sample("trajectory", served, job, solver, steps, request.is_disconnected)
    with request.app.state.tracer.start_as_current_span("encode"):
        images = n * steps
        answer = (served.name, seed, temperature, label, path, served.latent_map, format == "png")
        return await offload.encode(images, respond, *answer)


def respond(
    model: str,
    seed: int,
    temperature: float,
    label: int | None,
    path: Trajectory,
    latent_map: LatentMap | None,
    as_png: bool,
) -> Response | TrajectoryResponse:
    """PNG encoding off the event loop (a worker thread per response)."""
    if as_png:
        return Response(png_bytes(trajectory_strip(path.times, path.images)), media_type="image/png")
    return TrajectoryResponse(
        model=model,
        n=path.latents.shape[1],
        steps=len(path.times),
        seed=seed,
        temperature=temperature,
        label=label,
        labels=path.labels.tolist() if path.labels is not None else None,
        nfe=path.nfe,
        trajectory=[
            TrajectoryStep(
                t=float(t),
                latents=path.latents[i].tolist(),
                images=[base64.b64encode(png).decode() for png in image_pngs(path.images[i])],
                map_points=latent_map.project(path.latents[i]).tolist() if latent_map is not None else None,
            )
            for i, t in enumerate(path.times)
        ],
    )
