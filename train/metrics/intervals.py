"""95 % intervals of reported numbers: a t-interval of a mean over seeds or images, a seeded bootstrap where
the quantity is not a mean (an AUROC over images)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the mean's 95 % Student-t interval. Fewer than two values raise: one value says
    nothing about the spread."""
    sample = np.asarray(values, dtype=np.float64)
    if len(sample) < 2:
        raise ValueError("a t-interval needs at least two values")
    mean = float(sample.mean())
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(sample) - 1) * sample.std(ddof=1) / np.sqrt(len(sample)))
    return mean, mean - half, mean + half


def bootstrap_interval(
    statistic: Callable[..., float], samples: Sequence[np.ndarray], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95 % interval of `statistic(*samples)`, each sample resampled with replacement on its own
    (inliers and outliers separately for an AUROC); the same seed gives the same interval."""
    rng = np.random.default_rng(seed)
    values = [
        statistic(*(sample[rng.integers(len(sample), size=len(sample))] for sample in samples))
        for _ in range(resamples)
    ]
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)
