"""Request IDs: taken from X-Request-ID (or made up), returned on every response, stamped on every log line."""

from __future__ import annotations

import logging
import re
import secrets
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# What a client may choose: short, printable, no spaces (it is echoed in a header and written to logs).
ACCEPTED = re.compile(r"[\x21-\x7e]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s"  # the fields of each JSON line
# uvicorn's loggers have handlers of their own; routed through the root handler, their lines carry the ID too.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current() -> str | None:
    """The ID of the request being handled in this task, None outside requests."""
    return _current.get()


def headers() -> dict[str, str]:
    """The header to put on a response built outside the middleware (the 500 handler)."""
    request_id = current()
    return {HEADER: request_id} if request_id else {}


class RequestIdMiddleware:
    """Sets the request's ID for the whole task that serves it (so log lines and the v2 `id` can use it)
    and adds it to the response. Each request runs in its own task, so the ID never leaks to another."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER.lower().encode(), b"").decode("latin-1")
        request_id = given if ACCEPTED.fullmatch(given) else secrets.token_hex(16)  # uuid4's bits, 1/10 its CPU
        _current.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record ("-" outside requests), so formats can name it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current() or "-"
        return True


def configure_logging(log_format: Literal["text", "json"], access_log: bool = True, level: int = logging.INFO) -> None:
    """One root handler for the service's and the server's loggers, in text or JSON, with request IDs; without
    `access_log`, no line per request (uvicorn then formats none). Idempotent: a second app in the same process
    replaces the handler rather than adding another."""
    handler = logging.StreamHandler()
    handler.name = "latent_cnf"
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter(JSON_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == handler.name]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.getLogger("latent_cnf").setLevel(level)
    for name in SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = access_log or name != "uvicorn.access"
