"""FastAPI dependencies shared by the routers: the app's hub, settings and decoding slots, as route parameters.
Each is `async def` though it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread, a
thread hop per request for a dictionary lookup."""

from __future__ import annotations

from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Request

from .inference import ModelHub
from .settings import Settings


async def get_hub(request: Request) -> ModelHub:
    hub: ModelHub = request.app.state.hub  # starlette's State holds Any
    return hub


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_decode_limiter(request: Request) -> CapacityLimiter:
    """The app's cap on images decoded at once, over all requests, which bounds decoding memory whatever arrives;
    made on first use because a limiter belongs to the event loop that serves the app."""
    state = request.app.state
    if not hasattr(state, "decode_limiter"):
        state.decode_limiter = CapacityLimiter(state.settings.max_concurrent_decodes)
    limiter: CapacityLimiter = state.decode_limiter
    return limiter


Hub = Annotated[ModelHub, Depends(get_hub)]
ServiceSettings = Annotated[Settings, Depends(get_settings)]
DecodeLimiter = Annotated[CapacityLimiter, Depends(get_decode_limiter)]
