"""A pure ASGI request-body limit that answers in the service's JSON error shape."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .errors import error_body


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the streamed body passes the limit; FastAPI re-raises HTTPExceptions
    from body parsing, so the app's handler turns it into a JSON 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """Refuse bodies over `limit` bytes: at once by Content-Length, else while they stream in."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            if length.isdigit():
                metrics.REJECTED.labels(reason="payload_too_large").inc()
                message = f"request body exceeds the limit of {self.limit} bytes"
                await _respond(send, scope["path"], 413, "payload_too_large", message)
            else:
                await _respond(send, scope["path"], 400, "bad_request", "invalid Content-Length header")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)


async def _respond(send: Send, path: str, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(path, code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
