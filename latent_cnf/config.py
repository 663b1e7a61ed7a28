"""The model's configuration as data: dataclasses with a JSON round trip (training's: train/presets.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The solvers: their names, the bounds a served request or setting may ask for, and the one default. Everything
# else (service settings and request bodies, training, evaluation, the model's fallbacks) derives from these.
SolverMethod = Literal["dopri5", "rk4", "midpoint", "euler"]
SOLVER_METHODS: tuple[SolverMethod, ...] = get_args(SolverMethod)
FIXED_STEP_METHODS: tuple[SolverMethod, ...] = ("rk4", "midpoint", "euler")
# Served bounds: wider than any calibrated solver, narrow enough that one request's solve stays bounded (library
# callers may go beyond them, e.g. train/calibrate.py's reference solve).
MAX_STEPS = 1000
MIN_TOLERANCE, MAX_TOLERANCE = 1e-8, 1e-1
DEFAULT_MAX_NFE = 10_000


@dataclass(frozen=True)
class SolverConfig:
    """How an ODE is integrated: adaptive dopri5 with tolerances, or a fixed-step method with a step count."""

    method: SolverMethod = "dopri5"
    steps: int = 16
    rtol: float = 1e-5
    atol: float = 1e-5
    max_nfe: int = DEFAULT_MAX_NFE

    def __post_init__(self) -> None:
        if self.method not in SOLVER_METHODS:
            raise ValueError(f"unknown solver method {self.method!r}")
        if self.steps < 1 or self.max_nfe < 1 or self.rtol <= 0 or self.atol <= 0:
            raise ValueError(f"solver settings out of range: {self!r}")

    def __str__(self) -> str:
        """What matters of a solver in a table or card: its tolerance when adaptive, else its step count."""
        return f"dopri5 {self.rtol:g}" if self.method == "dopri5" else f"{self.method} x {self.steps}"


# The documented default: adaptive dopri5 at rtol = atol = 1e-5, scores within 0.01 nats of a 1e-7 solve. It is
# what evaluations and LATENT_CNF_EXACT_SCORES use, and a model's solver for sampling and scoring until
# train/calibrate.py writes cheaper calibrated ones to its serving.json (every shipped model has them).
DEFAULT_SOLVER = SolverConfig()


_Config = TypeVar("_Config", bound="DataclassInstance")


def from_json_dict(cls: type[_Config], data: dict[str, Any]) -> _Config:
    """Rebuild a config dataclass from JSON: lists back to tuples, nested solver dicts to SolverConfig."""
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(data) - known:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    values |= {k: SolverConfig(**v) for k, v in values.items() if isinstance(v, dict)}
    return cls(**values)


@dataclass(frozen=True)
class ModelConfig:
    """Everything building a LatentCNF needs (its config.json); how it samples and scores by default is
    serving data (serving.json), so a calibration never changes what the weights are."""

    image_size: int = 28
    latent_dim: int = 8
    encoder_hidden: tuple[int, ...] = (32, 32)
    decoder_hidden: tuple[int, ...] = (32, 32)
    encoder_activation: Literal["relu", "tanh"] = "tanh"
    decoder_activation: Literal["relu", "tanh"] = "relu"
    variational: bool = True
    dropout: float = 0.1
    encoder_uses_labels: bool = False
    encoder_label_dim: int = 4
    num_classes: int = 10
    log_std_min: float = -7.0
    log_std_max: float = 2.0
    ae_proposal_std: float = 0.05
    prior: Literal["cnf", "gaussian"] = "cnf"
    cnf_width: int = 32
    cnf_hidden: int = 32
    prior_uses_labels: bool = False
    cnf_label_dim: int = 8
    base_variance: float = 0.1
    t0: float = 0.0
    t1: float = 10.0

    @property
    def data_dim(self) -> int:
        return self.image_size * self.image_size

    @property
    def uses_labels(self) -> bool:
        """True when scoring an unlabelled image has to marginalise over labels."""
        return self.encoder_uses_labels or self.prior_uses_labels

    @property
    def score_classes(self) -> int:
        """Labels a score marginalises over: each costs K latent rows through the flow per image."""
        return self.num_classes if self.uses_labels else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_json_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def hash(self) -> str:
        """Short stable digest, used to name evaluations and detect config drift."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
