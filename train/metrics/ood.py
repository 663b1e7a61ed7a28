"""Out-of-distribution detection: AUROC of a score, and the input-complexity correction of Serrà et al. (2020).

Sign convention throughout: a score is higher for inputs that look more in-distribution. The raw score is
the log-likelihood log p(x) in nats. Likelihood models favour simple inputs (a blank image is likelier than
any digit), so Serrà et al. compare the model with a generic lossless compressor, whose code length L(x) bits
defines a universal model p0(x) = 2^-L(x). The likelihood ratio

    S(x) = log p(x) - log p0(x) = log p(x) + L(x) ln 2        (nats; = -NLL_bits(x) + L_bits(x) in bits)

is the complexity-corrected score: high when the model explains x better than the compressor does.
(Serrà et al. write the OOD statistic as NLL_bits(x) - L_bits(x), i.e. -S in bits: higher = more OOD.)
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from scipy.stats import rankdata


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


def png_bits(image: np.ndarray) -> int:
    """Length in bits of one (H, W) image as a maximally compressed PNG.

    Binary images (values in {0, 1}) are written 1 bit per pixel, so the code is over the same space as a
    Bernoulli likelihood; other images are written as 8-bit grey levels (floats in [0, 1] are rounded).
    The PNG container adds a constant overhead, which shifts every score equally and leaves AUROC unchanged.
    """
    if np.isin(image, (0, 1)).all():
        picture = Image.fromarray(image.astype(bool))
    else:
        picture = Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return 8 * len(buffer.getvalue())


def complexity_bits(images: torch.Tensor) -> torch.Tensor:
    """PNG code length L(x) in bits of each image; images are (n, 784), (n, 28, 28) or (n, 1, 28, 28) in [0, 1]."""
    array = images.detach().cpu().double().numpy()
    side = math.isqrt(array[0].size)
    return torch.tensor([png_bits(a.reshape(side, side)) for a in array], dtype=torch.float64)


def complexity_corrected(log_likelihood: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """S(x) = log p(x) + L(x) ln 2 in nats: higher = more in-distribution (see the module docstring)."""
    return log_likelihood.double().cpu() + bits.double().cpu() * math.log(2)
