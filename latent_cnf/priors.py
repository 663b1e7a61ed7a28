"""Latent priors with one interface: the CNF (see cnf.py) and the N(0, I) baseline."""

from __future__ import annotations

import math

import torch
from torch import nn

from .cnf import FlowResult, LatentFlow
from .config import ModelConfig, SolverConfig


class GaussianPrior(nn.Module):
    """N(0, I): the baseline VAE prior, with the CNF's interface and zero function evaluations."""

    uses_labels = False
    base_std: torch.Tensor  # a buffer

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.latent_dim = config.latent_dim
        self.register_buffer("base_std", torch.tensor(1.0))

    def log_prob(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        solver: SolverConfig | None = None,
        kinetic: bool = False,
    ) -> FlowResult:
        log_p = -0.5 * (z * z + math.log(2 * math.pi)).sum(-1)
        path = z.unsqueeze(0).expand(2, *z.shape)  # the identity map: each latent is its own base point
        return FlowResult(path=path, log_prob=log_p, kinetic=z.new_zeros(len(z)) if kinetic else None, nfe=0)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator).to(self.base_std.device)

    def transform(
        self, z0: torch.Tensor, labels: torch.Tensor | None = None, solver: SolverConfig | None = None, steps: int = 2
    ) -> FlowResult:
        return FlowResult(path=z0.unsqueeze(0).expand(steps, *z0.shape), log_prob=None, kinetic=None, nfe=0)


def build_prior(config: ModelConfig) -> LatentFlow | GaussianPrior:
    priors: dict[str, type[LatentFlow | GaussianPrior]] = {"cnf": LatentFlow, "gaussian": GaussianPrior}
    return priors[config.prior](config)
