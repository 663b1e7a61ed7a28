"""The service's operations as Open Inference Protocol models: `<model>.generate`, `<model>.score` and
`<model>.complete` for each served checkpoint, with named tensors in and out, run by the same hub, batcher and
limits as /generate, /score and /complete. docs/api.md describes the mapping; this module is where it is
defined."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ValidationError

from latent_cnf.images import binarize_at_threshold

from .failures import InvalidRequest, MalformedRequest, TooManyFiles, UnknownModel
from .inference import Disconnected, ModelHub, fresh_seed
from .model_calls import SampleJob
from .open_inference import ModelMetadata, TensorMetadata
from .schemas import (
    DEFAULT_COMPLETIONS,
    DEFAULT_IMPORTANCE_SAMPLES,
    DEFAULT_PROPOSALS,
    MAX_COMPLETIONS,
    MAX_IMPORTANCE_SAMPLES,
    MAX_MODEL_NAME,
    MAX_SEED,
    GenerateRequest,
)
from .scores import score_rows
from .served import ServedModel
from .settings import Settings

Operation = Literal["generate", "score", "complete"]
OPERATIONS: tuple[Operation, ...] = ("generate", "score", "complete")
PLATFORM = "pytorch"
IMAGE = (1, 28, 28)
# Score outputs and the field of the score rows (service/scores.py) each one carries, all FP64 [m].
SCORE_FIELDS = {
    "LOG_LIKELIHOOD": "log_likelihood_nats",
    "BITS_PER_DIM": "bits_per_dim",
    "ELBO": "elbo_nats",
    "KL": "kl_nats",
    "RECONSTRUCTION": "reconstruction_nats",
    "LATENT_LOG_DENSITY": "latent_log_density",
}
# Sampling inputs and the GenerateRequest field each one sets: the same validation and limits as /generate.
GENERATE_FIELDS = {"N": "n", "LABEL": "label", "SEED": "seed", "TEMPERATURE": "temperature"}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    optional: bool = False


@dataclass(frozen=True)
class V2Model:
    """One operation of one served checkpoint."""

    name: str
    served: ServedModel
    operation: Operation
    versions: list[int]  # of the served model, loaded

    @property
    def inputs(self) -> list[Tensor]:
        if self.operation == "complete":
            return [
                Tensor("IMAGE", "FP32", (1, *IMAGE)),
                Tensor("MASK", "BOOL", (1, *IMAGE)),
                Tensor("K", "INT32", (1,), True),
                Tensor("IMPORTANCE_SAMPLES", "INT32", (1,), True),
                Tensor("SEED", "INT64", (1,), True),
            ]
        if self.operation == "score":
            return [Tensor("IMAGES", "FP32", (-1, *IMAGE)), Tensor("IMPORTANCE_SAMPLES", "INT32", (1,), True)]
        label = [Tensor("LABEL", "INT32", (1,), True)] if self.served.prior_uses_labels else []
        return [
            Tensor("N", "INT32", (1,)),
            *label,
            Tensor("SEED", "INT64", (1,), True),
            Tensor("TEMPERATURE", "FP32", (1,), True),
        ]

    @property
    def outputs(self) -> list[Tensor]:
        uses_labels = self.served.prior_uses_labels
        if self.operation == "complete":
            return [
                Tensor("COMPLETIONS", "FP32", (-1, *IMAGE)),
                Tensor("WEIGHTS", "FP64", (-1,)),
                Tensor("LATENTS", "FP32", (-1, self.served.model.config.latent_dim)),
                *(
                    [Tensor("LABELS", "INT32", (-1,)), Tensor("LABEL_PROBABILITIES", "FP64", (10,))]
                    if uses_labels
                    else []
                ),
                Tensor("EFFECTIVE_SAMPLE_SIZE", "FP64", (1,)),
                Tensor("SEED", "INT64", (1,)),
                Tensor("NFE", "INT32", (1,)),
            ]
        if self.operation == "score":
            return [
                *(Tensor(name, "FP64", (-1,)) for name in SCORE_FIELDS),
                *([Tensor("PREDICTED_LABEL", "INT32", (-1,))] if uses_labels else []),
                *([Tensor("PERCENTILE", "FP64", (-1,))] if self.served.reference is not None else []),
            ]
        return [
            Tensor("IMAGES", "FP32", (-1, *IMAGE)),
            Tensor("LATENTS", "FP32", (-1, self.served.model.config.latent_dim)),
            *([Tensor("LABELS", "INT32", (-1,))] if uses_labels else []),
            Tensor("SEED", "INT64", (1,)),
            Tensor("NFE", "INT32", (1,)),
        ]

    def metadata(self) -> ModelMetadata:
        def describe(tensors: Sequence[Tensor]) -> list[TensorMetadata]:
            return [TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in tensors]

        return ModelMetadata(
            name=self.name,
            versions=[str(version) for version in self.versions],
            platform=PLATFORM,
            inputs=describe(self.inputs),
            outputs=describe(self.outputs),
        )

    def config(self, settings: Settings) -> dict[str, Any]:
        """Triton's model configuration (the model_configuration extension) as perf_analyzer reads it. No
        batch dimension (max_batch_size 0): N and the image count are the request's size, and the service
        merges requests itself, which `parameters` states since Triton's dynamic_batching would not fit."""
        return {
            "name": self.name,
            "platform": PLATFORM,
            "backend": "latent-cnf",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": 0,
            "input": [
                {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape), "optional": t.optional}
                for t in self.inputs
            ],
            "output": [
                {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(t.shape)} for t in self.outputs
            ],
            "instance_group": [
                {"name": self.name, "kind": "KIND_CPU" if self.served.device == "cpu" else "KIND_GPU", "count": 1}
            ],
            "parameters": {
                "batching": {
                    "string_value": f"requests merged by the service: at most {settings.max_wait_ms:g} ms wait, "
                    f"{settings.max_queue} queued, {settings.timeout_s:g} s timeout"
                }
            },
        }


