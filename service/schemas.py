"""Request and response bodies; these pydantic models are what /openapi.json and /docs describe."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from latent_cnf.completion import MaskName
from latent_cnf.config import MAX_STEPS, MAX_TOLERANCE, MIN_TOLERANCE, SolverMethod
from latent_cnf.model import MAX_TEMPERATURE

MAX_SEED = 2**63 - 1
MAX_MODEL_NAME = 128
MAX_VERSION = 999_999_999
VERSION_HELP = "version of the model (default: its newest loaded version)"
DEFAULT_IMPORTANCE_SAMPLES, MAX_IMPORTANCE_SAMPLES = 64, 1024  # K of a score, by /score and /v2 alike
DEFAULT_COMPLETIONS, MAX_COMPLETIONS = 8, 32  # k of a completion
DEFAULT_PROPOSALS = 32  # proposals per label of a completion (its K)
SIDE = 28  # pixels along each side of the images the models read
TEMPERATURE_HELP = "scales the base noise (as in Glow): below 1, more typical samples, less variety"
# Raw bytes in /openapi.json (a file part, a PNG answer, binary tensors): `format: binary` is how the clients
# generated from the document (openapi-python-client, openapi-generator) know a file from a text field.
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}


class SolverSpec(BaseModel):
    """ODE solver for the flow; omitted fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"method": "rk4", "steps": 16}]})

    method: SolverMethod | None = None
    steps: int | None = Field(
        None,
        ge=1,
        le=MAX_STEPS,
        description="steps of a fixed-step method over [t0, t1] (a trajectory rounds up per frame)",
    )
    rtol: float | None = Field(None, ge=MIN_TOLERANCE, le=MAX_TOLERANCE, description="dopri5 relative tolerance")
    atol: float | None = Field(None, ge=MIN_TOLERANCE, le=MAX_TOLERANCE, description="dopri5 absolute tolerance")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"n": 4, "label": 3, "seed": 7}, {"n": 16}]}
    )

    model: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_MODEL_NAME,
        description="served model name (default: LATENT_CNF_DEFAULT_MODEL)",
    )
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description=VERSION_HELP)
    n: int = Field(16, ge=1, le=256, description="number of samples")
    label: int | None = Field(None, ge=0, le=9, description="digit to draw (label-conditioned models only)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random seed; omitted = a fresh one, returned")
    temperature: float = Field(1.0, gt=0, le=MAX_TEMPERATURE, description=TEMPERATURE_HELP)
    solver: SolverSpec | None = None


class GenerateResponse(BaseModel):
    model: str
    n: int
    label: int | None
    labels: list[int] | None = Field(
        description="label of each sample (models whose prior uses labels), drawn if not given"
    )
    seed: int
    temperature: float
    nfe: int = Field(description="ODE function evaluations of the model call that produced these samples")
    images: list[str] = Field(description="base64-encoded 28x28 grayscale PNGs")
    latents: list[list[float]]


class MapPosition(BaseModel):
    x: float
    y: float
    covariance: list[list[float]] = Field(
        description="2x2 covariance of the position: the encoder posterior's spread, projected onto the map"
    )


class ImageScore(BaseModel):
    filename: str
    log_likelihood_nats: float = Field(description="IWAE lower bound on log p(x) of the binarized image, in nats")
    bits_per_dim: float = Field(description="-log_likelihood / (784 ln 2)")
    elbo_nats: float
    latent_log_density: float = Field(description="log p(z) of the encoder mean under the CNF prior")
    kl_nats: float
    reconstruction_nats: float
    importance_samples: int
    percentile: float | None = Field(description="percentile of this score among the model's test-set scores")
    complexity_corrected_nats: float = Field(
        description="log_likelihood_nats + ln 2 x the PNG code length of the binarized image in bits (Serrà et al. "
        "2020): how much better the model explains the image than a generic compressor; higher = more digit-like"
    )
    in_distribution: bool | None = Field(
        description="every signal within the bounds calibrated in the model's serving.json (null without them); "
        "an image without ink is never in distribution"
    )
    ood_reason: str | None = Field(description="why in_distribution is false: no_ink, or the signal out of bounds")
    predicted_label: int | None = Field(description="argmax over labels of the class-conditional bound")
    label_probabilities: list[float] | None = Field(
        description="p(label | image) for labels 0..9 (label-conditioned models): the softmax of the "
        "class-conditional bounds, Bayes' rule under the uniform class prior, exact up to the bounds' gaps"
    )
    latent_map: MapPosition | None = Field(
        description="where the encoder's posterior of this image (the one whose mean reconstruction_png decodes) "
        "lies on the model's latent map (GET /latent-map); null for a model without a map"
    )
    input_png: str = Field(description="base64 PNG of the binarized 28x28 image that was scored")
    reconstruction_png: str = Field(
        description="base64 PNG of the pixel means decoded from the encoder mean whose density "
        "latent_log_density is (for a label-conditioned encoder, the best-scoring label's)"
    )


class ScoreResponse(BaseModel):
    model: str
    preprocess: Literal["mnist", "resize"]
    results: list[ImageScore]


class TrajectoryStep(BaseModel):
    t: float
    latents: list[list[float]]
    images: list[str] = Field(description="base64 PNG per sample at this time")
    map_points: list[list[float]] | None = Field(
        description="each sample's [x, y] on the model's latent map (GET /latent-map) at this time; null for a "
        "model without a map"
    )


class MapPoint(BaseModel):
    index: int = Field(description="the image's index in the model's test split")
    label: int
    x: float
    y: float


