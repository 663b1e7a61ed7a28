"""What one merged model call is: the key requests must share to be merged, the chunk each request brings, and
`forward`, the computation itself. Pure model maths, no service state: it runs wherever the runner puts it (a
child process by default, see service/model_process.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from latent_cnf.completion import Completion, complete
from latent_cnf.config import SolverConfig
from latent_cnf.model import LatentCNF, Score, Trajectory


@dataclass(frozen=True, kw_only=True)
class BatchKey:
    """What must be equal for requests to share a model call."""

    kind: Literal["generate", "trajectory", "score", "complete"]
    model: str
    solver: SolverConfig
    frames: int = 2  # decoded times of a sampling solve
    importance_samples: int = 0  # K of a score, or proposals per label of a completion


@dataclass(frozen=True)
class SampleChunk:
    z0: torch.Tensor  # (rows, latent_dim) base noise, drawn for the whole request before it was cut
    labels: torch.Tensor | None


@dataclass(frozen=True)
class ScoreChunk:
    images: torch.Tensor  # (m, 28, 28) binarized pixels
    seeds: torch.Tensor  # (m,) proposal seed of each image: its index in the request


@dataclass(frozen=True)
class CompleteChunk:
    image: torch.Tensor  # (28, 28) binarized pixels
    mask: torch.Tensor  # (28, 28) bool: the observed pixels
    seed: int  # of the request's proposals
    k: int  # completions it asks for


Chunk = SampleChunk | ScoreChunk | CompleteChunk
Result = Trajectory | Score | Completion


def split_trajectory(path: Trajectory, sizes: Sequence[int]) -> list[Trajectory]:
    """Cut a merged call's trajectory back into its requests' pieces (sample rows in order), on the CPU."""
    out, start = [], 0
    latents, images = path.latents.cpu(), path.images.cpu()
    labels = path.labels.cpu() if path.labels is not None else None
    for size in sizes:
        end = start + size
        piece = labels[start:end] if labels is not None else None
        out.append(Trajectory(path.times, latents[:, start:end], images[:, start:end], piece, path.nfe))
        start = end
    return out


def split_score(score: Score, sizes: Sequence[int]) -> list[Score]:
    """Cut a merged call's score back into its requests' pieces, on the CPU."""
    tensors = {name: value.cpu() for name, value in vars(score).items() if torch.is_tensor(value)}
    out, start = [], 0
    for size in sizes:
        end = start + size
        # Any: mypy checks replace()'s **kwargs against every field of Score, the int ones too
        pieces: dict[str, Any] = {name: value[start:end] for name, value in tensors.items()}
        out.append(dataclasses.replace(score, **pieces))
        start = end
    return out


@torch.inference_mode()
def forward(model: LatentCNF, key: BatchKey, chunks: Sequence[Chunk]) -> tuple[list[Result], int]:
    """One merged call: every chunk's result (on the CPU) and the call's function evaluations."""
    device = model.device
    if key.kind == "complete":
        asked = cast(Sequence[CompleteChunk], chunks)
        images, masks = torch.stack([chunk.image for chunk in asked]), torch.stack([chunk.mask for chunk in asked])
        seeds = torch.tensor([chunk.seed for chunk in asked])
        done = complete(model, images, masks, [c.k for c in asked], key.importance_samples, seeds, key.solver)
        return list(done), done[0].nfe
    if key.kind == "score":
        scored = cast(Sequence[ScoreChunk], chunks)
        images = torch.cat([chunk.images for chunk in scored]).to(device)
        seeds = torch.cat([chunk.seeds for chunk in scored])
        score = model.score(images, k=key.importance_samples, seed=seeds, solver=key.solver)
        return list(split_score(score, [len(chunk.images) for chunk in scored])), score.nfe
    sampled = cast(Sequence[SampleChunk], chunks)
    z0 = torch.cat([chunk.z0 for chunk in sampled]).to(device)
    given = [chunk.labels for chunk in sampled if chunk.labels is not None]
    labels = torch.cat(given).to(device) if model.prior.uses_labels else None
    path = model.generate(z0, labels, key.solver, key.frames)
    return list(split_trajectory(path, [len(chunk.z0) for chunk in sampled])), path.nfe
