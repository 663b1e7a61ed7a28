"""POST /score: log-likelihood bounds of uploaded images under a model."""

from __future__ import annotations

import base64
from typing import Literal

import torch
from anyio import to_thread
from fastapi import APIRouter, File, Form, Request, UploadFile

from latent_cnf.images import binarize_at_threshold, image_pngs, preprocess_mnist, preprocess_resize

from .. import offload
from ..dependencies import DecodeLimiter, Hub, ServiceSettings
from ..failures import TooManyFiles
from ..schemas import (
    BINARY,
    DEFAULT_IMPORTANCE_SAMPLES,
    ERROR_RESPONSES,
    MAX_IMPORTANCE_SAMPLES,
    MAX_MODEL_NAME,
    MAX_VERSION,
    VERSION_HELP,
    ImageScore,
    ScoreResponse,
)
from ..scores import score_rows
from ..uploads import check_request_pixels, decode_image
from .latent_map import positions

router = APIRouter(tags=["score"])
PREPROCESSORS = {"mnist": preprocess_mnist, "resize": preprocess_resize}


def prepare(data: bytes, filename: str, preprocess: str, max_pixels: int) -> torch.Tensor:
    """Decode, make MNIST-like, and binarize (the model is a Bernoulli likelihood of binary pixels)."""
    image = decode_image(data, filename, max_pixels)
    return binarize_at_threshold(PREPROCESSORS[preprocess](image))


def encode_pictures(batch: torch.Tensor, reconstructions: torch.Tensor) -> list[dict[str, str]]:
    """What the model saw and what it kept of it, as base64 PNGs: encoded off the event loop."""
    inputs, kept = image_pngs(batch), image_pngs(reconstructions)
    return [
        {"input_png": base64.b64encode(a).decode(), "reconstruction_png": base64.b64encode(b).decode()}
        for a, b in zip(inputs, kept, strict=True)
    ]


@router.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
async def score(
    request: Request,
    hub: Hub,
    settings: ServiceSettings,
    limiter: DecodeLimiter,
    file: list[UploadFile] = File(
        ...,
        description="one or more images (PNG, JPEG, BMP, GIF, WebP, TIFF)",
        # file parts, to generated clients too (FastAPI's schema gives only OpenAPI 3.1's contentMediaType)
        json_schema_extra={"items": {**BINARY, "contentMediaType": "application/octet-stream"}},
    ),
    model: str | None = Form(None, min_length=1, max_length=MAX_MODEL_NAME),
    version: int | None = Form(None, ge=1, le=MAX_VERSION, description=VERSION_HELP),
    importance_samples: int = Form(
        DEFAULT_IMPORTANCE_SAMPLES, ge=1, le=MAX_IMPORTANCE_SAMPLES, description="K of the IWAE bound"
    ),
    preprocess: Literal["mnist", "resize"] = Form("mnist"),
) -> ScoreResponse:
    """IWAE bound on log p(x) per image; higher is more digit-like. docs/model.md says what the number means."""
    served = hub.registry.get(model, version)
    if len(file) > settings.max_files:
        raise TooManyFiles(f"at most {settings.max_files} images per request, got {len(file)}")
    names = [upload.filename or f"file{i}" for i, upload in enumerate(file)]
    uploads = [(await upload.read(), name) for upload, name in zip(file, names, strict=True)]
    await to_thread.run_sync(
        check_request_pixels, uploads, settings.max_image_pixels, settings.max_request_pixels, limiter=limiter
    )
    images = []
    for data, name in uploads:  # a request waiting for a decoding slot holds no worker thread
        images.append(
            await to_thread.run_sync(prepare, data, name, preprocess, settings.max_image_pixels, limiter=limiter)
        )
    batch = torch.stack(images)
    score = await hub.score(served, batch, importance_samples, request.is_disconnected)
    rows = await offload.encode(len(batch), score_rows, served, batch, score)
    pictures = await offload.encode(len(batch), encode_pictures, batch, score.decoded_mean)
    places = positions(served.latent_map, score.encoder_mean, score.encoder_std)
    results = [
        ImageScore(filename=name, importance_samples=importance_samples, latent_map=place, **picture, **vars(row))
        for name, row, picture, place in zip(names, rows, pictures, places, strict=True)
    ]
    return ScoreResponse(model=served.name, preprocess=preprocess, results=results)
