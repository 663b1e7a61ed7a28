"""uvicorn's h11 protocol with the connection limits uvicorn lacks (issue #14; bench/slow_clients.py measures them).

uvicorn arms no timer before a request head is complete and counts connections only once a request is parsed,
so clients that connect and send nothing, drip header bytes or never finish a body hold a file handle each
until the process runs out; nor does anything bound how long an answer waits on a client that does not read it.
This subclass keeps uvicorn's parser and ASGI handling and adds these rules:

- a request head must be complete `header_timeout_s` after the connection opened (plus the keep-alive time
  after a previous response), and a body `body_timeout_s` after its head, else the connection is closed
  (with a 408 if no response was started). After an early answer (a 413 from Content-Length) uvicorn reads
  and discards the rest of the body, so a client still sending gets the answer, not a reset; the body
  deadline bounds that too.
- an answer the client does not take must drain in time: once more than the transport's high-water mark of it
  waits unsent (asyncio calls `pause_writing`), `resume_writing` must follow within `send_timeout_s`, else the
  connection is aborted, freeing the unsent bytes and the handle. Less than that, left unsent when the
  keep-alive time closes the connection, is dropped at the client deadline.
- at most `max_connections` are open: a new one closes the connection that has waited longest on its
  client (no complete request yet), and gets a 503 only when every connection has a request the app is
  working on. Kept below the open-file limit, accept() never fails for want of file handles.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import metrics


def _response(status: int, reason: str, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response in the service's JSON error shape, written before or instead of the app's."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + extra + b"connection: close\r\n\r\n" + body


FULL = _response(503, "Service Unavailable", "overloaded", "too many open connections", b"retry-after: 1\r\n")
SLOW_BODY = _response(408, "Request Timeout", "request_timeout", "the request body did not arrive in time")


@dataclass
class ConnectionLimits:
    """The limits, and the connections waiting on their clients, oldest first (shared by all connections)."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    waiting: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)


class GuardedH11Protocol(H11Protocol):
    """H11Protocol plus deadlines on request heads, bodies and unread answers and a cap on open connections."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None

    # The ignore: this narrows BaseTransport to Transport, as uvicorn's own H11Protocol does
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            metrics.REJECTED.labels(reason="too_many_connections").inc()
            metrics.connection_closed("too_many_connections")
            transport.write(FULL)
            transport.close()
            return
        self._wait_for_client(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        self._stop_send_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(self.limits.send_timeout_s, self._not_reading)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_deadline()

    def handle_events(self) -> None:
        was = self.conn.their_state
        super().handle_events()
        now = self.conn.their_state
        if now is was or self.transport.is_closing():
            return
        if now is h11.SEND_BODY:
            self._wait_for_client(self.limits.body_timeout_s)
        elif now is h11.IDLE:  # the rest of a body answered early (a 413) came in: the next request may follow
            self._wait_for_client(self.timeout_keep_alive + self.limits.header_timeout_s)
        else:  # the whole request is in: the app's turn, no deadline
            self._stop_waiting()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._wait_for_client(self.timeout_keep_alive + self.limits.header_timeout_s)

    def _wait_for_client(self, timeout_s: float) -> None:
        """(Re)start the deadline for the client's next bytes and mark this connection as evictable."""
        self._stop_waiting()
        self.limits.waiting[self] = None
        self.deadline = self.loop.call_later(timeout_s, self._too_slow)

    def _stop_waiting(self) -> None:
        self.limits.waiting.pop(self, None)
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            if self.transport.get_write_buffer_size():  # a close() still flushing to a client that does not read
                metrics.connection_closed("send_timeout")
                self.transport.abort()
            return
        in_body = self.conn.their_state is h11.SEND_BODY
        metrics.connection_closed("body_timeout" if in_body else "header_timeout")
        if in_body and self.cycle is not None and not self.cycle.response_started:
            self.transport.write(SLOW_BODY)
            self.transport.close()  # the 408 is small: it leaves with the close
        else:
            self.transport.abort()  # nothing to say: free the handle now, whatever the client's receive window

    def _stop_send_deadline(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def _not_reading(self) -> None:
        """The client left an answer unread too long: drop it (also after a close() still waiting to flush)."""
        self.send_deadline = None
        metrics.connection_closed("send_timeout")
        self.transport.abort()

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest on its client, to make room for a new one."""
        while self.limits.waiting:
            oldest, _ = self.limits.waiting.popitem(last=False)
            if oldest is not self and not oldest.transport.is_closing():
                oldest._stop_waiting()
                metrics.connection_closed("evicted")
                oldest.transport.abort()  # close() would keep the socket until its unread answer drained
                return True
        return False
