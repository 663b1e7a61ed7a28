"""The served models and the merged model calls the batcher runs: no HTTP types here beyond ServiceError."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from opentelemetry.trace import Tracer

import latent_cnf
from latent_cnf import SolverError, checkpoints, ood, outlier
from latent_cnf.config import SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.model import LatentCNF, Trajectory

from . import metrics
from .batching import Batcher, BatcherStopped, Part, QueueFull, QueueTimeout
from .cost import WorkShape, measured_dopri5_nfe, row_evaluation_units, solve_evaluations
from .errors import ServiceError
from .settings import Settings
from .tracing import DISABLED, ModelCall, record_calls

log = logging.getLogger("latent_cnf.service")
Disconnected = Callable[[], Awaitable[bool]]  # true once the client has gone


@dataclass(frozen=True)
class SampleJob:
    n: int
    label: int | None
    seed: int
    temperature: float = 1.0


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for requests to share a model call."""

    kind: Literal["generate", "trajectory", "score"]
    model: str
    solver: SolverConfig
    frames: int = 2  # decoded times of a sampling solve
    importance_samples: int = 0  # K of a score


@dataclass(frozen=True)
class SampleChunk:
    z0: torch.Tensor  # (rows, latent_dim) base noise, drawn for the whole request before it was cut
    labels: torch.Tensor | None


@dataclass(frozen=True)
class ScoreChunk:
    images: torch.Tensor  # (m, 28, 28) binarized pixels
    seeds: torch.Tensor  # (m,) proposal seed of each image: its index in the request


