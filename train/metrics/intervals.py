"""Means over runs or seeds with their 95 % Student-t intervals: the error bars of docs/ and the intervals of
docs/results/*-seeds.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A mean over runs (or seeds) and its 95 % Student-t interval; low == high == mean for a single run."""

    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        from scipy import stats

        sample = np.asarray(values, dtype=float)
        mean = float(sample.mean())
        if len(sample) < 2:
            return cls(mean, mean, mean, len(sample))
        half = float(stats.t.ppf(0.975, len(sample) - 1) * sample.std(ddof=1) / np.sqrt(len(sample)))
        return cls(mean, mean - half, mean + half, len(sample))

    def record(self, values: Sequence[float]) -> dict:
        """The JSON of docs/results/*-seeds.json: the values, their mean and interval."""
        return {"values": list(values), "mean": self.mean, "interval_95": [self.low, self.high]}

    @classmethod
    def from_record(cls, record: dict) -> Interval:
        """The Interval that `record` wrote."""
        low, high = record["interval_95"]
        return cls(record["mean"], low, high, len(record["values"]))
