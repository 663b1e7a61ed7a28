"""Issue #14: idle and slow connections are closed in time, and so are those whose answers the client does
not read; the connection cap keeps /healthz answering, and a 413 reaches a client that is still sending its
body, also one that asked to close (#30), within bounds. A short version of bench/slow_clients.py, against the
server as it ships (`python -m service`) with small limits so each case takes about a second."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY

from bench.harness import free_port, metric, running_service
from service.body_limit import BodySizeLimit
from service.connections import ConnectionLimits, GuardedH11Protocol

from .service_helpers import ONE_THREAD

LIMITS = {
    "LATENT_CNF_HEADER_TIMEOUT_S": "1",
    "LATENT_CNF_BODY_TIMEOUT_S": "2",
    "LATENT_CNF_SEND_TIMEOUT_S": "1",
    "LATENT_CNF_MAX_CONNECTIONS": "40",
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_WARMUP": "false", **ONE_THREAD, **LIMITS}
    with running_service(env, timeout_s=120) as server:
        yield server.url


@pytest.fixture(scope="module")
def capped_url() -> Iterator[str]:
    """The same cap with a header deadline no test outlasts: on a loaded machine opening 60 sockets can take
    longer than the module server's 1 s, which then closed the newest ones too, for their silence."""
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_WARMUP": "false", **ONE_THREAD, **LIMITS}
    with running_service(env | {"LATENT_CNF_HEADER_TIMEOUT_S": "120"}, timeout_s=120) as server:
        yield server.url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed_after(sock: socket.socket, dripped: bytes = b"", every_s: float = 0.2) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` (dripping `dripped` a byte at a time meanwhile; 10 s at most),
    and what it sent."""
    started, received = time.monotonic(), b""
    sock.settimeout(every_s)
    for i in range(int(10 / every_s)):
        if dripped:
            try:
                sock.sendall(dripped[i % len(dripped) : i % len(dripped) + 1])
            except OSError:
                break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += chunk
    return time.monotonic() - started, received


def healthz_s(url: str) -> float:
    started = time.perf_counter()
    assert httpx.get(f"{url}/healthz", timeout=5, headers={"connection": "close"}).status_code == 200
    return time.perf_counter() - started


def closes(url: str, reason: str) -> float:
    """Connections the server has closed so far for `reason`, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return metric(text, "latent_cnf_connections_closed_total", reason=reason)


def read_answer(sock: socket.socket) -> bytes:
    """A whole error answer (head and JSON body) from `sock`, read within 10 s."""
    sock.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received or not received.endswith(b"}}"):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


@contextlib.contextmanager
def serving(app: Callable, limits: ConnectionLimits) -> Iterator[str]:
    """`app` served in this process by uvicorn with the guarded protocol; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        lifespan="off",
        log_level="warning",
        http=functools.partial(GuardedH11Protocol, limits=limits),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_idle_and_header_dripping_connections_are_closed_after_the_header_timeout(url: str) -> None:
    before = closes(url, "header_timeout")
    idle, drip = connect(url), connect(url)
    assert closed_after(idle)[0] < 2.5
    seconds, received = closed_after(drip, b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    assert seconds < 2.5 and received == b""
    assert closes(url, "header_timeout") >= before + 2


def test_a_body_that_never_ends_gets_408_and_is_closed(url: str) -> None:
    before = closes(url, "body_timeout")
    sock = connect(url)
    sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n")
    sock.sendall(b"Content-Length: 100000\r\n\r\n--b\r\n")
    seconds, received = closed_after(sock, b"b")
    assert 1.5 < seconds < 4
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "request_timeout"
    assert closes(url, "body_timeout") == before + 1


def test_over_the_connection_cap_the_longest_waiting_are_closed_and_healthz_answers(capped_url: str) -> None:
    url = capped_url
    before = closes(url, "evicted")
    idle = [connect(url) for _ in range(60)]  # 20 over the cap of 40
    assert all(healthz_s(url) < 5 for _ in range(5))  # answered at once, not after a header deadline
    time.sleep(0.2)
    closed = []
    for sock in idle:
        sock.settimeout(0.01)
        try:
            closed.append(sock.recv(1) == b"")
        except TimeoutError:
            closed.append(False)
        except OSError:
            closed.append(True)
        sock.close()
    assert sum(closed[:25]) >= 20 and not any(closed[-10:])  # the oldest made room; the newest are still open
    assert closes(url, "evicted") >= before + 20  # and one for each /healthz connection over the cap


def test_413_reaches_a_client_that_is_still_sending_its_body(url: str) -> None:
    """The 413 is sent from Content-Length at once; the server reads and discards the rest, so a client that
    writes its whole body before reading (most do) gets the answer, not a reset or a broken pipe."""
    size = 50_000_000
    sock = connect(url)
    sock.sendall(
        f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    chunk = b"\0" * 1_000_000
    for _ in range(size // len(chunk)):
        sock.sendall(chunk)  # raises BrokenPipeError or ConnectionResetError if the server closed early
    sock.settimeout(5)
    received = b""
    while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < 20:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body[: int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])])["error"]["code"] == (
        "payload_too_large"
    )


def test_413_reaches_a_client_that_asks_to_close_while_still_sending(url: str) -> None:
    """urllib sends `Connection: close` and its whole body before it reads. Closing at once after the 413 left
    the rest of the body unread, the kernel reset the connection, and urllib raised BrokenPipeError or
    ConnectionResetError (10 of 10 tries); the lingering close reads and drops the rest, then closes."""
    for _ in range(3):
        request = urllib.request.Request(f"{url}/score", data=bytes(6_000_000), headers={"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"]["code"] == "payload_too_large"


def test_a_client_still_sending_after_its_413_is_cut_off_at_the_body_deadline(url: str) -> None:
    """Lingering is bounded: a client that asked to close and keeps sending (here about 1 MB/s, far below the
    byte bound) gets its 413 at once and is cut off at the body deadline, 2 s after its head."""
    before = closes(url, "body_timeout")
    sock = connect(url)
    sock.sendall(
        b"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000000000000\r\n\r\n"
    )
    started, received = time.monotonic(), read_answer(sock)
    assert received.startswith(b"HTTP/1.1 413")
    sock.settimeout(0.1)
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        while time.monotonic() - started < 15:
            with contextlib.suppress(TimeoutError):
                sock.sendall(bytes(65536))
                sock.recv(65536)  # b"": the server has shut its side after the answer
            time.sleep(0.05)
    assert 1.5 < time.monotonic() - started < 15
    assert closes(url, "body_timeout") >= before + 1


async def ok_app(scope: dict, receive: Callable, send: Callable) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("connection", ["close", "keep-alive"])
def test_a_client_sending_without_end_after_its_413_is_cut_off_after_linger_bytes(connection: str) -> None:
    """The byte bound: however fast a client sends after an early answer, at most `linger_bytes` of it are read
    and dropped, long before the body deadline (30 s here), whether the connection would close or stay open."""
    limits = ConnectionLimits(
        max_connections=10, header_timeout_s=30, body_timeout_s=30, send_timeout_s=30, linger_bytes=2_000_000
    )
    counted = functools.partial(
        REGISTRY.get_sample_value, "latent_cnf_connections_closed_total", {"reason": "linger_limit"}
    )
    before = counted() or 0
    with serving(BodySizeLimit(ok_app, 1000), limits) as url:
        sock = connect(url)
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nContent-Length: 1000000000000\r\n\r\n".encode()
        )
        assert read_answer(sock).startswith(b"HTTP/1.1 413")
        started, sent = time.monotonic(), 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - started < 20:
                sock.sendall(bytes(1 << 20))
                sent += 1 << 20
        assert time.monotonic() - started < 20 and sent >= 2_000_000
    assert counted() == before + 1


def test_an_answer_the_client_does_not_read_is_dropped_after_the_send_timeout(url: str) -> None:
    """Three pipelined requests for 4.4 MB answers (256 samples as JSON) from a client that never reads. The
    kernel takes about 2.8 MB (its send buffer grows at most to tcp_wmem's maximum, 4 MiB by default), the rest
    waits in the process, asyncio pauses the protocol's writing and, with no resume, the 1 s send timeout
    aborts the connection. Without that timeout all three answers wait for the client for good."""
    body = json.dumps({"inputs": [{"name": "N", "datatype": "INT64", "shape": [1], "data": [256]}]}).encode()
    head = (
        "POST /v2/models/mnist-final-cond.generate/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: it sets the window offered
    sock.connect((host, int(port)))
    before, started = closes(url, "send_timeout"), time.monotonic()
    sock.sendall((head.encode() + body) * 3)
    while closes(url, "send_timeout") == before and time.monotonic() - started < 6:
        assert healthz_s(url) < 1
        time.sleep(0.1)
    assert 1 < time.monotonic() - started < 4  # the first answer's sampling (0.2 s), the 1 s timeout, slack
    sock.settimeout(5)
    received = b""
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except ConnectionResetError:
        pass
    length = int(received.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert len(received) < 3 * length  # what the kernel had taken (here part of the first answer), then the end
    sock.close()


def test_over_the_cap_with_every_connection_busy_a_new_one_gets_503_at_once() -> None:
    """Connections whose requests the app is working on are never closed to make room: a new one is refused."""

    async def slow_app(scope: dict, receive: Callable, send: Callable) -> None:
        await asyncio.sleep(3)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    limits = ConnectionLimits(max_connections=2, header_timeout_s=5, body_timeout_s=5, send_timeout_s=5)
    with serving(slow_app, limits) as url:
        busy = [connect(url) for _ in range(2)]
        for sock in busy:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)
        refused = REGISTRY.get_sample_value("latent_cnf_connections_closed_total", {"reason": "too_many_connections"})
        started = time.monotonic()
        _, received = closed_after(connect(url))
        head, _, body = received.partition(b"\r\n\r\n")
        assert time.monotonic() - started < 1
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
        assert json.loads(body)["error"]["code"] == "overloaded"
        after = REGISTRY.get_sample_value("latent_cnf_connections_closed_total", {"reason": "too_many_connections"})
        assert refused is not None and after == refused + 1  # this server runs in the test's process
        assert all(b"done" in closed_after(sock)[1] for sock in busy)  # the busy ones were left alone
