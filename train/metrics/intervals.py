"""95 % intervals of reported numbers: a t-interval of a mean over seeds, runs or images, a seeded bootstrap where
the quantity is not a mean (an AUROC over images), and the Interval the figures and the *-seeds.json files hold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Interval:
    """A mean over runs (or seeds) and its 95 % Student-t interval; low == high == mean for a single run."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        if len(values) < 2:
            mean = float(np.mean(values))
            return cls(mean, mean, mean, len(values))
        return cls(*t_interval(values), len(values))

    def record(self, values: Sequence[float]) -> dict[str, Any]:
        """The JSON of docs/results/*-seeds.json: the values, their mean and interval."""
        return {"values": list(values), "mean": self.mean, "interval_95": [self.low, self.high]}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Interval:
        """The Interval that `record` wrote."""
        low, high = record["interval_95"]
        return cls(record["mean"], low, high, len(record["values"]))
