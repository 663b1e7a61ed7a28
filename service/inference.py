"""The service core: the served models, and the merged model calls the batcher runs. No HTTP here: what it
refuses it raises as Refusals (service/failures.py), which service/errors.py answers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from opentelemetry.trace import Tracer

import latent_cnf
from latent_cnf import SolverError, model_folder, outlier
from latent_cnf.completion import IMPUTATION_STEPS, Completion, check_mask, prior_draws
from latent_cnf.config import DEFAULT_SOLVER, SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.latent_map import LatentMap
from latent_cnf.model import LatentCNF, Score, Trajectory

from . import metrics
from .batching import Batcher, Part
from .call_spans import DISABLED, ModelCall, record_calls
from .cost import WorkShape, measured_dopri5_nfe, row_evaluation_units, solve_evaluations
from .failures import (
    ClientClosed,
    InvalidRequest,
    InvalidSolver,
    LabelNotSupported,
    LoadFailed,
    ModelUnavailable,
    NotReady,
    Refusal,
    RequestTooCostly,
    SolverFailed,
    UnknownModel,
)
from .model_calls import BatchKey, CompleteChunk, Encoded, SampleChunk, SampleJob, ScoreChunk, instance
from .model_process import InProcess, InThread, Runner
from .repository import ModelRepository
from .settings import Settings

log = logging.getLogger("latent_cnf.service")
Disconnected = Callable[[], Awaitable[bool]]  # true once the client has gone
DISCONNECT_CHECK_S = 0.1  # how often a queued or running request checks that its client is still there
MEMOS = 4096  # entries of a per-key memo (least recently used go): solver fields in requests make keys unbounded


def _shown(name: str) -> str:
    """A model name as error messages quote it: a client's long name cut short."""
    return name if len(name) <= 64 else f"{name[:64]}..."


def fresh_seed(seed: int | None) -> int:
    """Requests without a seed get a random one, returned so the result can be reproduced."""
    return seed if seed is not None else secrets.randbelow(2**31)


