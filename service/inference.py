"""The service core: the served models, and the merged model calls the batcher runs. No HTTP here: what it
refuses it raises as Refusals (service/failures.py), which service/errors.py answers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import torch
from opentelemetry.trace import Tracer

from latent_cnf import SolverError
from latent_cnf.completion import Completion, check_mask
from latent_cnf.config import SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.model import Score, Trajectory

from . import metrics
from .batching import Batcher, Part
from .call_spans import DISABLED, ModelCall, record_calls
from .failures import ClientClosed, InvalidRequest, ModelUnavailable, SolverFailed
from .model_calls import BatchKey, CompleteChunk, Encoded, SampleChunk, SampleJob, ScoreChunk
from .model_process import InProcess, InThread, Runner
from .registry import ModelRegistry
from .served import ServedModel
from .settings import Settings

log = logging.getLogger("latent_cnf.service")
Disconnected = Callable[[], Awaitable[bool]]  # true once the client has gone
DISCONNECT_CHECK_S = 0.1  # how often a queued or running request checks that its client is still there


def fresh_seed(seed: int | None) -> int:
    """Requests without a seed get a random one, returned so the result can be reproduced."""
    return seed if seed is not None else secrets.randbelow(2**31)


async def until(condition: Callable[[], Awaitable[bool]], every_s: float) -> None:
    """Return once `condition()` is true, checking every `every_s` seconds; a failing check counts as false."""
    while True:
        try:
            if await condition():
                return
        except Exception:  # noqa: BLE001 - a probe that cannot tell is not a disconnect
            log.debug("disconnect check failed", exc_info=True)
        await asyncio.sleep(every_s)


def join_scores(parts: Sequence[Score]) -> Score:
    """The pieces of one request, scored in separate calls, as one score; NFE is the most any part took."""
    if len(parts) == 1:
        return parts[0]
    tensors = [name for name, value in vars(parts[0]).items() if torch.is_tensor(value)]
    joined: dict[str, Any] = {name: torch.cat([vars(part)[name] for part in parts]) for name in tensors}  # as above
    return dataclasses.replace(parts[0], nfe=max(part.nfe for part in parts), **joined)


def join_trajectories(parts: Sequence[Trajectory]) -> Trajectory:
    """The pieces of one request, solved in separate calls, as one trajectory; NFE is the most any part took."""
    if len(parts) == 1:
        return parts[0]
    labels = [part.labels for part in parts if part.labels is not None]
    return Trajectory(
        parts[0].times,
        torch.cat([part.latents for part in parts], 1),
        torch.cat([part.images for part in parts], 1),
        torch.cat(labels) if labels else None,
        max(part.nfe for part in parts),
    )


class ModelHub:
    """Runs requests on the served models: queues each request's parts (cut and priced by its ServedModel,
    service/served.py) for the batcher, withdraws those whose client has gone, and runs the merged calls where
    the runner puts them. Which models are served is the registry's (service/registry.py)."""

    def __init__(self, settings: Settings, tracer: Tracer = DISABLED):
        self.settings, self.tracer = settings, tracer
        self.device = str(resolve_device(settings.device))
        self.batcher: Batcher[BatchKey] | None = None
        # Model calls run in a child process (service/model_process.py), which holds the device.
        self.runner: Runner = (
            InProcess(self.device, settings.threads) if settings.model_process else InThread(self.device)
        )
        self.registry = ModelRegistry(settings, self.device, self.runner, self.warm_up)

    async def load(self) -> None:
        """Start the batcher, then load the models to serve (the registry's start-up)."""
        s = self.settings
        self.batcher = Batcher(self.run_batch, self.device, self.capacity, s.max_wait_ms / 1000, s.max_queue)
        await self.registry.load()

    async def warm_up(self, served: ServedModel) -> None:
        """One small call of each kind where calls run, with the solvers requests get by default."""
        generate = BatchKey(kind="generate", **served.key_fields, solver=served.sample_solver())
        await self.runner.run(generate, [SampleChunk(slice(0, 2), SampleJob(2, None, seed=0))])
        score = BatchKey(kind="score", **served.key_fields, solver=served.score_solver(), importance_samples=2)
        await self.runner.run(score, [ScoreChunk(torch.zeros(1, 28, 28), torch.zeros(1, dtype=torch.long))])

    def capacity(self, key: BatchKey) -> int:
        """Most cost merged into one call of this key (its model's; see ServedModel.capacity). A version gone
        before its requests drained (an unload that stopped waiting) runs each part alone, and the call fails."""
        try:
            return self.registry.running(key).capacity(key)
        except ModelUnavailable:
            return 1

    async def sample(
        self,
        kind: Literal["generate", "trajectory"],
        served: ServedModel,
        job: SampleJob,
        solver: SolverConfig,
        frames: int,
        disconnected: Disconnected | None = None,
    ) -> Trajectory:
        """Samples decoded at `frames` times, solved in parts that may share calls with other requests."""
        key = BatchKey(kind=kind, **served.key_fields, solver=solver, frames=frames)
        return join_trajectories(await self._sample(served, key, job, disconnected))

    async def sample_pngs(
        self, served: ServedModel, job: SampleJob, solver: SolverConfig, disconnected: Disconnected | None = None
    ) -> tuple[Trajectory, list[bytes]]:
        """As `sample` for generating, with each sample's image also as PNG bytes, encoded in the model call."""
        key = BatchKey(kind="generate", **served.key_fields, solver=solver, pngs=True)
        pieces: list[Encoded] = await self._sample(served, key, job, disconnected)
        return join_trajectories([piece.path for piece in pieces]), [png for piece in pieces for png in piece.pngs]

    async def _sample(
        self, served: ServedModel, key: BatchKey, job: SampleJob, disconnected: Disconnected | None
    ) -> list[Any]:
        parts, heavy = served.plan(key, job.n)
        chunks = [Part(p.cost, SampleChunk(p.payload, job)) for p in parts]
        return await self._submit(key, chunks, heavy, disconnected)

    async def sample_from(
        self,
        kind: Literal["generate", "trajectory"],
        served: ServedModel,
        z0: torch.Tensor,
        labels: torch.Tensor | None,
        solver: SolverConfig,
        frames: int,
        disconnected: Disconnected | None = None,
    ) -> Trajectory:
        """Samples from given base noise (and labels), as `LatentCNF.sample_from`, batched like `sample`: for
        noise no single seed draws, such as an interpolation between two seeds' noise."""
        key = BatchKey(kind=kind, **served.key_fields, solver=solver, frames=frames)
        parts, heavy = served.plan(key, len(z0))
        chunks = [
            Part(
                p.cost,
                SampleChunk(p.payload, z0=z0[p.payload], labels=labels[p.payload] if labels is not None else None),
            )
            for p in parts
        ]
        return join_trajectories(await self._submit(key, chunks, heavy, disconnected))

    async def score(
        self, served: ServedModel, images: torch.Tensor, k: int, disconnected: Disconnected | None = None
    ) -> Score:
        """The images' scores, on the CPU; image i draws its proposals from seed i, whatever its part or batch."""
        solver = served.score_solver()
        key = BatchKey(kind="score", **served.key_fields, solver=solver, importance_samples=k)
        parts, heavy = served.plan(key, len(images))
        seeds = torch.arange(len(images))
        chunks = [Part(p.cost, ScoreChunk(images[p.payload], seeds[p.payload])) for p in parts]
        return join_scores(await self._submit(key, chunks, heavy, disconnected))

    async def complete(
        self,
        served: ServedModel,
        image: torch.Tensor,
        mask: torch.Tensor,
        k: int,
        importance_samples: int,
        seed: int,
        disconnected: Disconnected | None = None,
    ) -> Completion:
        """The k heaviest completions of one binary image (28, 28) given its observed pixels, from
        `importance_samples` proposals per label drawn from `seed` alone, whatever else shares the call."""
        try:
            check_mask(mask)
        except ValueError as error:
            raise InvalidRequest(str(error)) from None
        total = importance_samples * served.model.config.score_classes
        if k > total:
            raise InvalidRequest(f"k: at most {total} completions of {importance_samples} proposals per label")
        solver = served.score_solver()
        key = BatchKey(kind="complete", **served.key_fields, solver=solver, importance_samples=importance_samples)
        (part,), heavy = served.plan(key, 1)
        chunk = CompleteChunk(image, mask, seed, k)
        (result,) = await self._submit(key, [Part(part.cost, chunk)], heavy, disconnected)
        completion: Completion = result
        return completion

    async def _submit(
        self, key: BatchKey, parts: list[Part], heavy: bool, disconnected: Disconnected | None
    ) -> list[Any]:
        """Queue a job for the batcher's worker; a failed solve is refused as SolverFailed. While it waits,
        `disconnected` is polled: a job whose client has gone is withdrawn, or dropped before its next part.
        Each part comes back with the model call that ran it, traced here, in the request's context."""
        async with self.registry.holding(key):  # an unload of its version waits for it
            return await self._queue(key, parts, heavy, disconnected)

    async def _queue(
        self, key: BatchKey, parts: list[Part], heavy: bool, disconnected: Disconnected | None
    ) -> list[Any]:
        submitted_ns = time.time_ns()
        assert self.batcher is not None  # made by load() before any model is served
        waiting = asyncio.ensure_future(self.batcher.submit(key, parts, self.settings.timeout_s, heavy))
        if disconnected is not None:
            watcher: asyncio.Future[None] | None = None
            try:  # most answers come before the first check is due: no watcher is started for them
                await asyncio.wait({waiting}, timeout=DISCONNECT_CHECK_S)
                if not waiting.done():
                    watcher = asyncio.ensure_future(until(disconnected, DISCONNECT_CHECK_S))
                    await asyncio.wait({waiting, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this handler is cancelled itself: nothing is left running or polling
                if watcher is not None:
                    watcher.cancel()
                if not waiting.done():
                    waiting.cancel()
                    await asyncio.wait({waiting})  # the queue withdraws the job (see Batcher.submit)
            if waiting.cancelled():
                raise ClientClosed("the client closed the connection before the answer")
        try:
            outcomes = await waiting
        except SolverError as error:
            raise SolverFailed(str(error)) from None
        record_calls(self.tracer, submitted_ns, [call for _, call in outcomes])
        return [result for result, _ in outcomes]

    async def run_batch(self, key: BatchKey, chunks: Sequence[Any]) -> list[tuple[Any, ModelCall]]:
        """One merged model call: each chunk's result, with the call's times and sizes for its trace."""
        started, started_ns = time.perf_counter(), time.time_ns()
        results, nfe, seconds = await self.runner.run(key, chunks)
        version = str(key.version)
        if key.kind == "score":
            size = sum(len(chunk.images) for chunk in chunks)
            metrics.IMAGES_SCORED.labels(model=key.model, version=version).inc(size)
        elif key.kind == "complete":
            size = len(chunks)  # one image each
        else:
            size = sum(chunk.size for chunk in chunks)
            metrics.SAMPLES.labels(model=key.model, version=version).inc(size)
        metrics.INFERENCE_SECONDS.labels(model=key.model, version=version, kind=key.kind).observe(seconds)
        metrics.CALL_ROUND_TRIP_SECONDS.labels(model=key.model, version=version, kind=key.kind).observe(
            time.perf_counter() - started
        )
        metrics.BATCH_SIZE.labels(model=key.model, version=version, kind=key.kind).observe(size)
        metrics.BATCH_REQUESTS.labels(model=key.model, version=version, kind=key.kind).observe(len(chunks))
        metrics.NFE.labels(model=key.model, version=version, kind=key.kind).observe(nfe)
        call = ModelCall(key.kind, key.model, size, len(chunks), nfe, started_ns, time.time_ns())
        return [(result, call) for result in results]

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.runner.close()
