"""latent-cnf: a VAE whose latent prior is a continuous normalizing flow with an exact log-density."""

from .checkpoints import CheckpointError, available, load
from .cnf import SolverError
from .config import PRESETS, ModelConfig, SolverConfig, TrainConfig
from .model import LatentCNF, Samples, Score, Trajectory

__all__ = [
    "PRESETS",
    "CheckpointError",
    "LatentCNF",
    "ModelConfig",
    "Samples",
    "Score",
    "SolverConfig",
    "SolverError",
    "TrainConfig",
    "Trajectory",
    "available",
    "load",
]
