"""One JSON error shape for every failure: {"error": {"code", "message"}}; under /v2, the Open Inference
Protocol's own {"error": "message"}, whichever layer refuses the request. The service core raises Refusals
(service/failures.py); their HTTP statuses and headers are decided here and nowhere else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics, request_id
from .failures import (
    ClientClosed,
    CorruptImage,
    EmptyFile,
    ImageTooLarge,
    InvalidRequest,
    InvalidSolver,
    LabelNotSupported,
    LabelRequired,
    LoadFailed,
    MalformedRequest,
    ModelUnavailable,
    NoLatentMap,
    NotReady,
    QueueFull,
    QueueTimeout,
    Refusal,
    RequestTooCostly,
    RequestTooLarge,
    ShuttingDown,
    SolverFailed,
    TooManyFiles,
    Unauthorized,
    UnknownModel,
    UnsupportedImage,
)

REQUEST_PARTS = ("body", "query", "path", "header", "cookie")  # the first element of a validation error's loc
# pydantic's errors for a body that is no JSON object at all: a form, text, an array, nothing
WHOLE_BODY_ERRORS = ("model_attributes_type", "dict_type", "missing")
JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
V2_ROOT = "/v2"
# The HTTP status of every kind of refusal (service/failures.py): the one place the service core meets HTTP.
STATUSES: dict[type[Refusal], int] = {
    MalformedRequest: 400,
    LoadFailed: 400,  # Triton's answer to a load that fails
    Unauthorized: 401,
    UnknownModel: 404,
    NoLatentMap: 404,
    ImageTooLarge: 413,
    RequestTooLarge: 413,
    UnsupportedImage: 415,
    InvalidRequest: 422,
    InvalidSolver: 422,
    LabelNotSupported: 422,
    LabelRequired: 422,
    TooManyFiles: 422,
    RequestTooCostly: 422,
    SolverFailed: 422,
    EmptyFile: 422,
    CorruptImage: 422,
    ClientClosed: 499,  # nginx's: nobody reads it, the access log does
    ModelUnavailable: 503,
    NotReady: 503,
    QueueFull: 503,
    ShuttingDown: 503,
    QueueTimeout: 504,
}
RETRY_AFTER_S = {NotReady: 1, QueueFull: 1, ShuttingDown: 5}  # refusals worth retrying, and how soon
REJECTED = (413, 503, 504)  # statuses counted as load shed (latent_cnf_rejected_total)


def error_body(path: str, code: str, message: str) -> dict[str, str | dict[str, str]]:
    """The body of an error answer to a request for `path`."""
    if path == V2_ROOT or path.startswith(f"{V2_ROOT}/"):
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, code, message), status_code=status, headers=headers)


def _retry_headers(kind: type[Refusal]) -> dict[str, str] | None:
    retry = RETRY_AFTER_S.get(kind)
    return {"Retry-After": str(retry)} if retry is not None else None


def not_ready(body: BaseModel) -> JSONResponse:
    """A readiness probe's answer while models load: its own body (probes read `ready`, not an error), with the
    status and Retry-After of a NotReady refusal, so probes and refused requests agree."""
    return JSONResponse(body.model_dump(), status_code=STATUSES[NotReady], headers=_retry_headers(NotReady))


def is_json(content_type: str) -> bool:
    """Whether FastAPI reads a body of this Content-Type as JSON: application/json or application/*+json."""
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _not_a_json_object(error: dict[str, Any], content_type: str | None) -> str | None:
    """For a body that is no JSON object at all, what the endpoint takes and what came instead, where pydantic
    says only "Input should be a valid dictionary" (e.g. curl -d 'n=1', which sends a form); else None."""
    if tuple(error.get("loc", ())) != ("body",) or error.get("type") not in WHOLE_BODY_ERRORS:
        return None
    if error["type"] == "missing":
        got = "no body"
    elif content_type and not is_json(content_type):  # FastAPI passed the bytes on unparsed
        got = f"Content-Type: {content_type}"
    else:
        got = f"a JSON {JSON_KINDS.get(type(error.get('input')), 'null')}"
    return f"the request body must be a JSON object, sent with Content-Type: application/json; got {got}"


def _describe(errors: Sequence[dict[str, Any]], content_type: str | None = None) -> str:
    """`field: problem`, the field named the same way whether it came in a JSON body, a form or the query string."""
    parts = []
    for error in errors:
        if (whole_body := _not_a_json_object(error, content_type)) is not None:
            parts.append(whole_body)
            continue
        loc, message = list(error.get("loc", ())), error.get("msg", "invalid")
        if loc and loc[0] in REQUEST_PARTS:
            loc = loc[1:]
        if error.get("type") == "json_invalid":  # its loc holds a character position, not a field
            parts.append(f"{message} at character {loc[0]}: {error['ctx']['error']}" if loc else message)
            continue
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def refusal_response(request: Request, error: Refusal) -> JSONResponse:
    """The answer to a refused request, from whichever route refused it (FastAPI's or service/fast_generate.py)."""
    status = STATUSES[type(error)]
    if status in REJECTED:
        metrics.REJECTED.labels(reason=error.code).inc()
    return error_response(request, status, error.code, str(error), _retry_headers(type(error)))


def install(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def _refusal(request: Request, error: Refusal) -> JSONResponse:
        return refusal_response(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message = _describe(error.errors(), request.headers.get("content-type"))
        return error_response(request, 422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
            error.status_code, "http_error"
        )
        if error.status_code == 413:
            metrics.REJECTED.labels(reason=code).inc()
        return error_response(request, error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # answered by the outermost layer, past the request-ID middleware: the ID is added here
        return error_response(
            request, 500, "internal_error", "internal error; see the service log", request_id.headers()
        )
