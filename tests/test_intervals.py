"""train/metrics/intervals.py: the 95 % intervals behind every reported number."""

from __future__ import annotations

import numpy as np
import pytest

from train.metrics.intervals import bootstrap_interval, t_interval
from train.metrics.ood import auroc


def test_t_interval_of_known_data() -> None:
    """1, 2, 3: mean 2, standard error 1/sqrt(3), t(0.975, 2 df) = 4.302653."""
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert high - mean == pytest.approx(mean - low) == pytest.approx(4.302652729749464 / 3**0.5)
    assert t_interval([4.0, 4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError, match="at least two"):
        t_interval([1.0])


def test_bootstrap_is_deterministic_for_a_seed_and_brackets_the_statistic() -> None:
    inliers, outliers = np.arange(40.0), np.arange(40.0) - 15
    first = bootstrap_interval(auroc, (inliers, outliers), resamples=200, seed=3)
    assert first == bootstrap_interval(auroc, (inliers, outliers), resamples=200, seed=3)
    assert first != bootstrap_interval(auroc, (inliers, outliers), resamples=200, seed=4)
    assert first[0] < auroc(inliers, outliers) < first[1]
    assert bootstrap_interval(np.mean, (np.full(10, 7.0),), resamples=50) == (7.0, 7.0)  # no spread, no width
