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


def label_latent_elbo(log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ELBO on log p(x) from the log weights log p(x, z | y) / q(z | x, y), shaped (..., C labels, k draws), of
    a model with a uniform label prior, and the label posterior log r(y | x) that it uses.

    With the label as a latent, sum_y r(y) [ELBO_y - log C - log r(y)] <= log p(x) for any r; r = softmax ELBO_y
    is the tightest and gives log 1/C sum_y exp ELBO_y (ELBO_y: the mean log weight of label y). It equals
    log p(x) when each q(z | x, y) is the exact posterior; C = 1 is the plain ELBO.
    """
    label_elbo = log_weights.mean(-1)
    return iwae_bound(label_elbo, dim=-1), torch.log_softmax(label_elbo, -1)
