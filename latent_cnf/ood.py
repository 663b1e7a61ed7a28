"""Is an image a digit at all? The complexity-corrected score and the calibrated out-of-distribution rule.

Likelihood models favour simple inputs (a blank image is likelier than any digit), so Serrà et al. (2020)
compare the model with a generic lossless compressor, whose code length L(x) bits defines a universal model
p0(x) = 2^-L(x). The likelihood ratio

    S(x) = log p(x) - log p0(x) = log p(x) + L(x) ln 2        (nats; = -NLL_bits(x) + L_bits(x) in bits)

is the complexity-corrected score: high when the model explains x better than the compressor does.

S alone accepts many shapes and glyphs, so the rule tests several signals of one scored binary image, each
against a one-sided bound calibrated on held-out in-distribution images (train/ood_calibrate.py stores
them in the model folder's serving.json under "ood_reference"). Each bound rejects a share alpha / m of those images,
so by the union bound at most alpha of them are rejected in all. An image without ink is never accepted.
The likelihood signals still pass many circles, strokes and scribbles, so one more signal is the digit logit
of an outlier-exposure judge (latent_cnf/outlier.py); a signal missing at scoring time (the judge's file
absent, or other weights than the bounds were calibrated with) is skipped, which only makes the rule laxer.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from . import outlier

if TYPE_CHECKING:
    from .model import Score

NO_INK = "no_ink"
SIGNALS = ("complexity_corrected_nats", "reconstruction_nats", "latent_log_density", "ink_pixels", "digit_logit")


def png_bits(image: np.ndarray) -> int:
    """Length in bits of one (H, W) image as a maximally compressed PNG.

    Binary images (values in {0, 1}) are written 1 bit per pixel, so the code is over the same space as a
    Bernoulli likelihood; other images are written as 8-bit grey levels (floats in [0, 1] are rounded).
    The PNG container adds a constant overhead, which shifts every score equally.
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


def signals(
    images: torch.Tensor,
    log_likelihood: torch.Tensor,
    reconstruction: torch.Tensor,
    latent: torch.Tensor,
    digit_logit: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The tested signals of scored binary images (n, 28, 28): score parts, S(x), the count of ink pixels and,
    when the outlier judge is given, its digit logit."""
    out = {
        "complexity_corrected_nats": complexity_corrected(log_likelihood, complexity_bits(images)),
        "reconstruction_nats": reconstruction.double().cpu(),
        "latent_log_density": latent.double().cpu(),
        "ink_pixels": images.reshape(len(images), -1).sum(1).double().cpu(),
    }
    if digit_logit is not None:
        out["digit_logit"] = digit_logit.double().cpu()
    return out


def bounds(calibration: dict[str, torch.Tensor], false_rejection: float) -> dict[str, dict[str, float]]:
    """Per signal present, a lower bound (and for ink an upper bound too) each rejecting false_rejection / m of
    the in-distribution calibration images, m being the number of bounds: at most false_rejection in all."""
    names = [name for name in SIGNALS if name in calibration]
    share = false_rejection / (len(names) + 1)  # ink is bounded on both sides
    out = {}
    for name in names:
        values = calibration[name].double()
        out[name] = {"min": float(torch.quantile(values, share))}
        if name == "ink_pixels":
            out[name]["max"] = float(torch.quantile(values, 1 - share))
    return out


def verdict(values: dict[str, float], limits: dict[str, dict[str, float]] | None) -> tuple[bool | None, str | None]:
    """(in_distribution, why not) of one image: no ink is always out; without calibrated bounds, unknown.
    A bound whose signal is missing from `values` is skipped."""
    if values["ink_pixels"] == 0:
        return False, NO_INK
    if limits is None:
        return None, None
    for name, limit in limits.items():
        if name not in values:
            continue
        if "min" in limit and values[name] < limit["min"]:
            return False, f"{name} below {limit['min']:.4g}"
        if "max" in limit and values[name] > limit["max"]:
            return False, f"{name} above {limit['max']:.4g}"
    return True, None


def accepted(values: dict[str, torch.Tensor], limits: dict[str, dict[str, float]]) -> torch.Tensor:
    """The rule of `verdict` on many images at once (boolean tensor)."""
    keep = values["ink_pixels"] > 0
    for name, limit in limits.items():
        if name not in values:
            continue
        keep &= values[name] >= limit.get("min", -math.inf)
        keep &= values[name] <= limit.get("max", math.inf)
    return keep


def serving_bounds(serving: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """The calibrated bounds in a model's serving data, or None for one calibrated before this rule."""
    bounds: dict[str, dict[str, float]] | None = serving.get("ood_reference", {}).get("bounds")
    return bounds


def serving_outlier_judge(serving: dict[str, Any]) -> outlier.OutlierJudge | None:
    """The shipped outlier judge when the serving data's bounds were calibrated with these very weights."""
    loaded = outlier.shipped()
    calibrated = serving.get("ood_reference", {}).get("outlier_judge") or {}
    return loaded.judge if loaded is not None and calibrated.get("sha256") == loaded.sha256 else None


@dataclass(frozen=True)
class Assessment:
    """One scored image's verdict (None: no calibrated bounds), why it is out, and the signals it was judged on."""

    in_distribution: bool | None
    reason: str | None
    signals: dict[str, float]


def assess(serving: dict[str, Any], images: torch.Tensor, score: Score) -> list[Assessment]:
    """The verdict on each of the binary images (n, 28, 28) that `score` scored, under the bounds and outlier
    judge of a model's serving data: the one call a scorer makes (slow enough, PNG code lengths and a CNN, to
    be run off an event loop)."""
    judge = serving_outlier_judge(serving)
    values = signals(
        images,
        score.log_likelihood,
        score.reconstruction,
        score.latent_log_density,
        outlier.digit_logit(judge, images) if judge is not None else None,
    )
    limits = serving_bounds(serving)
    out = []
    for i in range(len(images)):
        own = {name: float(value[i]) for name, value in values.items()}
        out.append(Assessment(*verdict(own, limits), own))
    return out
