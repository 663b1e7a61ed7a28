"""Helpers shared by the service tests: settings, app start-up, image bytes."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from latent_cnf import LatentCNF, available, save_pretrained
from service.settings import Settings
from train.presets import PRESETS

# The environment of a served model in the tests: one torch thread, the test process needs the other core.
ONE_THREAD = {"LATENT_CNF_THREADS": "1"}


def unconditional_checkpoint(folder: Path) -> Path:
    """A small untrained unconditional model, so label errors can be tested whatever is shipped."""
    return save_pretrained(LatentCNF(PRESETS["vae-cnf-prior"].model), folder / "uncond", {"dataset": "mnist"})


def make_settings(folder: Path, **overrides) -> Settings:
    models = [*available(), str(unconditional_checkpoint(folder))]
    return Settings(models=models, **overrides)


def wait_ready(client: TestClient, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service did not become ready")
        time.sleep(0.05)


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def decode_png(data: str | bytes) -> Image.Image:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG"
    return image
