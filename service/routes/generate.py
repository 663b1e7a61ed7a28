"""POST /generate: samples from a model, as JSON (base64 PNGs + latents) or one PNG grid."""

from __future__ import annotations

import base64
import math
from typing import Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from opentelemetry.trace import Tracer

from latent_cnf.images import grid, png_bytes
from latent_cnf.model import Trajectory

from .. import offload
from ..dependencies import Hub
from ..inference import Disconnected, ModelHub, fresh_seed
from ..model_calls import SampleJob
from ..schemas import BINARY, ERROR_RESPONSES, GenerateRequest, GenerateResponse

router = APIRouter(tags=["generate"])
JSON = "application/json"


def wants_png(request: Request, format: str | None) -> bool:
    if format is not None:
        return format == "png"
    return "image/png" in request.headers.get("accept", "")


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={
        **ERROR_RESPONSES,
        200: {"content": {"image/png": {"schema": BINARY}}, "description": "JSON, or a PNG grid"},
    },
)
async def generate(
    body: GenerateRequest,
    request: Request,
    hub: Hub,
    format: Literal["json", "png"] | None = Query(None, description="png: one grid image (same as Accept: image/png)"),
) -> Response:
    """Draw `n` samples; the same seed and parameters give the same images."""
    tracer = request.app.state.tracer
    return await answer(hub, body, wants_png(request, format), request.is_disconnected, tracer)


async def answer(
    hub: ModelHub, body: GenerateRequest, as_png: bool, disconnected: Disconnected, tracer: Tracer
) -> Response:
    """The whole of a valid request's work, from this route or from service/fast_generate.py's shortcut to it."""
    served = hub.registry.get(body.model, body.version)
    served.check_label(body.label)
    solver = served.sample_solver(body.solver.model_dump() if body.solver else None)
    seed = fresh_seed(body.seed)
    job = SampleJob(body.n, body.label, seed, body.temperature)
    if as_png:
        path = await hub.sample("generate", served, job, solver, 2, disconnected)
        with tracer.start_as_current_span("encode"):
            return await offload.encode(body.n, grid_png, path, body.n)
    path, pngs = await hub.sample_pngs(served, job, solver, disconnected)
    return respond(served.name, body, seed, path, pngs)


def grid_png(path: Trajectory, n: int) -> Response:
    return Response(png_bytes(grid(path.images[-1], math.ceil(math.sqrt(n)))), media_type="image/png")


def respond(model: str, body: GenerateRequest, seed: int, path: Trajectory, pngs: list[bytes]) -> Response:
    """GenerateResponse's JSON, written by orjson (the fields in its order; a pydantic round trip of the same
    dictionary costs ~7x as much)."""
    fields = {
        "model": model,
        "n": body.n,
        "label": body.label,
        "labels": path.labels.tolist() if path.labels is not None else None,
        "seed": seed,
        "temperature": body.temperature,
        "nfe": path.nfe,
        "images": [base64.b64encode(png).decode() for png in pngs],
        "latents": path.latents[-1].tolist(),
    }
    return Response(orjson.dumps(fields), media_type=JSON)
