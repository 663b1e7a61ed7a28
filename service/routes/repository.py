"""The Open Inference Protocol's model repository extension (Triton's and KServe's): list the repository's models
and versions, load a model (or its new version) and unload one, without a restart. Control calls change what
everyone is served: with LATENT_CNF_CONTROL_TOKEN set they need `Authorization: Bearer <token>` (docs/operations.md
says who should reach them); inference is never asked for it."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request

from ..dependencies import Hub, ServiceSettings
from ..failures import MalformedRequest, Unauthorized
from ..open_inference import ErrorMessage, RepositoryChange, RepositoryEntry
from ..schemas import error_responses
from ..v2_models import OPERATIONS

router = APIRouter(prefix="/v2/repository", tags=["model repository (v2)"])
ERRORS = error_responses(
    ErrorMessage,
    {
        400: "the model's folder does not load, or the body is not a JSON object",
        401: "no or another bearer token (LATENT_CNF_CONTROL_TOKEN)",
        404: "no such model in the repository, or not loaded",
        415: None,
        422: None,
    },
)
Authorization = Annotated[str | None, Header(description="Bearer <LATENT_CNF_CONTROL_TOKEN>, when one is set")]


async def parameters(request: Request) -> dict[str, Any]:
    """The optional JSON object of a repository call (clients send none, `null` or `{"parameters": ...}`)."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedRequest(f"the body must be empty or a JSON object: {error}") from None
    if body is not None and not isinstance(body, dict):
        raise MalformedRequest("the body must be empty or a JSON object")
    return body or {}


Parameters = Annotated[dict[str, Any], Depends(parameters)]


def check_token(settings: ServiceSettings, authorization: str | None) -> None:
    token = settings.control_token
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme != "Bearer" or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Unauthorized("repository control calls need 'Authorization: Bearer <LATENT_CNF_CONTROL_TOKEN>'")


def model_name(name: str) -> str:
    """The repository's model of a name as clients give it: `mnist-final-cond` or one of its v2 operations."""
    base, _, operation = name.rpartition(".")
    return base if base and operation in OPERATIONS else name


@router.post("/index", response_model=list[RepositoryEntry], responses=ERRORS)
async def repository_index(hub: Hub, body: Parameters) -> list[RepositoryEntry]:
    """Every version of every model in the repository, loaded or not: {name, version, state, reason}, state one
    of READY, LOADING, UNLOADING, UNAVAILABLE. `{"ready": true}` lists the READY ones only."""
    entries = [RepositoryEntry(**entry) for entry in hub.registry.index()]
    return [entry for entry in entries if entry.state == "READY" or body.get("ready") is not True]


@router.post("/models/{name}/load", response_model=RepositoryChange, responses=ERRORS)
async def load_model(
    name: str, hub: Hub, settings: ServiceSettings, body: Parameters, authorization: Authorization = None
) -> RepositoryChange:
    """Serve the versions of the model that the version policy names, as its folder holds them now: a new version
    takes traffic once loaded and warm, and a version the policy drops is unloaded after its requests finish."""
    check_token(settings, authorization)
    versions = await hub.registry.load_model(model_name(name))
    return RepositoryChange(name=model_name(name), versions=[str(version) for version in versions])


@router.post("/models/{name}/unload", response_model=RepositoryChange, responses=ERRORS)
async def unload_model(
    name: str, hub: Hub, settings: ServiceSettings, body: Parameters, authorization: Authorization = None
) -> RepositoryChange:
    """Stop serving the model: new requests for it are refused at once (503 while it drains, then 404); those
    already queued or running finish first."""
    check_token(settings, authorization)
    versions = await hub.registry.unload_model(model_name(name))
    return RepositoryChange(name=model_name(name), versions=[str(version) for version in versions])
