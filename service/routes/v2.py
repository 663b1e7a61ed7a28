"""The Open Inference Protocol (KServe v2 REST) routes, beside the native API and sharing its hub; errors
answer in the protocol's {"error": "..."} shape (see service/errors.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .. import request_id
from ..dependencies import Hub, ServiceSettings
from ..errors import not_ready
from ..open_inference import (
    HEADER_LENGTH,
    ErrorMessage,
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    check_outputs,
    decode_request,
    encode_response,
)
from ..schemas import BINARY, error_responses
from ..v2_models import V2Model, lookup, run

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]
ERRORS = error_responses(
    ErrorMessage,
    {400: "malformed request or tensors", 413: "body too large", 415: None, 422: "values outside the service's limits"},
)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its $defs inlined, for a body the route reads itself (raw bytes: the
    binary extension puts tensors after the JSON)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""
    return ServerMetadata(name="latent-cnf", version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live", response_model=Live)
async def server_live() -> Live:
    """Always 200 while the process answers, as /healthz."""
    return Live(live=True)


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def server_ready(hub: Hub) -> Ready | JSONResponse:
    """200 when /readyz is; 503 otherwise, with the body saying so (clients read either)."""
    return Ready(ready=True) if hub.registry.ready else not_ready(Ready(ready=False))


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(name: str, hub: Hub) -> ModelMetadata:
    """Inputs and outputs of `<model>.generate`, `<model>.score` or `<model>.complete`, and its loaded versions."""
    return lookup(hub, name).metadata()


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_version_metadata(name: str, version: str, hub: Hub) -> ModelMetadata:
    """As the model's metadata, for one loaded version (404 for a version that is not loaded)."""
    return lookup(hub, name, version).metadata()


@router.get("/models/{name}/ready", response_model=ModelReady, responses=ERRORS)
async def model_ready(name: str, hub: Hub) -> ModelReady:
    """200 once the model is loaded and warm; 503 while it loads, 404 for a model that is not served."""
    return ModelReady(name=lookup(hub, name).name, ready=True)


@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, responses=ERRORS)
async def model_version_ready(name: str, version: str, hub: Hub) -> ModelReady:
    """As the model's readiness, for one version."""
    return ModelReady(name=lookup(hub, name, version).name, ready=True)


@router.get("/models/{name}/config", response_model=dict[str, Any], responses=ERRORS)
async def model_config(name: str, hub: Hub, settings: ServiceSettings) -> dict[str, Any]:
    """Triton's model configuration (the model_configuration extension), as perf_analyzer asks for it."""
    return lookup(hub, name).config(settings)


INFER_ROUTE: dict[str, Any] = {
    "response_model": InferResponse,
    "responses": {
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {"schema": BINARY}},
            "description": "JSON; or, when outputs are asked for as binary data, a JSON header of "
            f"{HEADER_LENGTH} bytes followed by the tensors' raw bytes",
            "headers": {
                HEADER_LENGTH: {
                    "description": "the length of the JSON header (binary answers only)",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        },
    },
    "openapi_extra": {
        "parameters": [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "with binary tensor data: the length of the JSON header that starts the body",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
        "requestBody": {
            "required": True,
            "description": "JSON tensors; or, with the binary tensor data extension (application/octet-stream), "
            f"a JSON header of {HEADER_LENGTH} bytes followed by the tensors' raw bytes",
            "content": {
                "application/json": {"schema": _schema(InferRequest)},
                "application/octet-stream": {"schema": BINARY},
            },
        },
    },
}


@router.post("/models/{name}/infer", **INFER_ROUTE)
async def model_infer(name: str, request: Request, hub: Hub) -> Response:
    """Sample (`<model>.generate`), score (`<model>.score`) or complete (`<model>.complete`) through the same
    batcher and limits as the native routes, on the newest loaded version; `id` is echoed (default: the
    request's X-Request-ID)."""
    return await infer(lookup(hub, name), request, hub)


@router.post("/models/{name}/versions/{version}/infer", **INFER_ROUTE)
async def model_version_infer(name: str, version: str, request: Request, hub: Hub) -> Response:
    """As the model's inference, on one loaded version."""
    return await infer(lookup(hub, name, version), request, hub)


async def infer(model: V2Model, request: Request, hub: Hub) -> Response:
    body, tensors = await run_in_threadpool(decode_request, await request.body(), request.headers.get(HEADER_LENGTH))
    check_outputs(body, [tensor.name for tensor in model.outputs])
    outputs = await run(model, hub, tensors, request.is_disconnected)
    with request.app.state.tracer.start_as_current_span("encode"):
        encoded = await run_in_threadpool(encode_response, body, model.name, outputs, request_id.current())
    if encoded.header_length is None:
        return Response(encoded.content, media_type="application/json")
    return Response(
        encoded.content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(encoded.header_length)}
    )
