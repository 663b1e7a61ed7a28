"""Log-likelihood pieces: Bernoulli decoder terms, Gaussian posterior terms, the IWAE bound."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_likelihood(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """log p(x | z) summed over pixels: x * l - softplus(l), stable for any logit and any target in [0, 1]
    (grey targets give the cross-entropy). Targets broadcast, so K proposals can share one image row. With a
    0/1 `mask`, only the pixels it marks count (the observed ones of a completion)."""
    terms = targets * logits - F.softplus(logits)
    return (terms if mask is None else terms * mask).sum(-1)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_std))^2) summed over the last dimension."""
    return -0.5 * (((z - mean) * torch.exp(-log_std)) ** 2 + 2 * log_std + LOG_2PI).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """-E_q[log q]: the analytic part of the KL to any prior."""
    return (log_std + 0.5 * (LOG_2PI + 1)).sum(-1)


def kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean**2 + torch.exp(2 * log_std) - 2 * log_std - 1).sum(-1)


def iwae_bound(log_weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log (1/K sum_k w_k): a lower bound on log p(x) that tightens as K grows."""
    return torch.logsumexp(log_weights, dim=dim) - math.log(log_weights.shape[dim])
