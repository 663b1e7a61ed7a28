"""uvicorn's h11 protocol with the connection limits uvicorn lacks (issue #14; bench/slow_clients.py measures them).

uvicorn arms no timer before a request head is complete and counts connections only once a request is parsed,
so clients that connect and send nothing, drip header bytes or never finish a body hold a file handle each
until the process runs out; nor does anything bound how long an answer waits on a client that does not read it.
This subclass keeps uvicorn's parser and ASGI handling and adds these rules:

- a request head must be complete `header_timeout_s` after the connection opened (plus the keep-alive time
  after a previous response), and a body `body_timeout_s` after its head, else the connection is closed
  (with a 408 if no response was started).
- after an early answer (a 413 from Content-Length, or any answer completed before its request's body) the
  rest of the body is read and discarded, so a client that sends its whole body before reading (most do)
  gets the answer, not a reset or a broken pipe. On a keep-alive connection uvicorn does that itself and the
  next request may follow; on one that closes after the answer (the client sent `Connection: close`, as
  urllib does) uvicorn would close at once, with the body's rest unread, and the kernel would answer that
  with a reset that can destroy the answer before the client reads it. Here the close lingers instead, as
  nginx's lingering close does: our side is shut (the client reads the answer, then EOF), the rest of the
  body is read and dropped, and the connection closes when the body is in or the client closes. Either way
  at most `linger_bytes` are discarded, by the body deadline; past either, the connection is aborted.
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
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from . import metrics


def _response(status: int, reason: str, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response in the service's JSON error shape, written before or instead of the app's."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + extra + b"connection: close\r\n\r\n" + body


FULL = _response(503, "Service Unavailable", "overloaded", "too many open connections", b"retry-after: 1\r\n")
SLOW_BODY = _response(408, "Request Timeout", "request_timeout", "the request body did not arrive in time")
# Bytes of a body discarded after its request was answered early: 13 times the default upload limit, so a
# client merely over the limit (a 6 MB photo) gets its 413, while one streaming without end is cut off after
# tens of ms of CPU. The body deadline bounds the time.
LINGER_BYTES = 64 * 2**20


@dataclass
class ConnectionLimits:
    """The limits, and the connections waiting on their clients, oldest first (shared by all connections)."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    linger_bytes: int = LINGER_BYTES
    waiting: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)


class GuardedH11Protocol(H11Protocol):
    """H11Protocol plus deadlines on request heads, bodies and unread answers and a cap on open connections."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.discarded = 0  # bytes of the current request's body received after its answer was complete
        self.lingering = False  # answered, our side shut: reading the rest of the body, then closing

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

    def data_received(self, data: bytes) -> None:
        if self.cycle is not None and self.cycle.response_complete and self.conn.their_state is h11.SEND_BODY:
            self.discarded += len(data)  # the rest of a body answered early: read only to be dropped
            if self.discarded > self.limits.linger_bytes:
                metrics.connection_closed("linger_limit")
                self._stop_waiting()
                self.transport.abort()  # enough: the client gets a reset, as it would have without lingering
                return
        if self.lingering:
            self._discard(data)
        else:
            super().data_received(data)

    def handle_events(self) -> None:
        was, cycle = self.conn.their_state, self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a new request, whose task has not run yet
            self.cycle.transport = _AnswerTransport(self, self.cycle)
            self.discarded = 0
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
        if self.lingering:  # no next request on this connection: the body deadline alone bounds the linger
            self._unset_keepalive_if_required()
        elif not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._wait_for_client(self.timeout_keep_alive + self.limits.header_timeout_s)

    def close_after(self, cycle: RequestResponseCycle) -> None:
        """Close once `cycle` is done with the connection: at once, or, when its answer is whole but the client is
        still sending the request's body, after lingering (see the module's docstring)."""
        if (
            cycle is not self.cycle
            or not cycle.response_complete
            or not cycle.keep_alive  # the server is shutting down
            or self.conn.their_state is not h11.SEND_BODY
            or self.transport.is_closing()
        ):
            self.transport.close()
            return
        self.lingering = True
        cycle.body = bytearray()  # what arrived while the app answered: never read
        if self.transport.can_write_eof():  # not under TLS: the answer, then our FIN
            self.transport.write_eof()
        self.flow.resume_reading()  # uvicorn pauses reading a body the app does not read

    def _discard(self, data: bytes) -> None:
        """Drop the rest of a body while lingering; close once it is in (nothing unread: no reset)."""
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not h11.NEED_DATA:
                if isinstance(event, h11.EndOfMessage):
                    self.transport.close()
                    return
        except h11.RemoteProtocolError:  # not a body after all: nothing to wait for
            self.transport.close()

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


class _AnswerTransport(asyncio.Transport):
    """The transport a request's RequestResponseCycle sees: the connection's, but its close() (after the answer,
    when the client asked to close or the app failed) goes through GuardedH11Protocol.close_after, which may
    linger. uvicorn's own closes (shutdown, keep-alive expiry, bad requests) and ours use the real transport."""

    def __init__(self, protocol: GuardedH11Protocol, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self.protocol, self.cycle = protocol, cycle

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.protocol.transport.write(data)

    def is_closing(self) -> bool:
        return self.protocol.lingering or self.protocol.transport.is_closing()

    def close(self) -> None:
        self.protocol.close_after(self.cycle)