def split_name(name: str) -> tuple[str, Operation]:
    """(served model, operation) of `<served model>.<operation>`."""
    base, _, operation = name.rpartition(".")
    if operation not in OPERATIONS or not base:
        shown = name if len(name) <= MAX_MODEL_NAME else f"{name[:MAX_MODEL_NAME]}..."
        raise UnknownModel(f"no model {shown!r}; models are named <model>.generate, .score or .complete")
    return base, operation


def lookup(hub: ModelHub, name: str, version: str | None = None) -> V2Model:
    """`<served model>.<operation>`, its newest loaded version or the one named; unknown operations and
    versions 404 like unknown models, loading ones 503."""
    base, operation = split_name(name)
    if version is not None and not (version.isdigit() and 0 < len(version) <= 9):
        raise UnknownModel(f"no version {version[:16]!r} of {name!r}: versions are positive integers")
    served = hub.registry.get(base, None if version is None else int(version))
    return V2Model(name, served, operation, sorted(hub.registry.versions.get(base, {served.version: served})))


def _scalar(tensors: dict[str, np.ndarray], name: str) -> int | float | None:
    if name not in tensors:
        return None
    if tensors[name].size != 1:
        raise MalformedRequest(f"input {name!r} must hold one element")
    value: int | float = tensors[name].reshape(-1)[0].item()  # numpy's item() is Any
    return value


def _check_inputs(model: V2Model, tensors: dict[str, np.ndarray]) -> None:
    """Every required input given and nothing else; each of its declared kind (integer or floating point)."""
    declared = {t.name: t for t in model.inputs}
    unknown = sorted(set(tensors) - set(declared))
    if unknown:
        raise MalformedRequest(f"unknown inputs {unknown}; {model.name} takes {sorted(declared)}")
    for tensor in declared.values():
        if tensor.name not in tensors:
            if not tensor.optional:
                raise MalformedRequest(f"input {tensor.name!r} is required")
            continue
        kind = tensors[tensor.name].dtype.kind
        wanted = "f" if tensor.datatype.startswith("FP") else "biu" if tensor.datatype == "BOOL" else "iu"
        if kind not in wanted:
            raise MalformedRequest(f"input {tensor.name!r} must be {tensor.datatype} (or another of its kind)")


async def run(
    model: V2Model, hub: ModelHub, tensors: dict[str, np.ndarray], disconnected: Disconnected
) -> dict[str, tuple[str, np.ndarray]]:
    """The model's outputs, (datatype, array) by name, for these input tensors."""
    _check_inputs(model, tensors)
    if model.operation == "score":
        outputs = await _score(model, hub, tensors, disconnected)
    elif model.operation == "complete":
        outputs = await _complete(model, hub, tensors, disconnected)
    else:
        outputs = await _generate(model, hub, tensors, disconnected)
    return {tensor.name: outputs[tensor.name] for tensor in model.outputs}  # in the metadata's order