class LatentMapResponse(BaseModel):
    model: str
    method: str = Field(description="how the map was fitted")
    latent_dim: int
    mean: list[float] = Field(description="a latent z lies at ((z - mean) @ axes^T) / scale on the map")
    axes: list[list[float]] = Field(description="the two principal directions, unit vectors of latent_dim")
    scale: list[float] = Field(description="the test encodings' std along each axis: one map unit")
    explained_variance: list[float] = Field(description="share of the test encodings' variance along each axis")
    points: list[MapPoint] = Field(description="encoder means of test images, the first of each label, projected")


Pixels = Annotated[
    list[Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]], Field(min_length=SIDE, max_length=SIDE)
]
MaskRow = Annotated[list[bool], Field(min_length=SIDE, max_length=SIDE)]
# the example's image: a horizontal bar in the top half, which the model may complete to a 7, a 5 or a 9
BAR: list[Any] = [
    [1.0 if 10 <= row < 14 and 9 <= column < 19 else 0.0 for column in range(SIDE)] for row in range(SIDE)
]


class CompleteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"image": BAR, "mask": "top", "k": 4, "seed": 0}]},
    )

    model: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_MODEL_NAME,
        description="served model name (default: LATENT_CNF_DEFAULT_MODEL)",
    )
    version: int | None = Field(None, ge=1, le=MAX_VERSION, description=VERSION_HELP)
    image: list[Pixels] = Field(
        min_length=SIDE,
        max_length=SIDE,
        description="28 rows of 28 intensities in [0, 1], white ink on black as in MNIST; binarized at 0.5",
    )
    mask: MaskName | Annotated[list[MaskRow], Field(min_length=SIDE, max_length=SIDE)] = Field(
        description="the observed pixels: a named half of the image, or 28 rows of 28 booleans (true: observed)"
    )
    k: int = Field(DEFAULT_COMPLETIONS, ge=1, le=MAX_COMPLETIONS, description="completions returned")
    importance_samples: int = Field(
        DEFAULT_PROPOSALS, ge=1, le=MAX_IMPORTANCE_SAMPLES, description="proposals per label (K); at least k"
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="seed of the proposals; omitted = a fresh one, returned"
    )


class CompletionImage(BaseModel):
    image: str = Field(
        description="base64 PNG: the observed pixels as sent (binarized), the others the decoder's means"
    )
    weight: float = Field(description="normalized importance weight among the returned completions (they sum to 1)")
    label: int | None = Field(description="the label it was drawn under (models whose prior uses labels)")
    latent: list[float]


class CompleteResponse(BaseModel):
    model: str
    mask: str = Field(description="the named mask, or 'custom'")
    observed_pixels: int
    seed: int
    importance_samples: int = Field(description="proposals per label")
    proposals: int = Field(description="proposals in all: importance_samples x the labels scored")
    effective_sample_size: float = Field(
        description="1 / sum of the squared normalized weights of all proposals: how many independent posterior "
        "draws they are worth (1 to proposals)"
    )
    mass: float = Field(description="the share of all proposals' weight that the returned completions carry")
    label_probabilities: list[float] | None = Field(
        description="p(label | observed pixels) for labels 0..9 (models whose prior uses labels)"
    )
    predicted_label: int | None
    nfe: int = Field(description="ODE function evaluations of the model call")
    completions: list[CompletionImage] = Field(description="the k heaviest proposals, heaviest first")


class TrajectoryResponse(BaseModel):
    model: str
    n: int
    steps: int
    seed: int
    temperature: float
    label: int | None
    labels: list[int] | None
    nfe: int
    trajectory: list[TrajectoryStep]


class InterpolateResponse(BaseModel):
    model: str
    seed_a: int
    seed_b: int
    t: list[float] = Field(description="the interpolation weights, one per image")
    label: int | None
    temperature: float
    nfe: int
    images: list[str] = Field(description="base64 PNG of the sample at each t")
    latents: list[list[float]]


class ModelInfo(BaseModel):
    name: str
    version: int = Field(description="the version described: the newest loaded unless one was asked for")
    versions: list[int] = Field(description="every loaded version (the model repository's policy decides which)")
    dataset: str | None
    preset: str | None
    prior_uses_labels: bool = Field(
        description="the CNF prior is p(z | label): sampling takes a label and scoring gives label probabilities"
    )
    encoder_uses_labels: bool = Field(description="the encoder reads the label too (scoring tries every label)")
    class_names: list[str] | None = Field(description="name of each label 0..9 in the model's dataset")
    latent_dim: int
    parameters: int
    checkpoint_sha256: str
    device: str
    config: dict[str, Any]
    training: dict[str, Any] = Field(description="how the weights were made (the model folder's training.json)")
    serving: dict[str, Any] = Field(
        description="calibrated solvers and OOD bounds (serving.json, without the score reference)"
    )


class ModelList(BaseModel):
    default: str | None = Field(description="the model used when a request names none; null while it is not served")
    models: list[ModelInfo]
    failed: dict[str, str] = Field(default_factory=dict, description="checkpoints that could not be served, and why")


class Health(BaseModel):
    status: str
    ready: bool = Field(description="every checkpoint was tried and the default model is loaded and warmed up")
    models: list[str] = Field(description="models loaded so far")
    failed: dict[str, str] = Field(default_factory=dict, description="checkpoints that could not be served, and why")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(body: type[BaseModel], changes: dict[int, str | None] | None = None) -> dict[int | str, Any]:
    """OpenAPI `responses` for the error statuses the routes share, in the error shape `body`; `changes` gives
    other descriptions, or None to leave a status out."""
    texts = {
        400: "malformed request body",
        404: "unknown model",
        413: "body or image too large",
        415: "not an accepted image format",
        422: "invalid parameters or image",
        503: "queue full or models loading (see Retry-After)",
        504: "timed out waiting for the model",
    } | (changes or {})
    return {status: {"model": body, "description": text} for status, text in texts.items() if text}


ERROR_RESPONSES = error_responses(ErrorBody)
