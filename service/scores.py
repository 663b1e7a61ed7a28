"""What the service says about a scored image: every field of a /score result and of a v2 score output, made from
the model's Score in one place, so the two APIs cannot drift apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from latent_cnf import ood
from latent_cnf.model import Score

from .served import ServedModel


@dataclass(frozen=True)
class ScoreRow:
    """One image's result; the field names are those of the JSON answer (service/schemas.py, ImageScore)."""

    log_likelihood_nats: float
    bits_per_dim: float
    elbo_nats: float
    latent_log_density: float
    kl_nats: float
    reconstruction_nats: float
    percentile: float | None
    complexity_corrected_nats: float | None
    in_distribution: bool | None
    ood_reason: str | None
    predicted_label: int | None
    label_probabilities: list[float] | None


def percentiles(reference: np.ndarray | None, log_likelihood: torch.Tensor) -> list[float | None]:
    """Where each score falls among the model's reference scores (serving.json's quantiles 0..100); None without."""
    if reference is None:
        return [None] * len(log_likelihood)
    levels = np.linspace(0, 100, len(reference))
    found: list[float | None] = np.interp(log_likelihood.numpy(), reference, levels).tolist()
    return found


def score_rows(served: ServedModel, images: torch.Tensor, score: Score, verdict: bool = True) -> list[ScoreRow]:
    """The rows of binary images (m, 28, 28) that `score` (on the CPU) scored. The verdict (left out, as null,
    for callers that do not return it) is latent_cnf/ood.py's, under the model's serving.json (null without
    calibrated bounds; an image without ink is never in distribution); with it, run this off the event loop."""
    assessments = ood.assess(served.serving, images, score) if verdict else None
    # With the uniform class prior, p(y | x) = p(x | y) / sum_y' p(x | y'): a softmax of the per-label bounds,
    # exact up to the bounds' gaps (equal gaps cancel).
    posterior = score.label_log_likelihood.softmax(1) if score.label_log_likelihood is not None else None
    rows = []
    for i, percentile in enumerate(percentiles(served.reference, score.log_likelihood)):
        assessment = assessments[i] if assessments is not None else None
        log_likelihood = float(score.log_likelihood[i])
        rows.append(
            ScoreRow(
                log_likelihood_nats=log_likelihood,
                bits_per_dim=-log_likelihood / (images[i].numel() * math.log(2)),
                elbo_nats=float(score.elbo[i]),
                latent_log_density=float(score.latent_log_density[i]),
                kl_nats=float(score.kl[i]),
                reconstruction_nats=float(score.reconstruction[i]),
                percentile=percentile,
                complexity_corrected_nats=assessment.signals["complexity_corrected_nats"] if assessment else None,
                in_distribution=assessment.in_distribution if assessment else None,
                ood_reason=assessment.reason if assessment else None,
                predicted_label=int(score.predicted_label[i]) if score.predicted_label is not None else None,
                label_probabilities=posterior[i].tolist() if posterior is not None else None,
            )
        )
    return rows
