"""Fréchet distance between two feature sets, each summarised by a Gaussian (mean, covariance).

    FID = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

The trace of the matrix square root is computed from eigenvalues of the symmetric PSD matrix
S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b: everything stays real, and near-singular
covariances (rank-deficient ReLU features, fewer samples than dimensions) need no epsilon regularisation.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

ArrayLike = np.ndarray | torch.Tensor


def statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (n, d) features, in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need (n >= 2, d) features, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to 0."""
    values, vectors = linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    root_a = _psd_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a
    trace_sqrt = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
    return max(float(distance), 0.0)


def fid(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """FID between two (n, d) feature sets (e.g. judge features of samples and of training images)."""
    return frechet_distance(*statistics(features_a), *statistics(features_b))
