"""The FastAPI application: lifespan (load, warm up, ready), middleware, routers, error handlers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from opentelemetry.sdk.trace import TracerProvider
from PIL import Image
from prometheus_client import Counter, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors, metrics, request_id, tracing
from .body_limit import BodySizeLimit
from .fast_generate import FastGenerate
from .inference import ModelHub
from .routes import (
    complete,
    generate,
    health,
    interpolate,
    latent_map,
    models,
    page,
    repository,
    score,
    trajectory,
    v2,
)
from .settings import Settings, get_settings

log = logging.getLogger("latent_cnf.service")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # others: "other"
# /openapi.json's tags, in /docs' order: every tag a route uses is declared here, with what it groups.
TAGS = [
    {"name": "generate", "description": "Samples from a model: a batch for one seed, or between two seeds."},
    {"name": "score", "description": "Log-likelihood bounds of uploaded images, and whether they look like digits."},
    {"name": "trajectory", "description": "The flow from base noise to latent, decoded at evenly spaced times."},
    {"name": "complete", "description": "Completions of a partly observed image, from p(latent | observed pixels)."},
    {"name": "latent map", "description": "A fixed 2-D view of a model's latent, with test digits projected onto it."},
    {"name": "models", "description": "The models served, with their configuration and training record."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics, for probes and scrapers."},
    {
        "name": "open inference protocol (v2)",
        "description": "KServe's v2 REST protocol (as Triton serves it): `<model>.generate`, `<model>.score` and "
        "`<model>.complete`.",
    },
    {
        "name": "model repository (v2)",
        "description": "Triton's repository extension: list models and versions, load and unload without a "
        "restart (LATENT_CNF_CONTROL_TOKEN guards load and unload).",
    },
]


# FastAPI >= 0.165 has OpenTelemetry of its own, on by default: it looks up the global providers on every request
# (environment reads, ~4 % of a small request's CPU) though this app traces with its own provider
# (service/tracing.py). Off where the option exists.
NATIVE_TELEMETRY_OFF: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def operation_id(route: APIRoute) -> str:
    """An operation's ID in /openapi.json, and the name of its function in generated clients: the route
    function's name (`generate`, `score`, `model_infer`), unique across the API and stable unless renamed."""
    return route.name


class RequestMetrics:
    """Counts and times every request by route template (not raw path, to bound label cardinality)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.templates: list[tuple[re.Pattern[str], str]] | None = None  # the API's paths, compiled on first use

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = self.endpoint(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            count, seconds = self.series(endpoint, method, status)
            count.inc()
            seconds.observe(time.perf_counter() - started)

    @functools.cache  # noqa: B019 - one middleware per app; the label sets are bounded (see endpoint())
    def series(self, endpoint: str, method: str, status: int) -> tuple[Counter, Histogram]:
        """The request's counter and histogram: prometheus_client's labels() takes a lock and builds a key each
        time (a few % of a small request's CPU)."""
        count = metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=str(status))
        return count, metrics.REQUEST_SECONDS.labels(endpoint=endpoint)

    def endpoint(self, scope: Scope) -> str:
        """The route template: set by the router, or matched against the API's paths for requests refused before
        routing (413 on Content-Length); "unmatched" otherwise, so labels stay bounded whatever clients send."""
        if route := scope.get("route"):
            template: str = route.path  # an ASGI scope holds Any
            return template
        if self.templates is None:
            paths = scope["app"].openapi()["paths"] if "app" in scope else {}
            self.templates = [(compile_path(path)[0], path) for path in paths]
        return next((path for regex, path in self.templates if regex.match(scope["path"])), "unmatched")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    request_id.configure_logging(settings.log_format, settings.access_log)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    hub = ModelHub(settings, app.state.tracer)
    app.state.hub = hub
    metrics.READY.set(0)

    async def load() -> None:
        try:
            await hub.load()
        except Exception:
            log.exception("loading models failed; /readyz stays 503")
            return
        if settings.repository_poll_s is not None:
            await hub.registry.poll(settings.repository_poll_s)

    loading = asyncio.create_task(load())
    try:
        yield
    finally:
        if settings.repository_poll_s is not None:
            loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        await hub.close()


def create_app(settings: Settings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """The app; traced with `tracer_provider` if given, else to LATENT_CNF_OTLP_ENDPOINT if set."""
    settings = settings or get_settings()
    app = FastAPIOffline(  # /docs and /redoc from the package's own copies of their assets: no CDN, works offline
        title="latent-cnf",
        version="0.1.0",
        description="Digits from a VAE whose latent prior is a continuous normalizing flow: "
        "generate samples, score images by log-likelihood, watch the flow.",
        contact={"name": "latent-cnf maintainers"},
        license_info={"name": "MIT", "identifier": "MIT"},
        servers=[{"url": "/", "description": "this server: the origin that serves this document"}],
        openapi_tags=TAGS,
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
        **NATIVE_TELEMETRY_OFF,
    )
    app.state.settings = settings
    tracing.instrument(app, settings, tracer_provider)
    app.state.hub = ModelHub(app.state.settings)  # replaced in the lifespan; answers 'not ready' until then
    errors.install(app)
    for router in (
        generate.router,
        interpolate.router,
        score.router,
        complete.router,
        trajectory.router,
        latent_map.router,
        models.router,
        health.router,
        v2.router,
        repository.router,
        page.router,
    ):
        app.include_router(router)
    app.mount(page.STATIC_URL, page.assets(), name="static")
    app.add_middleware(FastGenerate)  # innermost of ours: POST /generate's usual request, beside FastAPI's route
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics)
    app.add_middleware(request_id.RequestIdMiddleware)  # outermost of ours: every answer carries the ID
    return app


app = create_app()
