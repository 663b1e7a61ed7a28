"""GET /interpolate: samples between two seeds, by interpolating their base noise and running the flow."""

from __future__ import annotations

import base64
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request
from pydantic import Field

from latent_cnf.images import image_pngs
from latent_cnf.model import MAX_TEMPERATURE, Trajectory, slerp

from .. import offload
from ..dependencies import Hub
from ..failures import LabelRequired
from ..schemas import (
    ERROR_RESPONSES,
    MAX_MODEL_NAME,
    MAX_SEED,
    MAX_VERSION,
    TEMPERATURE_HELP,
    VERSION_HELP,
    InterpolateResponse,
)

router = APIRouter(tags=["generate"])
MAX_WEIGHTS = 64


@router.get("/interpolate", response_model=InterpolateResponse, responses=ERROR_RESPONSES)
async def interpolate(
    request: Request,
    hub: Hub,
    seed_a: int = Query(..., ge=0, le=MAX_SEED, description="the sample at t=0: /generate's first sample of this seed"),
    seed_b: int = Query(..., ge=0, le=MAX_SEED, description="the sample at t=1"),
    t: list[Annotated[float, Field(ge=0, le=1)]] = Query(
        [0.5], min_length=1, max_length=MAX_WEIGHTS, description="weights in [0, 1]; repeat for several images"
    ),
    label: int | None = Query(None, ge=0, le=9, description="required for label-conditioned models"),
    temperature: float = Query(1.0, gt=0, le=MAX_TEMPERATURE, description=TEMPERATURE_HELP),
    model: str | None = Query(None, min_length=1, max_length=MAX_MODEL_NAME),
    version: int | None = Query(None, ge=1, le=MAX_VERSION, description=VERSION_HELP),
) -> InterpolateResponse:
    """Spherical interpolation of the two seeds' base noise, pushed through the flow and decoded."""
    served = hub.registry.get(model, version)
    served.check_label(label)
    if served.prior_uses_labels and label is None:
        raise LabelRequired(f"model {served.name!r} is label-conditioned: give 'label'")
    z_a, labels = served.model.draw_base(1, label, seed_a, temperature)
    z_b, _ = served.model.draw_base(1, label, seed_b, temperature)
    z0 = slerp(z_a, z_b, torch.tensor(t, dtype=z_a.dtype).unsqueeze(1))
    labels = labels.expand(len(t)) if labels is not None else None
    path = await hub.sample_from("generate", served, z0, labels, served.sample_solver(), 2, request.is_disconnected)
    return await offload.encode(len(t), respond, served.name, seed_a, seed_b, t, label, temperature, path)


def respond(
    model: str, seed_a: int, seed_b: int, t: list[float], label: int | None, temperature: float, path: Trajectory
) -> InterpolateResponse:
    """PNG encoding off the event loop (a worker thread per response)."""
    return InterpolateResponse(
        model=model,
        seed_a=seed_a,
        seed_b=seed_b,
        t=t,
        label=label,
        temperature=temperature,
        nfe=path.nfe,
        images=[base64.b64encode(png).decode() for png in image_pngs(path.images[-1])],
        latents=path.latents[-1].tolist(),
    )
