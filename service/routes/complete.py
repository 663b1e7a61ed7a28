"""POST /complete: completions of a partly observed image, with their weights and p(label | observed pixels)."""

from __future__ import annotations

import base64

import torch
from fastapi import APIRouter, Request

from latent_cnf.completion import Completion, named_mask
from latent_cnf.images import binarize_at_threshold, image_pngs

from .. import offload
from ..dependencies import Hub
from ..inference import fresh_seed
from ..schemas import ERROR_RESPONSES, CompleteRequest, CompleteResponse, CompletionImage

router = APIRouter(tags=["complete"])


@router.post("/complete", response_model=CompleteResponse, responses=ERROR_RESPONSES)
async def complete(body: CompleteRequest, request: Request, hub: Hub) -> CompleteResponse:
    """The k heaviest of K importance samples per label from p(z, label | observed pixels); see docs/api.md for
    the sampler and what its effective sample size means."""
    served = hub.registry.get(body.model, body.version)
    image = binarize_at_threshold(torch.tensor(body.image, dtype=torch.float32))
    mask = named_mask(body.mask) if isinstance(body.mask, str) else torch.tensor(body.mask, dtype=torch.bool)
    seed = fresh_seed(body.seed)
    done = await hub.complete(served, image, mask, body.k, body.importance_samples, seed, request.is_disconnected)
    name = body.mask if isinstance(body.mask, str) else "custom"
    classes = served.model.config.score_classes
    return await offload.encode(body.k, respond, served.name, name, int(mask.sum()), seed, classes, done)


def respond(model: str, mask: str, observed: int, seed: int, classes: int, done: Completion) -> CompleteResponse:
    """PNG encoding off the event loop when there are many completions."""
    labels = done.labels.tolist() if done.labels is not None else [None] * len(done.weights)
    probabilities = done.label_probabilities
    return CompleteResponse(
        model=model,
        mask=mask,
        observed_pixels=observed,
        seed=seed,
        importance_samples=done.importance_samples,
        proposals=done.importance_samples * classes,
        effective_sample_size=done.effective_sample_size,
        mass=done.mass,
        label_probabilities=probabilities.tolist() if probabilities is not None else None,
        predicted_label=int(probabilities.argmax()) if probabilities is not None else None,
        nfe=done.nfe,
        completions=[
            CompletionImage(image=base64.b64encode(png).decode(), weight=float(weight), label=label, latent=latent)
            for png, weight, label, latent in zip(
                image_pngs(done.images), done.weights, labels, done.latents.tolist(), strict=True
            )
        ],
    )
