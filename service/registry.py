"""The served models: which versions of which models are loaded, loading them (read off the event loop, loaded
where calls run, warmed up) and unloading them once the requests holding them have finished. The repository
(service/repository.py) says what is on disk; the hub (service/inference.py) runs requests on what is here."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np

import latent_cnf
from latent_cnf import model_folder, outlier

from . import metrics
from .failures import LoadFailed, ModelUnavailable, NotReady, Refusal, UnknownModel
from .model_calls import BatchKey
from .model_process import Runner
from .repository import ModelRepository
from .served import ServedModel
from .settings import Settings

log = logging.getLogger("latent_cnf.service")


def _shown(name: str) -> str:
    """A model name as error messages quote it: a client's long name cut short."""
    return name if len(name) <= 64 else f"{name[:64]}..."


class ModelRegistry:
    """The loaded versions of each model, and their loading and unloading."""

    def __init__(
        self,
        settings: Settings,
        device: str,
        runner: Runner,
        warm_up: Callable[[ServedModel], Awaitable[None]],
    ):
        self.settings, self.device, self.runner = settings, device, runner
        self._warm_up = warm_up  # the hub's: a first call of each kind
        # With calls in a child process (which holds the device) this process keeps a CPU copy of each model,
        # for what requests read of it (configs, base noise).
        self._home = "cpu" if settings.model_process else device
        self.repository = ModelRepository(settings.model_repository or model_folder.MODELS_DIR, settings.version_policy)
        self.folders: dict[str, Path] = {}  # models named at start-up by a folder outside the repository
        self.versions: dict[str, dict[int, ServedModel]] = {}  # loaded: model -> version -> served
        self.models: dict[str, ServedModel] = {}  # what a request naming no version gets: each model's newest
        self.failed: dict[str, str] = {}  # model -> why it could not be served
        self.changing: dict[tuple[str, int], str] = {}  # (model, version) -> LOADING or UNLOADING, for the index
        self._changes: dict[str, asyncio.Lock] = {}  # one load or unload of a model at a time
        self._in_flight: collections.Counter[tuple[str, int]] = collections.Counter()  # requests holding a version
        self._drained: dict[tuple[str, int], asyncio.Event] = {}  # set when an unloading version's last one ends
        self._unloading: dict[tuple[str, int], ServedModel] = {}  # unpublished, its requests still draining
        self.loading = True

    @property
    def ready(self) -> bool:
        """Every model was tried and the default one is loaded and warmed up (others may have failed)."""
        return not self.loading and self.settings.default_model in self.models

    async def load(self) -> None:
        """Load and warm up the models to serve at start-up. A model that fails is reported (log, metric,
        /readyz, /v1/models) and the others are served."""
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
                await self._warm_up(served)
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
        self._unloading[(name, version)] = served
        try:
            if self._in_flight[(name, version)]:
                drained = self._drained[(name, version)] = asyncio.Event()
                try:
                    await asyncio.wait_for(drained.wait(), self.settings.timeout_s)  # requests end by then anyway
                except asyncio.TimeoutError:
                    log.warning("unloading %s version %d with requests still running", name, version)
            await self.runner.unload(served.instance)
        finally:
            del self.changing[(name, version)], self._unloading[(name, version)]
            self._drained.pop((name, version), None)
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
            settings=self.settings,
            latent_map=model_folder.read_latent_map(folder),
        )

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

    def running(self, key: BatchKey) -> ServedModel:
        """The version a queued call runs on: loaded, or unloading while the requests it holds drain."""
        draining = self._unloading.get((key.model, key.version))
        return draining if draining is not None else self.loaded(key)

    @contextlib.asynccontextmanager
    async def holding(self, key: BatchKey) -> AsyncIterator[None]:
        """A request's work on a version, from its submission to its answer: an unload waits for it to end."""
        self.loaded(key)  # not unloaded since the request looked it up
        held = (key.model, key.version)
        self._in_flight[held] += 1
        try:
            yield
        finally:
            self._in_flight[held] -= 1
            if not self._in_flight[held]:
                del self._in_flight[held]
                if held in self._drained:
                    self._drained[held].set()