@dataclass
class ServedModel:
    name: str
    version: int  # of the model repository (service/repository.py)
    model: LatentCNF
    training: dict[str, Any]  # training.json: how the weights were made
    serving: dict[str, Any]  # serving.json: score reference, OOD bounds, calibrated solvers
    sha256: str
    device: str
    reference: np.ndarray | None  # the score reference's log-likelihood quantiles 0..100
    latent_map: LatentMap | None = None  # latent_map.json: the fixed 2-D view of the latent

    @property
    def prior_uses_labels(self) -> bool:
        return self.model.prior.uses_labels

    @property
    def instance(self) -> str:
        return instance(self.name, self.version)

    @property
    def key_fields(self) -> dict[str, Any]:
        """What a BatchKey takes from the model: its name and version."""
        return {"model": self.name, "version": self.version}

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


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
    """Loads the repository's models onto one device, loads and unloads them on request, and runs merged
    requests for them."""

    def __init__(self, settings: Settings, tracer: Tracer = DISABLED):
        self.settings, self.tracer = settings, tracer
        self.device = str(resolve_device(settings.device))
        self.repository = ModelRepository(settings.model_repository or model_folder.MODELS_DIR, settings.version_policy)
        self.folders: dict[str, Path] = {}  # models named at start-up by a folder outside the repository
        self.versions: dict[str, dict[int, ServedModel]] = {}  # loaded: model -> version -> served
        self.models: dict[str, ServedModel] = {}  # what a request naming no version gets: each model's newest
        self.failed: dict[str, str] = {}  # model -> why it could not be served
        self.changing: dict[tuple[str, int], str] = {}  # (model, version) -> LOADING or UNLOADING, for the index
        self._changes: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time
        self._in_flight: collections.Counter[tuple[str, int]] = collections.Counter()  # requests holding a version
        self._drained: dict[tuple[str, int], asyncio.Event] = {}  # set when an unloading version's last one ends
        self.loading = True
        self.batcher: Batcher[BatchKey] | None = None
        # Model calls run in a child process (service/model_process.py), which holds the device; this process
        # keeps a CPU copy of each model for what requests read of it (configs, base noise).
        self.runner: Runner = (
            InProcess(self.device, settings.threads) if settings.model_process else InThread(self.device)
        )
        self._home = "cpu" if settings.model_process else self.device
        # Remembered per key: the batcher asks for a key's shape on every call it assembles, and most requests
        # repeat a few plans (planning was ~3 % of a one-sample request's CPU).
        self.work_shape = functools.lru_cache(maxsize=MEMOS)(self._work_shape)
        self.plan = functools.lru_cache(maxsize=MEMOS)(self._plan)
        self._sample_solvers: dict[str, SolverConfig] = {}  # sample_solver() of requests that choose none

    @property
    def ready(self) -> bool:
        """Every checkpoint was tried and the default model is loaded and warmed up (others may have failed)."""
        return not self.loading and self.settings.default_model in self.models

    async def load(self) -> None:
        """Load and warm up the models to serve at start-up. A model that fails is reported (log, metric,
        /readyz, /v1/models) and the others are served."""
        s = self.settings
        self.batcher = Batcher(self.run_batch, self.device, self.capacity, s.max_wait_ms / 1000, s.max_queue)
        try:
            names = self.settings.models or self.repository.names()
            if not names:
                raise RuntimeError(
                    f"no models to serve: {self.repository.root} has none and LATENT_CNF_MODELS is empty"
                )
            for name in names:
                if not self.repository.versions(name):  # a folder outside the repository (or a shipped name)
                    with contextlib.suppress(model_folder.ModelFolderError):  # else its load reports it
                        folder = model_folder.resolve(name)
                        name = model_folder.display_name(folder)
                        self.folders[name] = folder
                try:
                    await self.load_model(name)
                except Refusal as error:  # a bad model must not take the healthy ones down with it
                    self.failed.setdefault(name, str(error))
                    metrics.MODEL_LOAD_FAILED.labels(model=name).set(1)
        finally:
            self.loading = False
            metrics.READY.set(int(self.ready))
        if not self.ready:
            log.error("the default model %r is not served; /readyz stays 503", self.settings.default_model)
        else:
            log.info("ready: serving %s (default %s)", ", ".join(self.models), self.settings.default_model)

    async def poll(self, every_s: float) -> None:
        """Follow the repository's folder (the poll mode): a model whose versions on disk changed is loaded
        again, one removed from disk is unloaded. Each change is tried once; a failing folder waits for the next."""
        seen = {name: self.repository.versions(name) for name in self.repository.names()}
        while True:
            await asyncio.sleep(every_s)
            now = {name: self.repository.versions(name) for name in self.repository.names()}
            for name in sorted(set(now) | set(seen)):
                if now.get(name) == seen.get(name):
                    continue
                with contextlib.suppress(Refusal):  # logged, and kept in failed for the index and /readyz
                    if name in now:
                        await self.load_model(name)
                    elif name in self.versions:
                        await self.unload_model(name)
            seen = now

    def _folders(self, name: str) -> dict[int, Path]:
        """The versions of `name` to serve and their folders: the repository's, by the version policy."""
        if name in self.folders:
            return {1: self.folders[name]}
        versions = self.repository.to_serve(name)
        if not versions:
            raise UnknownModel(f"no model {_shown(name)!r} in the repository {self.repository.root}")
        return {version: self.repository.folder(name, version) for version in versions}

    async def load_model(self, name: str) -> list[int]:
        """Serve the versions of `name` the policy names, as the disk holds them now: each new one takes traffic
        once it is loaded and warm; a version the policy no longer names is then unloaded (drained first)."""
        async with self._changes.setdefault(name, asyncio.Lock()):
            wanted = self._folders(name)
            for version, folder in wanted.items():
                if version not in self.versions.get(name, {}):
                    await self._load_version(name, version, folder)
            for version in sorted(set(self.versions.get(name, {})) - set(wanted)):
                await self._unload_version(name, version)
            return sorted(wanted)

    async def unload_model(self, name: str) -> list[int]:
        """Stop serving every version of `name`: new requests for it are refused at once (503 while it drains,
        then 404), and the work already queued or started finishes before the weights are freed."""
        async with self._changes.setdefault(name, asyncio.Lock()):
            versions = sorted(self.versions.get(name, {}))
            if not versions:
                raise UnknownModel(f"model {_shown(name)!r} is not loaded")
            for version in versions:
                await self._unload_version(name, version)
            return versions

    async def _load_version(self, name: str, version: int, folder: Path) -> None:
        started = time.perf_counter()
        self.changing[(name, version)] = "LOADING"
        try:
            served = await asyncio.to_thread(self._read, name, version, folder)  # reading weights: off the loop
            await self.runner.load(served.instance, str(folder), served.model)
            if self.settings.warmup:
                await self.warm_up(served)
        except Exception as error:
            self.failed[name] = f"version {version}: {error}"
            metrics.MODEL_LOAD_FAILED.labels(model=name).set(1)
            log.error("cannot serve %s version %s: %s", name, version, error)
            raise LoadFailed(f"model {_shown(name)!r} version {version} failed to load: {error}") from None
        finally:
            del self.changing[(name, version)]
        if self.failed.pop(name, None) is not None:
            metrics.MODEL_LOAD_FAILED.remove(name)
        self.versions.setdefault(name, {})[version] = served
        self.models[name] = self.versions[name][max(self.versions[name])]
        metrics.MODEL_INFO.labels(
            model=name, version=str(version), device=self.device, checkpoint_sha256=served.sha256
        ).set(1)
        log.info("loaded %s version %d on %s in %.1f s", name, version, self.device, time.perf_counter() - started)

    async def _unload_version(self, name: str, version: int) -> None:
        served = self.versions[name].pop(version)
        if self.versions[name]:
            self.models[name] = self.versions[name][max(self.versions[name])]
        else:
            del self.versions[name], self.models[name]
        self.changing[(name, version)] = "UNLOADING"
        try:
            if self._in_flight[(name, version)]:
                drained = self._drained[(name, version)] = asyncio.Event()
                await asyncio.wait_for(drained.wait(), self.settings.timeout_s)  # requests end by then anyway
            await self.runner.unload(served.instance)
        except asyncio.TimeoutError:
            log.warning("unloading %s version %d with requests still running", name, version)
        finally:
            del self.changing[(name, version)]
            self._drained.pop((name, version), None)
        self.work_shape.cache_clear()  # a version loaded again under the same number may differ
        self.plan.cache_clear()
        self._sample_solvers.pop(served.instance, None)
        metrics.forget_model_version(name, str(version), self.device, served.sha256)
        log.info("unloaded %s version %d", name, version)

    def _read(self, name: str, version: int, folder: Path) -> ServedModel:
        """A model folder as this process holds it (see __init__), with its serving record."""
        model = latent_cnf.load(folder, self._home)
        serving = model_folder.read_serving(folder)
        quantiles = serving.get("score_reference", {}).get("log_likelihood_quantiles")
        outlier.shipped()  # loaded once, here rather than on the first /score; a missing file is logged
        return ServedModel(
            name=name,
            version=version,
            model=model,
            training=model_folder.read_training(folder),
            serving=serving,
            sha256=model_folder.weights_sha256(folder),
            device=self.device,
            reference=np.asarray(quantiles) if quantiles else None,
            latent_map=model_folder.read_latent_map(folder),
        )

    async def warm_up(self, served: ServedModel) -> None:
        """One small call of each kind where calls run, with the solvers requests get by default."""
        generate = BatchKey(kind="generate", **served.key_fields, solver=self.sample_solver(served))
        await self.runner.run(generate, [SampleChunk(slice(0, 2), SampleJob(2, None, seed=0))])
        score = BatchKey(kind="score", **served.key_fields, solver=self.score_solver(served), importance_samples=2)
        await self.runner.run(score, [ScoreChunk(torch.zeros(1, 28, 28), torch.zeros(1, dtype=torch.long))])

    def get(self, name: str | None, version: int | None = None) -> ServedModel:
        """A loaded model (its newest loaded version unless one is named): served as soon as it is warm,
        whatever the others are doing."""
        name = name or self.settings.default_model
        loaded = self.versions.get(name)
        if loaded is not None:
            if version is None:
                return self.models[name]
            if version in loaded:
                return loaded[version]
            raise UnknownModel(f"model {_shown(name)!r} has no version {version} loaded; loaded: {sorted(loaded)}")
        if name in self.failed:
            raise ModelUnavailable(f"model {_shown(name)!r} failed to load: {self.failed[name]}")
        if self.loading:
            raise NotReady("models are still loading")
        if any(model == name for model, _ in self.changing):
            raise ModelUnavailable(f"model {_shown(name)!r} is loading or unloading")
        if self.repository.versions(name):
            raise UnknownModel(
                f"model {_shown(name)!r} is not loaded: POST /v2/repository/models/{_shown(name)}/load loads it"
            )
        raise UnknownModel(f"no model {_shown(name)!r}; served models: {sorted(self.models)}")

    def index(self) -> list[dict[str, str]]:
        """The repository's models and versions with their state (Triton's repository index): READY (served),
        LOADING or UNLOADING, else UNAVAILABLE with the reason."""
        names = set(self.repository.names()) | set(self.folders) | set(self.versions) | set(self.failed)
        entries = []
        for name in sorted(names):
            on_disk = [1] if name in self.folders else self.repository.versions(name)
            changing = {version for model, version in self.changing if model == name}
            for version in sorted(set(on_disk) | set(self.versions.get(name, {})) | changing):
                if version in self.versions.get(name, {}):
                    state, reason = "READY", ""
                elif (name, version) in self.changing:
                    state, reason = self.changing[(name, version)], ""
                else:
                    state, reason = "UNAVAILABLE", self.failed.get(name, "not loaded")
                entries.append({"name": name, "version": str(version), "state": state, "reason": reason})
        return entries

    def loaded(self, key: BatchKey) -> ServedModel:
        """The version a request's call runs on, while it is loaded."""
        served = self.versions.get(key.model, {}).get(key.version)
        if served is None:
            raise ModelUnavailable(f"model {key.model!r} version {key.version} was unloaded")
        return served

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
        served = self.loaded(key)
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
            classes = self.loaded(key).model.config.score_classes
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
        self.loaded(key)  # not unloaded since the request looked it up; counted in flight from here, until it ends
        held = (key.model, key.version)
        self._in_flight[held] += 1
        try:
            return await self._queue(key, parts, heavy, disconnected)
        finally:
            self._in_flight[held] -= 1
            if not self._in_flight[held]:
                del self._in_flight[held]
                if held in self._drained:
                    self._drained[held].set()

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
