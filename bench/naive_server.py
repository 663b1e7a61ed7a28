"""The naive server the service benchmark compares against: what most people would write first.

One FastAPI `def` endpoint calls `model.sample` once per request, on FastAPI's thread pool, with no queue
and no batching; same model, same device and torch threads (read from the service's own LATENT_CNF_*
variables), same response shape as the service's `POST /generate` (base64 PNGs and latents).

    python -m uvicorn naive_server:app --app-dir bench --port 8001
"""

from __future__ import annotations

import base64
import os
import secrets

import torch
from fastapi import FastAPI
from pydantic import BaseModel, Field

import latent_cnf
from latent_cnf.device import resolve_device
from latent_cnf.images import image_pngs

MODEL = os.environ.get("LATENT_CNF_DEFAULT_MODEL", "mnist-final-cond")
if os.environ.get("LATENT_CNF_THREADS"):
    torch.set_num_threads(int(os.environ["LATENT_CNF_THREADS"]))
model = latent_cnf.load(MODEL, resolve_device(os.environ.get("LATENT_CNF_DEVICE", "auto")))
app = FastAPI(title="naive latent-cnf")


class GenerateRequest(BaseModel):
    n: int = Field(16, ge=1, le=256)
    label: int | None = Field(None, ge=0, le=9)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


@app.post("/generate")
def generate(body: GenerateRequest) -> dict:
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    with torch.inference_mode():
        samples = model.sample(body.n, label=body.label, seed=seed)
    return {
        "model": MODEL,
        "n": body.n,
        "label": body.label,
        "labels": samples.labels.tolist() if samples.labels is not None else None,
        "seed": seed,
        "nfe": samples.nfe,
        "images": [base64.b64encode(png).decode() for png in image_pngs(samples.images)],
        "latents": samples.latents.tolist(),
    }


@app.get("/readyz")
def readyz() -> dict:
    return {"status": "ready"}
