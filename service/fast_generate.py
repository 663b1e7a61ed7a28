"""POST /generate's usual request answered beside FastAPI rather than through it: a Content-Length JSON body
that validates, a JSON answer.

Why: for a one-sample request FastAPI's routing, dependency solving, body parsing and exception middleware cost
the server more CPU than the sample itself (py-spy, docs/benchmarks.md). Everything else (a body that does not
validate, `?format=png` or `Accept: image/png`, a chunked body) goes on to the FastAPI route, which is what
/openapi.json documents and which answers errors in the service's shape. Both run routes/generate.py's
`answer`: one implementation, two ways in. It sits inside the service's middleware (request ID, metrics, body
limit), so those see every request the same way.
"""

from __future__ import annotations

import orjson
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .failures import Refusal
from .routes import generate
from .schemas import GenerateRequest

PATH = "/generate"


def _takes(scope: Scope) -> bool:
    """A request the shortcut answers as the route would: POST /generate, no query, a JSON body of known length,
    a JSON answer wanted."""
    if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST" or scope["query_string"]:
        return False
    headers = dict(scope["headers"])
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    return (
        b"content-length" in headers
        and errors.is_json(content_type)
        and b"image/png" not in headers.get(b"accept", b"")
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client left first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the FastAPI route after the body was read here: the body once, then the client's messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


# The FastAPI route, set as the request's route: its path labels the request's metrics (service/app.py)
ROUTE = next(route for route in generate.router.routes if isinstance(route, APIRoute) and route.path == PATH)


class FastGenerate:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _takes(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return
        try:  # as FastAPI parses it: a JSON document validated in Python mode
            request_body = GenerateRequest.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):  # the route answers it, in the service's error shape
            await self.app(scope, _replay(body, receive), send)
            return
        app, scope["route"] = scope["app"], ROUTE
        request = Request(scope, receive)
        try:
            response = await generate.answer(
                app.state.hub, request_body, False, request.is_disconnected, app.state.tracer
            )
        except Refusal as error:
            response = errors.refusal_response(request, error)
        await response(scope, receive, send)