async def _generate(
    model: V2Model, hub: ModelHub, tensors: dict[str, np.ndarray], disconnected: Disconnected
) -> dict[str, tuple[str, np.ndarray]]:
    """As POST /generate: the same validation, seed handling and batched sampling call."""
    fields = {field: _scalar(tensors, name) for name, field in GENERATE_FIELDS.items() if name in tensors}
    try:
        body = GenerateRequest(**fields)
    except ValidationError as error:
        names = {field: name for name, field in GENERATE_FIELDS.items()}
        message = "; ".join(f"input {names.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in error.errors())
        raise InvalidRequest(message) from None
    served = model.served
    served.check_label(body.label)
    seed = fresh_seed(body.seed)
    job = SampleJob(body.n, body.label, seed, body.temperature)
    path = await hub.sample("generate", served, job, served.sample_solver(), 2, disconnected)
    outputs = {
        "IMAGES": ("FP32", path.images[-1].cpu().numpy()),
        "LATENTS": ("FP32", path.latents[-1].cpu().numpy()),
        "SEED": ("INT64", np.array([seed])),
        "NFE": ("INT32", np.array([path.nfe])),
    }
    if path.labels is not None:
        outputs["LABELS"] = ("INT32", path.labels.cpu().numpy())
    return outputs


def binarize(images: np.ndarray) -> torch.Tensor:
    """(m, 28, 28) or (m, 1, 28, 28) intensities in [0, 1] -> (m, 28, 28) binary pixels, as /score
    binarizes an upload after its preprocessing (none here: the tensor is taken as the 28x28 image)."""
    if images.ndim not in (3, 4) or images.shape[-2:] != IMAGE[1:] or (images.ndim == 4 and images.shape[1] != 1):
        raise MalformedRequest(f"IMAGES must be [m, 28, 28] or [m, 1, 28, 28], not {images.shape}")
    if not np.isfinite(images).all() or images.min(initial=0) < 0 or images.max(initial=0) > 1:
        raise MalformedRequest("IMAGES must hold intensities in [0, 1]")
    pixels = torch.from_numpy(np.array(images, np.float32)).reshape(-1, *IMAGE[1:])
    return binarize_at_threshold(pixels)


async def _score(
    model: V2Model, hub: ModelHub, tensors: dict[str, np.ndarray], disconnected: Disconnected
) -> dict[str, tuple[str, np.ndarray]]:
    """As POST /score for images already 28x28: the same limits, proposal seeds and batched scoring call."""
    settings = hub.settings
    images = binarize(tensors["IMAGES"])
    if not 1 <= len(images) <= settings.max_files:
        raise TooManyFiles(f"1 to {settings.max_files} images per request, got {len(images)}")
    k = _count(tensors, "IMPORTANCE_SAMPLES", DEFAULT_IMPORTANCE_SAMPLES, MAX_IMPORTANCE_SAMPLES)
    score = await hub.score(model.served, images, k, disconnected)
    rows = score_rows(model.served, images, score, verdict=False)  # v2 returns no verdict: nothing slow left
    outputs = {name: ("FP64", np.array([getattr(row, field) for row in rows])) for name, field in SCORE_FIELDS.items()}
    if model.served.prior_uses_labels:
        outputs["PREDICTED_LABEL"] = ("INT32", np.array([row.predicted_label for row in rows]))
    if model.served.reference is not None:
        outputs["PERCENTILE"] = ("FP64", np.array([row.percentile for row in rows]))
    return outputs


def _count(tensors: dict[str, np.ndarray], name: str, default: int, most: int) -> int:
    """An optional count input, 1..most."""
    value = _scalar(tensors, name)
    count = default if value is None else int(value)
    if not 1 <= count <= most:
        raise InvalidRequest(f"input {name}: must be 1 to {most}")
    return count


async def _complete(
    model: V2Model, hub: ModelHub, tensors: dict[str, np.ndarray], disconnected: Disconnected
) -> dict[str, tuple[str, np.ndarray]]:
    """As POST /complete with a custom mask: the same limits, seed handling and batched call."""
    image = binarize(tensors["IMAGE"])
    mask = tensors["MASK"]
    if len(image) != 1:
        raise MalformedRequest(f"IMAGE must hold one image, [1, 28, 28] or [1, 1, 28, 28], not {len(image)}")
    if mask.size != image.numel() or not np.isin(mask, (0, 1)).all():
        raise MalformedRequest(f"MASK must hold {image.numel()} values, each 0 or 1 (1: observed)")
    k = _count(tensors, "K", DEFAULT_COMPLETIONS, MAX_COMPLETIONS)
    proposals = _count(tensors, "IMPORTANCE_SAMPLES", DEFAULT_PROPOSALS, MAX_IMPORTANCE_SAMPLES)
    given = _scalar(tensors, "SEED")
    if given is not None and not 0 <= given <= MAX_SEED:
        raise InvalidRequest(f"input SEED: must be 0 to {MAX_SEED}")
    seed = fresh_seed(None if given is None else int(given))
    observed = torch.from_numpy(mask.astype(bool).reshape(IMAGE[1:]))
    done = await hub.complete(model.served, image[0], observed, k, proposals, seed, disconnected)
    outputs = {
        "COMPLETIONS": ("FP32", done.images.numpy()),
        "WEIGHTS": ("FP64", done.weights.double().numpy()),
        "LATENTS": ("FP32", done.latents.numpy()),
        "EFFECTIVE_SAMPLE_SIZE": ("FP64", np.array([done.effective_sample_size])),
        "SEED": ("INT64", np.array([seed])),
        "NFE": ("INT32", np.array([done.nfe])),
    }
    if done.labels is not None and done.label_probabilities is not None:
        outputs["LABELS"] = ("INT32", done.labels.numpy())
        outputs["LABEL_PROBABILITIES"] = ("FP64", done.label_probabilities.double().numpy())
    return outputs
