"""POST /score: log-likelihood bounds of uploaded images under a model."""

from __future__ import annotations

from typing import Literal

import torch
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from latent_cnf.images import preprocess_mnist, preprocess_resize

from ..dependencies import get_hub, get_settings
from ..errors import ServiceError
from ..inference import ModelHub, ScoreJob
from ..schemas import ERROR_RESPONSES, MAX_MODEL_NAME, ImageScore, ScoreResponse
from ..settings import Settings
from ..uploads import decode_image

router = APIRouter(tags=["score"])
PREPROCESSORS = {"mnist": preprocess_mnist, "resize": preprocess_resize}


def prepare(data: bytes, filename: str, preprocess: str, max_pixels: int) -> torch.Tensor:
    """Decode, make MNIST-like, and binarize at 0.5 (the model is a Bernoulli likelihood of binary pixels)."""
    image = decode_image(data, filename, max_pixels)
    return (PREPROCESSORS[preprocess](image) > 0.5).float()


@router.post("/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
async def score(
    request: Request,
    file: list[UploadFile] = File(..., description="one or more images (PNG, JPEG, BMP, GIF, WebP, TIFF)"),
    model: str | None = Form(None, min_length=1, max_length=MAX_MODEL_NAME),
    importance_samples: int = Form(64, ge=1, le=1024, description="K of the IWAE bound"),
    preprocess: Literal["mnist", "resize"] = Form("mnist"),
    hub: ModelHub = Depends(get_hub),
    settings: Settings = Depends(get_settings),
) -> ScoreResponse:
    """IWAE bound on log p(x) per image; higher is more digit-like. See the README for what the number means."""
    served = hub.get(model)
    if len(file) > settings.max_files:
        raise ServiceError(422, "too_many_files", f"at most {settings.max_files} images per request, got {len(file)}")
    names = [upload.filename or f"file{i}" for i, upload in enumerate(file)]
    images = []
    for upload, name in zip(file, names, strict=True):
        data = await upload.read()
        images.append(await run_in_threadpool(prepare, data, name, preprocess, settings.max_image_pixels))
    batch = torch.stack(images)
    cost = hub.score_rows(served, len(batch), importance_samples)
    job = ScoreJob(batch, seed=0)
    rows = await hub.submit(("score", served.name, importance_samples), cost, job, request.is_disconnected)
    results = []
    for name, row in zip(names, rows, strict=True):
        percentile = served.percentile(row["log_likelihood_nats"])
        results.append(
            ImageScore(
                filename=name,
                importance_samples=importance_samples,
                percentile=percentile,
                in_distribution=None if percentile is None else percentile >= settings.ood_percentile,
                **row,
            )
        )
    return ScoreResponse(model=served.name, preprocess=preprocess, results=results)
