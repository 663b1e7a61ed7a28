"""One JSON error shape for every failure: {"error": {"code", "message"}}; under /v2, the Open Inference
Protocol's own {"error": "message"}, whichever layer refuses the request."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics, request_id

REQUEST_PARTS = ("body", "query", "path", "header", "cookie")  # the first element of a validation error's loc
V2_ROOT = "/v2"


class ServiceError(Exception):
    """An error with its HTTP status, a stable machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def error_body(path: str, code: str, message: str) -> dict:
    """The body of an error answer to a request for `path`."""
    if path == V2_ROOT or path.startswith(f"{V2_ROOT}/"):
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, code, message), status_code=status, headers=headers)


def _describe(errors: list[dict]) -> str:
    """`field: problem`, the field named the same way whether it came in a JSON body, a form or the query string."""
    parts = []
    for error in errors:
        loc, message = list(error.get("loc", ())), error.get("msg", "invalid")
        if loc and loc[0] in REQUEST_PARTS:
            loc = loc[1:]
        if error.get("type") == "json_invalid":  # its loc holds a character position, not a field
            parts.append(f"{message} at character {loc[0]}: {error['ctx']['error']}" if loc else message)
            continue
        where = ".".join(str(p) for p in loc)
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, error: ServiceError) -> JSONResponse:
        if error.status in (413, 503, 504):
            metrics.REJECTED.labels(reason=error.code).inc()
        return error_response(request, error.status, error.code, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_request", _describe(error.errors()))

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
