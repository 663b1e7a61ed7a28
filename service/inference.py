"""The served models and the merged model calls the batcher runs: no HTTP types here beyond ServiceError."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import latent_cnf
from latent_cnf import SolverError, checkpoints
from latent_cnf.config import SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.model import LatentCNF, Trajectory

from . import metrics
from .batching import Batcher, BatcherStopped, Job, QueueFull, QueueTimeout
from .errors import ServiceError
from .settings import Settings

log = logging.getLogger("latent_cnf.service")


@dataclass(frozen=True)
class SampleJob:
    n: int
    label: int | None
    seed: int
    temperature: float = 1.0


@dataclass(frozen=True)
class ScoreJob:
    images: torch.Tensor  # (m, 28, 28) binarized pixels
    seed: int


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


async def until(condition: Callable[[], Awaitable[bool]], every_s: float = 0.1) -> None:
    """Return once `condition()` is true, checking every `every_s` seconds; a failing check counts as false."""
    while True:
        try:
            if await condition():
                return
        except Exception:  # noqa: BLE001 - a probe that cannot tell is not a disconnect
            log.debug("disconnect check failed", exc_info=True)
        await asyncio.sleep(every_s)


def split_trajectory(path: Trajectory, jobs: Sequence[Job]) -> list[Trajectory]:
    out, start = [], 0
    for job in jobs:
        end = start + job.size
        labels = path.labels[start:end] if path.labels is not None else None
        out.append(Trajectory(path.times, path.latents[:, start:end], path.images[:, start:end], labels, path.nfe))
        start = end
    return out


class ModelHub:
    """Loads the configured checkpoints onto one device and runs merged requests for them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = str(resolve_device(settings.device))
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}  # checkpoint -> why it could not be served
        self.loading = True
        self.batcher: Batcher | None = None

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

    def capacity(self, key: tuple) -> int:
        """Most work merged into one call: samples, or latent rows (images x K x labels) for scoring."""
        return self.settings.max_score_rows if key[0] == "score" else self.settings.max_batch

    def score_rows(self, served: ServedModel, images: int, importance_samples: int) -> int:
        """Latent rows one /score request puts through the flow: its cost in the batcher."""
        return images * importance_samples * served.model.config.score_classes

    def check_label(self, served: ServedModel, label: int | None) -> None:
        if label is not None and not served.conditional:
            raise ServiceError(
                422, "label_not_supported", f"model {served.name!r} is not label-conditioned: omit 'label'"
            )

    async def submit(
        self, key: tuple, size: int, payload: Any, disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> Any:
        """Queue a job for the inference thread; queue and solver failures become ServiceErrors. While it waits,
        `disconnected` is polled: a job whose client has gone is withdrawn unless it has started."""
        waiting = asyncio.ensure_future(self.batcher.submit(key, size, payload, self.settings.timeout_s))
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
            return await waiting
        except QueueFull as error:
            raise ServiceError(503, "queue_full", str(error), {"Retry-After": "1"}) from None
        except BatcherStopped as error:
            raise ServiceError(503, "shutting_down", str(error), {"Retry-After": "5"}) from None
        except QueueTimeout as error:
            raise ServiceError(504, "timeout", str(error)) from None
        except SolverError as error:
            raise ServiceError(422, "solver_failed", str(error)) from None

    def run_batch(self, key: tuple, jobs: Sequence[Job]) -> list[Any]:
        kind, name = key[0], key[1]
        served = self.models[name]
        started = time.perf_counter()
        if kind == "score":
            results, nfe = self._score(served, key[2], jobs)
            size = sum(len(job.payload.images) for job in jobs)
            metrics.IMAGES_SCORED.labels(model=name).inc(size)
        else:
            results, nfe = self._generate(served, key[2], key[3], jobs)
            size = sum(job.size for job in jobs)
            metrics.SAMPLES.labels(model=name).inc(size)
        metrics.INFERENCE_SECONDS.labels(model=name, kind=kind).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(model=name, kind=kind).observe(size)
        metrics.BATCH_REQUESTS.labels(model=name, kind=kind).observe(len(jobs))
        metrics.NFE.labels(model=name, kind=kind).observe(nfe)
        return results

    def _generate(
        self, served: ServedModel, solver: SolverConfig, steps: int, jobs: Sequence[Job]
    ) -> tuple[list[Trajectory], int]:
        model = served.model
        drawn = [model.draw_base(j.payload.n, j.payload.label, j.payload.seed, j.payload.temperature) for j in jobs]
        z0 = torch.cat([z for z, _ in drawn])
        labels = torch.cat([y for _, y in drawn]) if served.conditional else None
        path = model.generate(z0, labels, solver, steps)
        return split_trajectory(path, jobs), path.nfe

    def _score(self, served: ServedModel, k: int, jobs: Sequence[Job]) -> tuple[list[dict[str, Any]], int]:
        images = torch.cat([job.payload.images for job in jobs])
        seeds = torch.cat([job.payload.seed + torch.arange(len(job.payload.images)) for job in jobs])
        solver = self.settings.score_solver(served.model.score_solver)
        score = served.model.score(images, k=k, seed=seeds, solver=solver)
        fields = {
            "log_likelihood_nats": score.log_likelihood,
            "elbo_nats": score.elbo,
            "latent_log_density": score.latent_log_density,
            "kl_nats": score.kl,
            "reconstruction_nats": score.reconstruction,
        }
        rows = [{key: float(value[i]) for key, value in fields.items()} for i in range(len(images))]
        for i, row in enumerate(rows):
            row["bits_per_dim"] = -row["log_likelihood_nats"] / (images[i].numel() * math.log(2))
            row["predicted_label"] = int(score.predicted_label[i]) if score.predicted_label is not None else None
        out, start = [], 0
        for job in jobs:
            end = start + len(job.payload.images)
            out.append(rows[start:end])
            start = end
        return out, score.nfe

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
