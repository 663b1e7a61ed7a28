"""Improved precision and recall (Kynkäänniemi et al. 2019) from k-nearest-neighbour manifold estimates.

Each point of a set owns a ball reaching its k-th nearest neighbour in the same set; the union of balls
estimates that set's manifold. Precision is the share of generated points inside the real manifold (are
samples realistic?), recall the share of real points inside the generated manifold (is the data covered?).
"""

from __future__ import annotations

import torch


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances in float64 (the matmul form; float64 keeps self-distances ~0)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)).clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} needs at least k + 1 points, got {len(features)}")
    x = features.double()
    radii = [
        _squared_distances(x[i : i + batch_size], x).kthvalue(k + 1, dim=1).values  # +1: the point itself
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(radii)


def coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of `queries` inside at least one ball (centre in `support`, squared radius in `radii`)."""
    q, s = queries.double(), support.double()
    inside = [(_squared_distances(q[i : i + batch_size], s) <= radii).any(1) for i in range(0, len(q), batch_size)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch_size: int = 1000) -> tuple[float, float]:
    """(precision, recall) of `fake` features against `real` features, both (n, d); batches bound memory."""
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    return coverage(fake, real, real_radii, batch_size), coverage(real, fake, fake_radii, batch_size)
