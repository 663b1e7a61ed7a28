"""What one merged model call is: the key requests must share to be merged, the chunk each request brings, and
`forward`, the computation itself. Pure model maths, no service state: it runs wherever the runner puts it (a
child process by default, see service/model_process.py)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from latent_cnf.completion import Completion, complete
from latent_cnf.config import SolverConfig
from latent_cnf.images import image_pngs
from latent_cnf.model import LatentCNF, Score, Trajectory


@dataclass(frozen=True, kw_only=True)
class BatchKey:
    """What must be equal for requests to share a model call."""

    kind: Literal["generate", "trajectory", "score", "complete"]
    model: str
    version: int
    solver: SolverConfig
    frames: int = 2  # decoded times of a sampling solve
    importance_samples: int = 0  # K of a score, or proposals per label of a completion
    pngs: bool = False  # sampling: each sample's final image also as PNG bytes, encoded where the call runs

    @property
    def instance(self) -> str:
        """The loaded model the call runs on, where calls run: one version of one model."""
        return instance(self.model, self.version)


def instance(model: str, version: int) -> str:
    return f"{model}/{version}"


@dataclass(frozen=True)
class SampleJob:
    """A seeded sampling request: sample i depends only on these and i, whatever call it shares."""

    n: int
    label: int | None
    seed: int
    temperature: float = 1.0


@dataclass(frozen=True)
class SampleChunk:
    """Rows `rows` of a request's samples. A seeded request sends its recipe (`job`), and its base noise is drawn
    where the call runs: no torch work in the HTTP process for it (a tenth of its CPU per one-sample request,
    py-spy) and a few bytes on the pipe. Noise no seed draws (between two seeds') comes as it is."""

    rows: slice  # of the request's samples, start and stop given
    job: SampleJob | None = None
    z0: torch.Tensor | None = None  # (rows, latent_dim), when there is no job
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.rows.stop - self.rows.start)

    def base(self, model: LatentCNF) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This chunk's base noise and labels (the request's whole draw, cut: each row is the same in any part)."""
        if self.job is None:
            assert self.z0 is not None  # a chunk has a job or its noise
            return self.z0, self.labels
        job = self.job
        z0, labels = model.draw_base(job.n, job.label, job.seed, job.temperature)
        return z0[self.rows], labels[self.rows] if labels is not None else None


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


@dataclass(frozen=True)
class Encoded:
    """A sampling chunk's result with its samples' final images as PNGs (a JSON answer's `images`). Encoded in the
    model process: a one-sample answer's PNG and pixel conversion were a quarter of the HTTP process's CPU for
    it (py-spy), while the model process waited for work half the time."""

    path: Trajectory
    pngs: list[bytes]


Chunk = SampleChunk | ScoreChunk | CompleteChunk
Result = Trajectory | Score | Completion | Encoded


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
    bases = [chunk.base(model) for chunk in sampled]
    z0 = torch.cat([z0 for z0, _ in bases]).to(device)
    labels = (
        torch.cat([labels for _, labels in bases if labels is not None]).to(device) if model.prior.uses_labels else None
    )
    path = model.sample_from(z0, labels, key.solver, key.frames)
    sizes = [chunk.size for chunk in sampled]
    pieces = split_trajectory(path, sizes)
    if not key.pngs:
        return list(pieces), path.nfe
    pngs = iter(image_pngs(path.images[-1]))
    return [
        Encoded(piece, list(itertools.islice(pngs, size))) for piece, size in zip(pieces, sizes, strict=True)
    ], path.nfe
