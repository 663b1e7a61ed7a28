"""The FastAPI application: lifespan (load, warm up, ready), middleware, routers, error handlers."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors, metrics
from .body_limit import BodySizeLimit
from .inference import ModelHub
from .routes import generate, health, models, score, trajectory
from .settings import Settings, get_settings

log = logging.getLogger("latent_cnf.service")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})  # others: "other"


class RequestMetrics:
    """Counts and times every request by route template (not raw path, to bound label cardinality)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.templates: list[tuple[re.Pattern, str]] | None = None  # the API's paths, compiled on first use

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
            metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=str(status)).inc()
            metrics.REQUEST_SECONDS.labels(endpoint=endpoint).observe(time.perf_counter() - started)

    def endpoint(self, scope: Scope) -> str:
        """The route template: set by the router, or matched against the API's paths for requests refused before
        routing (413 on Content-Length); "unmatched" otherwise, so labels stay bounded whatever clients send."""
        if route := scope.get("route"):
            return route.path
        if self.templates is None:
            paths = scope["app"].openapi()["paths"] if "app" in scope else {}
            self.templates = [(compile_path(path)[0], path) for path in paths]
        return next((path for regex, path in self.templates if regex.match(scope["path"])), "unmatched")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if settings.threads:
        torch.set_num_threads(settings.threads)
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    hub = ModelHub(settings)
    app.state.hub = hub
    metrics.READY.set(0)

    async def load() -> None:
        try:
            await asyncio.to_thread(hub.load)
        except Exception:
            log.exception("loading models failed; /readyz stays 503")

    loading = asyncio.create_task(load())
    try:
        yield
    finally:
        await loading
        await asyncio.to_thread(hub.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPIOffline(  # /docs and /redoc from the package's own copies of their assets: no CDN, works offline
        title="latent-cnf",
        version="0.1.0",
        description="Digits from a VAE whose latent prior is a continuous normalizing flow: "
        "generate samples, score images by log-likelihood, watch the flow.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.hub = ModelHub(app.state.settings)  # replaced in the lifespan; answers 'not ready' until then
    errors.install(app)
    for router in (generate.router, score.router, trajectory.router, models.router, health.router):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)
    app.add_middleware(RequestMetrics)
    return app


app = create_app()
