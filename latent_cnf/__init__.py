"""latent-cnf: a VAE whose latent prior is a continuous normalizing flow with an exact log-density.

`LatentCNF.from_pretrained(name)` (or its short form `load(name)`) gives a shipped model or a model folder."""

from .cnf import SolverError
from .config import ModelConfig, SolverConfig
from .model import LatentCNF, Samples, Score, Trajectory
from .model_folder import ModelFolderError, available, load, save_pretrained

__all__ = [
    "LatentCNF",
    "ModelConfig",
    "ModelFolderError",
    "Samples",
    "Score",
    "SolverConfig",
    "SolverError",
    "Trajectory",
    "available",
    "load",
    "save_pretrained",
]
