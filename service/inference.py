"""The service core: the served models, and the merged model calls the batcher runs. No HTTP here: what it
refuses it raises as Refusals (service/failures.py), which service/errors.py answers."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import torch
from opentelemetry.trace import Tracer

from latent_cnf import SolverError
from latent_cnf.completion import IMPUTATION_STEPS, Completion, check_mask, prior_draws
from latent_cnf.config import DEFAULT_SOLVER, SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.model import Score, Trajectory

from . import metrics
from .batching import Batcher, Part
from .call_spans import DISABLED, ModelCall, record_calls
from .cost import WorkShape, measured_dopri5_nfe, row_evaluation_units, solve_evaluations
from .failures import (
    ClientClosed,
    InvalidRequest,
    InvalidSolver,
    LabelNotSupported,
    RequestTooCostly,
    SolverFailed,
)
from .model_calls import BatchKey, CompleteChunk, Encoded, SampleChunk, SampleJob, ScoreChunk
from .model_process import InProcess, InThread, Runner
from .registry import ModelRegistry, ServedModel
from .settings import Settings

log = logging.getLogger("latent_cnf.service")
Disconnected = Callable[[], Awaitable[bool]]  # true once the client has gone
DISCONNECT_CHECK_S = 0.1  # how often a queued or running request checks that its client is still there
MEMOS = 4096  # entries of a per-key memo (least recently used go): solver fields in requests make keys unbounded


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
    """Runs requests on the served models: chooses their solvers, prices and parts them, queues them for the
    batcher and runs the merged calls. Which models are served is the registry's (service/registry.py)."""

    def __init__(self, settings: Settings, tracer: Tracer = DISABLED):
        self.settings, self.tracer = settings, tracer
        self.device = str(resolve_device(settings.device))
        self.batcher: Batcher[BatchKey] | None = None
        # Model calls run in a child process (service/model_process.py), which holds the device.
        self.runner: Runner = (
            InProcess(self.device, settings.threads) if settings.model_process else InThread(self.device)
        )
        self.registry = ModelRegistry(settings, self.device, self.runner, self.warm_up, self.forget)
        # Remembered per key: the batcher asks for a key's shape on every call it assembles, and most requests
        # repeat a few plans (planning was ~3 % of a one-sample request's CPU).
        self.work_shape = functools.lru_cache(maxsize=MEMOS)(self._work_shape)
        self.plan = functools.lru_cache(maxsize=MEMOS)(self._plan)
        self._sample_solvers: dict[str, SolverConfig] = {}  # sample_solver() of requests that choose none

    async def load(self) -> None:
        """Start the batcher, then load the models to serve (the registry's start-up)."""
        s = self.settings
        self.batcher = Batcher(self.run_batch, self.device, self.capacity, s.max_wait_ms / 1000, s.max_queue)
        await self.registry.load()

    def forget(self, served: ServedModel) -> None:
        """Drop what is remembered of an unloaded version (a version loaded again under its number may differ)."""
        self.work_shape.cache_clear()
        self.plan.cache_clear()
        self._sample_solvers.pop(served.instance, None)

    async def warm_up(self, served: ServedModel) -> None:
        """One small call of each kind where calls run, with the solvers requests get by default."""
        generate = BatchKey(kind="generate", **served.key_fields, solver=self.sample_solver(served))
        await self.runner.run(generate, [SampleChunk(slice(0, 2), SampleJob(2, None, seed=0))])
        score = BatchKey(kind="score", **served.key_fields, solver=self.score_solver(served), importance_samples=2)
        await self.runner.run(score, [ScoreChunk(torch.zeros(1, 28, 28), torch.zeros(1, dtype=torch.long))])

    def sample_solver(self, served: ServedModel, request: dict[str, Any] | None = None) -> SolverConfig:
        """Where a served sampling solver is chosen, each layer over the one before: the model's own (the
        calibrated solver of its serving.json, else latent_cnf.config.DEFAULT_SOLVER), the LATENT_CNF_SOLVER_*
        settings that are set, then the fields of the request's `solver`."""
        if not request and served.instance in self._sample_solvers:
            return self._sample_solvers[served.instance]
        s = self.settings
        settings = {"method": s.solver_method, "steps": s.solver_steps, "rtol": s.solver_rtol, "atol": s.solver_atol}
        solver = self._layered(served.model.sample_solver, settings, request or {})
        if not request:
            self._sample_solvers[served.instance] = solver
        return solver

    def score_solver(self, served: ServedModel) -> SolverConfig:
        """Where a served scoring solver is chosen: the model's own (its serving.json's calibrated solver), or
        DEFAULT_SOLVER with LATENT_CNF_EXACT_SCORES; the tolerance settings that are set over it."""
        s = self.settings
        base = DEFAULT_SOLVER if s.exact_scores else served.model.score_solver
        return self._layered(base, {"rtol": s.solver_rtol, "atol": s.solver_atol})

    def _layered(self, base: SolverConfig, *layers: dict[str, Any]) -> SolverConfig:
        """`base` with each layer's given fields over it, and the settings' NFE limit, which always applies."""
        changes: dict[str, Any] = {"max_nfe": self.settings.max_nfe}
        for layer in layers:
            changes |= {name: value for name, value in layer.items() if value is not None}
        try:
            return dataclasses.replace(base, **changes)
        except ValueError as error:
            raise InvalidSolver(str(error)) from None

    def check_label(self, served: ServedModel, label: int | None) -> None:
        if label is not None and not served.prior_uses_labels:
            raise LabelNotSupported(f"model {served.name!r} is not label-conditioned: omit 'label'")

    def _work_shape(self, key: BatchKey) -> WorkShape:
        """The cost of one sample (or one scored image) of requests with this key (self.work_shape, remembered)."""
        served = self.registry.loaded(key)
        hyper = sum(p.numel() for p in served.model.prior.parameters())  # the CNF's are its hypernetwork's
        row_units = row_evaluation_units(key.solver, hyper)
        classes = served.model.config.score_classes
        if key.kind == "score":
            rows = key.importance_samples * classes
            nfe = solve_evaluations(key.solver, 2, measured_dopri5_nfe(served.serving, "scoring"))
            # + 1 row: the density at the posterior mean
            return WorkShape(rows=rows + 1, nfe=nfe, decoded=rows, row_units=row_units)
        if key.kind == "complete":  # every proposal's density, and the prior's draws pushed through the flow first
            rows = key.importance_samples * classes
            pushed = prior_draws(key.importance_samples) * classes
            nfe = solve_evaluations(key.solver, 2, measured_dopri5_nfe(served.serving, "scoring"))
            decoded = rows + IMPUTATION_STEPS * classes
            return WorkShape(rows=rows + pushed, nfe=nfe, decoded=decoded, row_units=row_units)
        nfe = solve_evaluations(key.solver, key.frames, measured_dopri5_nfe(served.serving, "sampling"))
        return WorkShape(rows=1, nfe=nfe, decoded=key.frames, row_units=row_units)

    def most_units(self, key: BatchKey) -> int:
        """Memory cap of one call: samples, or the images whose latent rows (K x labels) fit max_score_rows."""
        if key.kind in ("score", "complete"):
            classes = self.registry.loaded(key).model.config.score_classes
            return max(1, self.settings.max_score_rows // (key.importance_samples * classes))
        return self.settings.max_batch

    def capacity(self, key: BatchKey) -> int:
        """Most cost merged into one call: one full part (see service/cost.py)."""
        shape = self.work_shape(key)
        return shape.marginal * shape.units_per_part(self.settings.max_call_cost, self.most_units(key))

    def _plan(self, key: BatchKey, units: int) -> tuple[list[Part], bool]:
        """Cut a request of `units` samples or images into parts (each part's payload is the slice of the
        request it covers) and tell whether it is heavy; refuse it over the per-request budget (self.plan,
        remembered)."""
        shape = self.work_shape(key)
        slices = shape.parts(units, self.settings.max_call_cost, self.most_units(key))
        cost = sum(shape.cost(piece.stop - piece.start) for piece in slices)
        if cost > self.settings.max_request_cost:
            raise RequestTooCostly(
                f"this request costs {cost:,} units of work, over the limit of {self.settings.max_request_cost:,} "
                "per request (LATENT_CNF_MAX_REQUEST_COST): ask for fewer samples or images, fewer importance "
                "samples, or fewer solver steps",
            )
        parts = [Part(shape.marginal * (piece.stop - piece.start), piece) for piece in slices]
        return parts, cost > self.settings.max_call_cost

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
        return join_trajectories(await self._sample(key, job, disconnected))

    async def sample_pngs(
        self, served: ServedModel, job: SampleJob, solver: SolverConfig, disconnected: Disconnected | None = None
    ) -> tuple[Trajectory, list[bytes]]:
        """As `sample` for generating, with each sample's image also as PNG bytes, encoded in the model call."""
        key = BatchKey(kind="generate", **served.key_fields, solver=solver, pngs=True)
        pieces: list[Encoded] = await self._sample(key, job, disconnected)
        return join_trajectories([piece.path for piece in pieces]), [png for piece in pieces for png in piece.pngs]

    async def _sample(self, key: BatchKey, job: SampleJob, disconnected: Disconnected | None) -> list[Any]:
        parts, heavy = self.plan(key, job.n)
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
        parts, heavy = self.plan(key, len(z0))
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
        solver = self.score_solver(served)
        key = BatchKey(kind="score", **served.key_fields, solver=solver, importance_samples=k)
        parts, heavy = self.plan(key, len(images))
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
        solver = self.score_solver(served)
        key = BatchKey(kind="complete", **served.key_fields, solver=solver, importance_samples=importance_samples)
        (part,), heavy = self.plan(key, 1)
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
