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
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

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
        """Make a model callable as `name`: `model` itself where calls run in this process, else a copy of
        `checkpoint` loaded where they run."""

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

    def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        started = time.perf_counter()
        results, nfe = forward(self.models[key.model], key, chunks)
        return results, nfe, time.perf_counter() - started


class InThread:
    """Model calls in this process, on one thread of their own (the event loop awaits them there)."""

    def __init__(self, device: str = "cpu"):
        self.models = Models(device)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")

    async def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.models.load, name, checkpoint, model)

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


def _child(conn: multiprocessing.connection.Connection, device: str, threads: int) -> None:
    """The child's loop: ("load", name, checkpoint) or ("call", key, chunks), each answered with ("ok", value)
    or ("error", exception); STOP ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    runner = Models(device)
    while (message := conn.recv_bytes()) != STOP:
        command, *args = pickle.loads(message)
        try:
            if command == "load":
                runner.load(*args)
                reply = dumps(("ok", None))
            else:
                reply = dumps(("ok", runner.run(*args)))
        except Exception as error:  # noqa: BLE001 - the parent raises it for the call's requests
            try:
                reply = dumps(("error", error))
            except Exception:  # noqa: BLE001 - an exception that does not pickle is sent as its text
                reply = dumps(("error", RuntimeError(f"{type(error).__name__}: {error}")))
        conn.send_bytes(reply)


class InProcess:
    """Model calls in a child process (spawned: no fork of a process holding threads or a CUDA context)."""

    def __init__(self, device: str, threads: int | None):
        # torch's default, a thread per core, would leave the server process none: both then spin for the same
        # cores (measured: 63 requests/s against 488 with one thread at concurrency 32 on 2 cores)
        self.device, self.threads = device, threads or max(1, (os.cpu_count() or 1) - 1)
        self.checkpoints: dict[str, str] = {}  # loaded so far: loaded again by a new child
        self._lock = asyncio.Lock()  # one command on the pipe at a time
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: multiprocessing.connection.Connection | None = None

    async def _ask(self, *message: Any) -> Any:
        """Send one command and wait for its answer; a dead child fails the command and is replaced next time."""
        if self._process is None or not self._process.is_alive():
            await self._start()
        assert self._conn is not None
        try:
            self._conn.send_bytes(dumps(message))  # the child waits in recv: it takes the bytes at once
            await self._readable(self._conn.fileno())
            status, value = pickle.loads(self._conn.recv_bytes())  # the child sends a message whole
        except (EOFError, OSError) as error:
            self._process = None
            raise RuntimeError(f"the model process died ({error!r})") from None
        except asyncio.CancelledError:  # its answer would be taken for the next command's: start afresh
            if self._process is not None:
                self._process.kill()
                self._process = None
            raise
        if status == "error":
            raise value
        return value

    @staticmethod
    async def _readable(fd: int) -> None:
        """Until `fd` has bytes to read (or is closed): the loop polls it with every other socket. The loop makes
        the pipe non-blocking to watch it; it is made blocking again for the whole-message reads and writes
        (the child writes a message at once and waits in recv for the next, so neither blocks for long)."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
            os.set_blocking(fd, True)

    async def _start(self) -> None:
        if self._process is not None:
            log.warning("the model process is gone; starting a new one")
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        args = (theirs, self.device, self.threads)
        self._process = context.Process(target=_child, args=args, name="latent-cnf-models", daemon=True)
        await asyncio.to_thread(self._process.start)  # a second or two: the child imports torch
        theirs.close()
        for name, checkpoint in self.checkpoints.items():
            await self._ask("load", name, checkpoint)

    async def load(self, name: str, checkpoint: str, model: LatentCNF | None = None) -> None:
        async with self._lock:
            await self._ask("load", name, checkpoint)
            self.checkpoints[name] = checkpoint

    async def run(self, key: BatchKey, chunks: Sequence[Chunk]) -> Call:
        async with self._lock:
            call: Call = await self._ask("call", key, list(chunks))
            return call

    async def close(self) -> None:
        async with self._lock:
            if self._process is None or self._conn is None:
                return
            with contextlib.suppress(OSError):
                self._conn.send_bytes(STOP)
            await asyncio.to_thread(self._process.join, 10)
            if self._process.is_alive():
                self._process.kill()
                await asyncio.to_thread(self._process.join, 5)
            self._conn.close()
            self._process = None