@dataclass
class ServedModel:
    name: str
    model: LatentCNF
    card: dict[str, Any]
    sha256: str
    device: str
    reference: np.ndarray | None  # test-set log-likelihood quantiles 0..100

    @property
    def conditional(self) -> bool:
        return self.model.prior.conditional

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def percentile(self, log_likelihood: float) -> float | None:
        if self.reference is None:
            return None
        return float(np.interp(log_likelihood, self.reference, np.linspace(0, 100, len(self.reference))))

    def out_of_distribution(self, images: torch.Tensor, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per scored binary image: the complexity-corrected score, and in_distribution with the reason it is
        false under the bounds calibrated in the card (null without them; an image without ink is never in).
        The outlier judge's digit logit is tested only when its shipped weights are those the card was
        calibrated with; without them that bound is skipped (latent_cnf/ood.py)."""
        tensor = {
            key: torch.tensor([row[key] for row in rows])
            for key in ("log_likelihood_nats", "reconstruction_nats", "latent_log_density")
        }
        judge = ood.card_outlier_judge(self.card)
        values = ood.signals(
            images,
            tensor["log_likelihood_nats"],
            tensor["reconstruction_nats"],
            tensor["latent_log_density"],
            outlier.digit_logit(judge, images) if judge is not None else None,
        )
        limits = ood.card_bounds(self.card)
        out = []
        for i in range(len(rows)):
            own = {name: float(value[i]) for name, value in values.items()}
            in_distribution, reason = ood.verdict(own, limits)
            out.append(
                {
                    "complexity_corrected_nats": own["complexity_corrected_nats"],
                    "in_distribution": in_distribution,
                    "ood_reason": reason,
                }
            )
        return out


async def until(condition: Callable[[], Awaitable[bool]], every_s: float = 0.1) -> None:
    """Return once `condition()` is true, checking every `every_s` seconds; a failing check counts as false."""
    while True:
        try:
            if await condition():
                return
        except Exception:  # noqa: BLE001 - a probe that cannot tell is not a disconnect
            log.debug("disconnect check failed", exc_info=True)
        await asyncio.sleep(every_s)


def split_trajectory(path: Trajectory, sizes: Sequence[int]) -> list[Trajectory]:
    """Cut a merged call's trajectory back into its requests' pieces (sample rows in order)."""
    out, start = [], 0
    for size in sizes:
        end = start + size
        labels = path.labels[start:end] if path.labels is not None else None
        out.append(Trajectory(path.times, path.latents[:, start:end], path.images[:, start:end], labels, path.nfe))
        start = end
    return out


def join_trajectories(parts: Sequence[Trajectory]) -> Trajectory:
    """The pieces of one request, solved in separate calls, as one trajectory; NFE is the most any part took."""
    if len(parts) == 1:
        return parts[0]
    labels = [part.labels for part in parts]
    return Trajectory(
        parts[0].times,
        torch.cat([part.latents for part in parts], 1),
        torch.cat([part.images for part in parts], 1),
        torch.cat(labels) if labels[0] is not None else None,
        max(part.nfe for part in parts),
    )


class ModelHub:
    """Loads the configured checkpoints onto one device and runs merged requests for them."""

    def __init__(self, settings: Settings, tracer: Tracer = DISABLED):
        self.settings, self.tracer = settings, tracer
        self.device = str(resolve_device(settings.device))
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}  # checkpoint -> why it could not be served
        self.loading = True
        self.batcher: Batcher | None = None
        self._shapes: dict[BatchKey, WorkShape] = {}  # cost of one unit per batch key (work_shape)

    @property
    def ready(self) -> bool:
        """Every checkpoint was tried and the default model is loaded and warmed up (others may have failed)."""
        return not self.loading and self.settings.default_model in self.models

    def load(self) -> None:
        """Start the inference thread, then load and warm up every model. A checkpoint that fails is reported
        (log, metric, /readyz, /v1/models) and the others are served."""
        s = self.settings
        self.batcher = Batcher(self.run_batch, self.device, self.capacity, s.max_wait_ms / 1000, s.max_queue)
        try:
            names = self.settings.models or checkpoints.available()
            if not names:
                raise RuntimeError("no checkpoints to serve: none shipped and LATENT_CNF_MODELS is empty")
            for name in names:
                try:
                    self._load(name)
                except Exception as error:  # a bad checkpoint must not take the healthy ones down with it
                    self.failed[checkpoints.display_name(name)] = str(error)
                    metrics.MODEL_LOAD_FAILED.labels(model=checkpoints.display_name(name)).set(1)
                    log.error("cannot serve checkpoint %s: %s", name, error)
        finally:
            self.loading = False
            metrics.READY.set(int(self.ready))
        if not self.ready:
            log.error("the default model %r is not served; /readyz stays 503", self.settings.default_model)

    def _load(self, name: str) -> None:
        started = time.perf_counter()
        model = latent_cnf.load(name, self.device)
        card = checkpoints.read_card(name)
        quantiles = card.get("score_reference", {}).get("log_likelihood_quantiles")
        outlier.shipped()  # loaded once, here rather than on the first /score; a missing file is logged
        served = ServedModel(
            name=checkpoints.display_name(name),
            model=model,
            card=card,
            sha256=checkpoints.sha256(name),
            device=self.device,
            reference=np.asarray(quantiles) if quantiles else None,
        )
        if self.settings.warmup:
            with torch.inference_mode():
                model.sample(2, seed=0, solver=self.settings.sample_solver(model.sample_solver))
                model.score(torch.zeros(1, 28, 28), k=2, solver=self.settings.score_solver(model.score_solver))
        self.models[served.name] = served
        metrics.MODEL_INFO.labels(model=served.name, device=self.device, checkpoint_sha256=served.sha256).set(1)
        log.info("loaded %s on %s in %.1f s", served.name, self.device, time.perf_counter() - started)

    def get(self, name: str | None) -> ServedModel:
        """A loaded model: served as soon as it is warm, whatever the others are doing."""
        name = name or self.settings.default_model
        if name in self.models:
            return self.models[name]
        shown = name if len(name) <= 64 else f"{name[:64]}..."
        if name in self.failed:
            raise ServiceError(503, "model_unavailable", f"model {shown!r} failed to load: {self.failed[name]}")
        if self.loading:
            raise ServiceError(503, "not_ready", "models are still loading", {"Retry-After": "1"})
        raise ServiceError(404, "unknown_model", f"no model {shown!r}; served models: {sorted(self.models)}")

    def solver(self, served: ServedModel, spec: dict[str, Any] | None) -> SolverConfig:
        """The model's calibrated sampling solver, the settings' overrides, then the request's fields on top."""
        base = self.settings.sample_solver(served.model.sample_solver)
        if not spec:
            return base
        try:
            return dataclasses.replace(base, **{k: v for k, v in spec.items() if v is not None})
        except ValueError as error:
            raise ServiceError(422, "invalid_solver", str(error)) from None

    def check_label(self, served: ServedModel, label: int | None) -> None:
        if label is not None and not served.conditional:
            raise ServiceError(
                422, "label_not_supported", f"model {served.name!r} is not label-conditioned: omit 'label'"
            )

    def work_shape(self, key: BatchKey) -> WorkShape:
        """The cost of one sample (or one scored image) of requests with this key; worked out once per key,
        since the batcher asks for it on every call it assembles."""
        if key not in self._shapes:
            self._shapes[key] = self._work_shape(key)
        return self._shapes[key]

    def _work_shape(self, key: BatchKey) -> WorkShape:
        served = self.models[key.model]
        hyper = sum(p.numel() for p in served.model.prior.dynamics.parameters())
        row_units = row_evaluation_units(key.solver, hyper)
        if key.kind == "score":
            rows = key.importance_samples * served.model.config.score_classes
            nfe = solve_evaluations(key.solver, 2, measured_dopri5_nfe(served.card, "scoring"))
            # + 1 row: the density at the posterior mean
            return WorkShape(rows=rows + 1, nfe=nfe, decoded=rows, row_units=row_units)
        nfe = solve_evaluations(key.solver, key.frames, measured_dopri5_nfe(served.card, "sampling"))
        return WorkShape(rows=1, nfe=nfe, decoded=key.frames, row_units=row_units)

    def most_units(self, key: BatchKey) -> int:
        """Memory cap of one call: samples, or the images whose latent rows (K x labels) fit max_score_rows."""
        if key.kind == "score":
            return max(1, self.settings.max_score_rows // (self.work_shape(key).rows - 1))
        return self.settings.max_batch

    def capacity(self, key: BatchKey) -> int:
        """Most cost merged into one call: one full part (see service/cost.py)."""
        shape = self.work_shape(key)
        return shape.marginal * shape.units_per_part(self.settings.max_call_cost, self.most_units(key))

    def plan(self, key: BatchKey, units: int) -> tuple[list[Part], bool]:
        """Cut a request of `units` samples or images into parts (each part's payload is the slice of the
        request it covers) and tell whether it is heavy; refuse it (422) over the per-request budget."""
        shape = self.work_shape(key)
        slices = shape.parts(units, self.settings.max_call_cost, self.most_units(key))
        cost = sum(shape.cost(piece.stop - piece.start) for piece in slices)
        if cost > self.settings.max_request_cost:
            raise ServiceError(
                422,
                "request_too_costly",
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
        z0, labels = served.model.draw_base(job.n, job.label, job.seed, job.temperature)
        return await self.flow(kind, served, z0, labels, solver, frames, disconnected)

    async def flow(
        self,
        kind: Literal["generate", "trajectory"],
        served: ServedModel,
        z0: torch.Tensor,
        labels: torch.Tensor | None,
        solver: SolverConfig,
        frames: int,
        disconnected: Disconnected | None = None,
    ) -> Trajectory:
        """Explicit base noise (and labels) through the flow, batched like `sample`: for noise no single seed
        draws, such as an interpolation between two seeds' noise."""
        key = BatchKey(kind, served.name, solver, frames)
        parts, heavy = self.plan(key, len(z0))
        chunks = [
            Part(p.cost, SampleChunk(z0[p.payload], labels[p.payload] if labels is not None else None)) for p in parts
        ]
        return join_trajectories(await self._submit(key, chunks, heavy, disconnected))

    async def score(
        self, served: ServedModel, images: torch.Tensor, k: int, disconnected: Disconnected | None = None
    ) -> list[dict[str, Any]]:
        """One result row per image; image i draws its proposals from seed i, whatever its part or batch."""
        key = BatchKey("score", served.name, self.settings.score_solver(served.model.score_solver), 2, k)
        parts, heavy = self.plan(key, len(images))
        seeds = torch.arange(len(images))
        chunks = [Part(p.cost, ScoreChunk(images[p.payload], seeds[p.payload])) for p in parts]
        return [row for rows in await self._submit(key, chunks, heavy, disconnected) for row in rows]

    async def _submit(
        self, key: BatchKey, parts: list[Part], heavy: bool, disconnected: Disconnected | None
    ) -> list[Any]:
        """Queue a job for the inference thread; queue and solver failures become ServiceErrors. While it waits,
        `disconnected` is polled: a job whose client has gone is withdrawn, or dropped before its next part.
        Each part comes back with the model call that ran it, traced here, in the request's context."""
        submitted_ns = time.time_ns()
        waiting = asyncio.ensure_future(self.batcher.submit(key, parts, self.settings.timeout_s, heavy))
        if disconnected is not None:
            watcher = asyncio.ensure_future(until(disconnected))
            try:
                await asyncio.wait({waiting, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this handler is cancelled itself: nothing is left running or polling
                watcher.cancel()
                if not waiting.done():
                    waiting.cancel()
                    await asyncio.wait({waiting})  # the queue withdraws the job (see Batcher.submit)
            if waiting.cancelled():
                raise ServiceError(499, "client_closed_request", "the client closed the connection before the answer")
        try:
            outcomes = await waiting
        except QueueFull as error:
            raise ServiceError(503, "queue_full", str(error), {"Retry-After": "1"}) from None
        except BatcherStopped as error:
            raise ServiceError(503, "shutting_down", str(error), {"Retry-After": "5"}) from None
        except QueueTimeout as error:
            raise ServiceError(504, "timeout", str(error)) from None
        except SolverError as error:
            raise ServiceError(422, "solver_failed", str(error)) from None
        record_calls(self.tracer, submitted_ns, [call for _, call in outcomes])
        return [result for result, _ in outcomes]

    def run_batch(self, key: BatchKey, chunks: Sequence[Any]) -> list[tuple[Any, ModelCall]]:
        """One merged model call: each chunk's result, with the call's times and sizes for its trace."""
        served = self.models[key.model]
        started, started_ns = time.perf_counter(), time.time_ns()
        if key.kind == "score":
            results, nfe = self._score(served, key, chunks)
            size = sum(len(chunk.images) for chunk in chunks)
            metrics.IMAGES_SCORED.labels(model=key.model).inc(size)
        else:
            results, nfe = self._generate(served, key, chunks)
            size = sum(len(chunk.z0) for chunk in chunks)
            metrics.SAMPLES.labels(model=key.model).inc(size)
        metrics.INFERENCE_SECONDS.labels(model=key.model, kind=key.kind).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(model=key.model, kind=key.kind).observe(size)
        metrics.BATCH_REQUESTS.labels(model=key.model, kind=key.kind).observe(len(chunks))
        metrics.NFE.labels(model=key.model, kind=key.kind).observe(nfe)
        call = ModelCall(key.kind, key.model, size, len(chunks), nfe, started_ns, time.time_ns())
        return [(result, call) for result in results]

    def _generate(
        self, served: ServedModel, key: BatchKey, chunks: Sequence[SampleChunk]
    ) -> tuple[list[Trajectory], int]:
        z0 = torch.cat([chunk.z0 for chunk in chunks])
        labels = torch.cat([chunk.labels for chunk in chunks]) if served.conditional else None
        path = served.model.generate(z0, labels, key.solver, key.frames)
        return split_trajectory(path, [len(chunk.z0) for chunk in chunks]), path.nfe

    def _score(
        self, served: ServedModel, key: BatchKey, chunks: Sequence[ScoreChunk]
    ) -> tuple[list[list[dict[str, Any]]], int]:
        images = torch.cat([chunk.images for chunk in chunks])
        seeds = torch.cat([chunk.seeds for chunk in chunks])
        score = served.model.score(images, k=key.importance_samples, seed=seeds, solver=key.solver)
        fields = {
            "log_likelihood_nats": score.log_likelihood,
            "elbo_nats": score.elbo,
            "latent_log_density": score.latent_log_density,
            "kl_nats": score.kl,
            "reconstruction_nats": score.reconstruction,
        }
        rows = [{name: float(value[i]) for name, value in fields.items()} for i in range(len(images))]
        # With the uniform class prior, p(y | x) = p(x | y) / sum_y' p(x | y'): a softmax of the per-label
        # bounds, exact up to the bounds' gaps (equal gaps cancel).
        posterior = score.label_log_likelihood.softmax(1) if score.label_log_likelihood is not None else None
        reconstructions = score.decoded_mean.cpu()
        for i, row in enumerate(rows):
            row["bits_per_dim"] = -row["log_likelihood_nats"] / (images[i].numel() * math.log(2))
            row["predicted_label"] = int(score.predicted_label[i]) if score.predicted_label is not None else None
            row["label_probabilities"] = posterior[i].tolist() if posterior is not None else None
            row["reconstruction"] = reconstructions[i]  # encoded as PNG by the route, off this thread
        out, start = [], 0
        for chunk in chunks:
            out.append(rows[start : start + len(chunk.images)])
            start += len(chunk.images)
        return out, score.nfe

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
