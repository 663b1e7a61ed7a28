"""Where merged model calls run: in a child process of their own (the default), or in a thread of their own.

Why a process: a model call is hundreds of small torch ops, and each must take the GIL back after it. In the
server process the GIL is also the event loop's, which holds it for a switch interval at a time under load, so
a call that takes 2.9 ms alone took 13.5 ms beside one busy Python thread (and ~9x its time in the server).
In a child process the call runs at its own speed on its own core; only its inputs and outputs cross a pipe,
tensors as NumPy buffers (~0.3 ms a round trip for a 16-sample call). The event loop itself writes to the
pipe and is woken when the answer is there: no thread of this process waits on it.

The child loads the same checkpoints as the server and ignores SIGINT (the server shuts it down). If it dies,
the call in flight fails and the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

import torch

import latent_cnf
from latent_cnf.model import LatentCNF

from .model_calls import BatchKey, Chunk, Result, forward

log = logging.getLogger("latent_cnf.service")
STOP = b""
Call = tuple[list[Result], int, float]  # a call's results, its function evaluations, its seconds where it ran


class Runner(Protocol):
    """Where merged calls run, driven from the event loop: one call at a time (the batcher's worker awaits each)."""

    async def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        """Make a model callable as `name` (a BatchKey's instance): `model` itself where calls run in this
        process, else a copy of `checkpoint` loaded where they run."""

    async def unload(self, name: str) -> None:
        """Free a model no call will name again."""

    async def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        """The call's results, its function evaluations and its time where it ran (transfers not counted)."""

    async def close(self) -> None: ...


class Models:
    """Models by name and the calls on them, in whichever thread calls (the model process's main thread)."""

    def __init__(self, device: str = "cpu"):
        self.models: dict[str, LatentCNF] = {}
        self.device = device

    def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        self.models[name] = model if model is not None else latent_cnf.load(checkpoint, self.device)

    def unload(self, name: str) -> None:
        self.models.pop(name, None)

    def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        started = time.perf_counter()
        results, nfe = forward(self.models[key.instance], key, chunks)
        return results, nfe, time.perf_counter() - started


class InThread:
    """Model calls in this process, on one thread of their own (the event loop awaits them there)."""

    def __init__(self, device: str = "cpu"):
        self.models = Models(device)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.models.load, name, checkpoint, model)

    async def unload(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.models.unload, name)

    async def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.models.run, key, chunks)

    async def close(self) -> None:
        self._thread.shutdown(wait=False)


class _TensorsAsArrays(pickle.Pickler):
    """Pickles tensors as NumPy arrays: their bytes as they are, without torch's storage serialization."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return torch.from_numpy, (obj.numpy(force=True),)
        return NotImplemented


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _TensorsAsArrays(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


HEADER = 8  # bytes of a frame's length, big-endian, before its message


def frame(message: bytes) -> list[bytes]:
    return [len(message).to_bytes(HEADER, "big"), message]


def _receive(sock: socket.socket, size: int) -> bytearray:
    """Exactly `size` bytes from a blocking socket; EOFError once the other end is closed."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the server closed the pipe")
        got += n
    return buffer


def _child(sock: socket.socket, device: str, threads: int) -> None:
    """The child's loop: ("load", name, checkpoint), ("unload", name) or ("call", key, chunks), each answered in
    order with ("ok", value) or ("error", exception); STOP (or the server's end closing) ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    runner = Models(device)
    with contextlib.suppress(EOFError):
        while (message := _receive(sock, int.from_bytes(_receive(sock, HEADER), "big"))) != STOP:
            command, *args = pickle.loads(message)
            try:
                if command in ("load", "unload"):
                    getattr(runner, command)(*args)
                    reply = dumps(("ok", None))
                else:
                    reply = dumps(("ok", runner.run(*args)))
            except Exception as error:  # noqa: BLE001 - the parent raises it for the call's requests
                try:
                    reply = dumps(("error", error))
                except Exception:  # noqa: BLE001 - an exception that does not pickle is sent as its text
                    reply = dumps(("error", RuntimeError(f"{type(error).__name__}: {error}")))
            sock.sendall(b"".join(frame(reply)))


class _Pipe(asyncio.Protocol):
    """The server's end of the socket to the child, on the event loop: commands are written without blocking
    (the loop sends what the child has not read yet), answers read as they come, each to the command that is
    oldest unanswered. So a second call may wait in the socket while the first runs: the child starts it the
    moment the first is done, not a round trip through the event loop later."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buffer = bytearray()
        self.waiting: deque[asyncio.Future[bytes]] = deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= HEADER:
            end = HEADER + int.from_bytes(self.buffer[:HEADER], "big")
            if len(self.buffer) < end:
                return
            message = bytes(self.buffer[HEADER:end])
            del self.buffer[:end]
            answer = self.waiting.popleft()
            if not answer.done():  # its caller may have gone: the answer is read all the same, in order
                answer.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(RuntimeError(f"the model process died ({exc or 'its pipe closed'})"))

    async def ask(self, *command: Any) -> Any:
        """Send a command and wait for its answer's value; an error in the child is raised here."""
        assert self.transport is not None
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting.append(answer)
        self.transport.writelines(frame(dumps(command)))
        status, value = pickle.loads(await answer)
        if status == "error":
            raise value
        return value


class InProcess:
    """Model calls in a child process (spawned: no fork of a process holding threads or a CUDA context). Commands
    may be sent before the last is answered; the child runs them in order."""

    def __init__(self, device: str, threads: int | None):
        # torch's default, a thread per core, would leave the server process none: both then spin for the same
        # cores (measured: 63 requests/s against 488 with one thread at concurrency 32 on 2 cores)
        self.device, self.threads = device, threads or max(1, (os.cpu_count() or 1) - 1)
        self.checkpoints: dict[str, str] = {}  # loaded so far: loaded again by a new child
        self._starting = asyncio.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: _Pipe | None = None

    async def _ask(self, *message: Any) -> Any:
        """Send one command and wait for its answer; a dead child fails its commands and is replaced next time."""
        async with self._starting:
            if self._pipe is None or self._pipe.closed or self._process is None or not self._process.is_alive():
                await self._start()
        assert self._pipe is not None
        return await self._pipe.ask(*message)

    async def _start(self) -> None:
        if self._process is not None:
            log.warning("the model process is gone; starting a new one")
        context = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair()
        args = (theirs, self.device, self.threads)
        self._process = context.Process(target=_child, args=args, name="latent-cnf-models", daemon=True)
        await asyncio.to_thread(self._process.start)  # a second or two: the child imports torch
        theirs.close()
        _, self._pipe = await asyncio.get_running_loop().create_unix_connection(_Pipe, sock=ours)
        for name, checkpoint in self.checkpoints.items():
            await self._pipe.ask("load", name, checkpoint)

    async def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        await self._ask("load", name, checkpoint)
        self.checkpoints[name] = checkpoint

    async def unload(self, name: str) -> None:
        self.checkpoints.pop(name, None)  # a new child does not load it again
        await self._ask("unload", name)

    async def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        call: Call = await self._ask("call", key, list(chunks))
        return call

    async def close(self) -> None:
        if self._process is None or self._pipe is None:
            return
        if not self._pipe.closed and self._pipe.transport is not None:
            self._pipe.transport.writelines(frame(STOP))
            self._pipe.transport.close()  # after what is buffered is sent
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        self._process = None
