"""Out-of-distribution detection: AUROC of a score, and the complexity-corrected score of Serrà et al. (2020).

Sign convention throughout: a score is higher for inputs that look more in-distribution. The raw score is
the log-likelihood log p(x) in nats; the corrected score S(x) = log p(x) + L(x) ln 2 and the PNG code length
L(x) live in latent_cnf/ood.py, since the service computes them too.
(Serrà et al. write the OOD statistic as NLL_bits(x) - L_bits(x), i.e. -S in bits: higher = more OOD.)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from latent_cnf.ood import complexity_bits, complexity_corrected

__all__ = ["auroc", "complexity_bits", "complexity_corrected"]  # the latter two re-exported for train.evaluate


def auroc(in_scores: torch.Tensor | np.ndarray, out_scores: torch.Tensor | np.ndarray) -> float:
    """P(score of a random inlier > score of a random outlier), ties counting 1/2 (Mann-Whitney U / n_in n_out).

    1 = scores separate the sets perfectly, 0.5 = chance, 0 = the score ranks outliers above every inlier.
    """
    a, b = np.asarray(in_scores, dtype=np.float64).ravel(), np.asarray(out_scores, dtype=np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("auroc needs at least one inlier and one outlier score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("auroc needs finite scores")
    ranks = rankdata(np.concatenate([a, b]))  # average ranks: tied pairs count 1/2
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(b)))
