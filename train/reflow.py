"""Reflow (Liu et al. 2022, "Flow straight and fast"): the training pairs of a rectified flow.

A flow trained by flow matching follows the average of the paths it was shown, which bend where they cross;
its ODE still defines a coupling of base draws z0 with latents z1 = flow(z0) whose paths never cross. Flow
matching again on that coupling's straight lines (train/flow_matching.py's loss, with the pairs as given and
no pairing of its own) gives a flow that is straighter, so fewer solver steps follow it.
"""

from __future__ import annotations

import torch

from latent_cnf.cnf import LatentFlow
from latent_cnf.config import SolverConfig


@torch.no_grad()
def coupled_pairs(
    flow: LatentFlow, labels: torch.Tensor | None, n: int, solver: SolverConfig, generator: torch.Generator
) -> torch.Tensor:
    """n base draws and where `flow` takes them (with row i's label when it has labels), as rows [z0, z1]."""
    z0 = flow.base_sample(n, generator)
    z1 = flow.transform(z0, labels, solver).path[-1]
    return torch.cat([z0, z1], dim=1)
