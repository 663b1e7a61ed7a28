"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

import secrets

from fastapi import Request

from .inference import ModelHub
from .settings import Settings


def get_hub(request: Request) -> ModelHub:
    return request.app.state.hub


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def fresh_seed(seed: int | None) -> int:
    """Requests without a seed get a random one, returned so the result can be reproduced."""
    return seed if seed is not None else secrets.randbelow(2**31)
