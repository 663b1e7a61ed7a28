"""Completing a partly observed image: the posterior over latents (and labels) given the observed pixels.

The target is p(y) p(z | y) p(x_o | z): the prior's exact CNF density times the decoder's Bernoulli
likelihood of the observed pixels only (y uniform over the labels; a model whose prior ignores labels has
p(z | y) = p(z)). It is sampled by self-normalized importance sampling with K proposals per label from a
mixture, and every proposal is weighted against the whole mixture's density (the balance heuristic of
multiple importance sampling, Veach and Guibas 1995):
- ENCODER_SHARE of them from the encoder, run not on the masked image (it never saw half digits: the
  weights of such proposals collapse onto one) but on the image completed by IMPUTATION_STEPS rounds of
  pseudo-Gibbs imputation (Rezende et al. 2014): encode, decode the mean, put its pixel means where nothing
  was observed, encode again; its std widened by PROPOSAL_STD_SCALE, so the proposal's tails cover more of
  the posterior;
- the rest from the prior itself, which bounds every weight by K / (prior draws) x p(x_o | z): a confident
  but wrong encoder cannot make a runaway weight.
The effective sample size 1 / sum w^2 says how many independent posterior draws the weights are worth
(docs/results.md measures it against the prior alone as proposal). Proposal noise comes from a per-image
seed: an image's completions do not depend on what else is in its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .config import SolverConfig
from .likelihood import bernoulli_log_likelihood, gaussian_log_density
from .model import LatentCNF

MaskName = Literal["top", "bottom", "left", "right"]  # the named masks: the half of the image that is observed
MASKS: tuple[MaskName, ...] = get_args(MaskName)
ENCODER_SHARE = 0.75  # of each label's proposals, drawn from the encoder; the rest from the prior
IMPUTATION_STEPS = 5  # pseudo-Gibbs rounds before the encoder proposes
PROPOSAL_STD_SCALE = 1.25


def named_mask(name: str, size: int = 28) -> torch.Tensor:
    """The observed pixels (True) of a named half: "top" observes the upper size/2 rows, and so on."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    half = size // 2
    regions = {"top": (slice(0, half), slice(None)), "bottom": (slice(half, None), slice(None))}
    regions |= {"left": (slice(None), slice(0, half)), "right": (slice(None), slice(half, None))}
    if name not in regions:
        raise ValueError(f"no mask named {name!r}: one of {', '.join(MASKS)}")
    mask[regions[name]] = True
    return mask


def check_mask(mask: torch.Tensor) -> None:
    """A mask must observe something and leave something to complete."""
    if not mask.any():
        raise ValueError("the mask observes no pixel: nothing to condition on")
    if mask.all():
        raise ValueError("the mask observes every pixel: nothing to complete")


@dataclass
class Completion:
    """One image's completions, the k heaviest of its importance samples."""

    latents: torch.Tensor  # (k, d)
    images: torch.Tensor  # (k, 1, H, W): the observed pixels as given, the others the decoder's Bernoulli means
    weights: torch.Tensor  # (k,) normalized over these k: they sum to 1
    labels: torch.Tensor | None  # (k,) the label each was drawn under, for a label-conditioned prior
    mass: float  # the share of the posterior estimate these k carry among all the proposals
    effective_sample_size: float  # 1 / sum w^2 over all the proposals (between 1 and their number)
    label_probabilities: torch.Tensor | None  # (labels,) p(y | observed pixels), for a label-conditioned prior
    importance_samples: int  # proposals per label
    nfe: int


def prior_draws(importance_samples: int, encoder_share: float = ENCODER_SHARE) -> int:
    """How many of a label's proposals come from the prior (the rest from the encoder)."""
    return importance_samples - round(encoder_share * importance_samples)


def _draws(
    model: LatentCNF, seeds: torch.Tensor, classes: int, encoder_draws: int, from_prior: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's encoder noise (classes, encoder_draws, d) and prior base noise (classes * from_prior, d),
    from its own seed."""
    d, noise, base = model.config.latent_dim, [], []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn(classes, encoder_draws, d, generator=generator))
        base.append(model.prior.base_sample(classes * from_prior, generator))
    return torch.cat(noise).to(model.device), torch.cat(base)


def _imputed_encoding(
    model: LatentCNF, x: torch.Tensor, observed: torch.Tensor, classes: int, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's (mean, log_std) per image and label (rows image-major) after pseudo-Gibbs imputation of
    the unobserved pixels from the encoder mean; deterministic. The std is widened by PROPOSAL_STD_SCALE."""
    x_rows, observed_rows = x.repeat_interleave(classes, 0), observed.repeat_interleave(classes, 0)
    encoder_labels = labels if model.config.encoder_uses_labels else None
    filled = x_rows * observed_rows
    mean, log_std = model.encoder(filled, encoder_labels)
    for _ in range(IMPUTATION_STEPS):
        filled = observed_rows * x_rows + (1 - observed_rows) * torch.sigmoid(model.decode(mean))
        mean, log_std = model.encoder(filled, encoder_labels)
    return mean, log_std + math.log(PROPOSAL_STD_SCALE)


@torch.inference_mode()
def complete(
    model: LatentCNF,
    images: torch.Tensor,
    masks: torch.Tensor,
    k: int | Sequence[int],
    importance_samples: int,
    seeds: torch.Tensor,
    solver: SolverConfig | None = None,
    encoder_share: float = ENCODER_SHARE,
) -> list[Completion]:
    """The k heaviest completions of each binary image (m, H, W) given its mask of observed pixels (m, H, W),
    from `importance_samples` proposals per label drawn with the image's seed; `k` is one count for all
    images or one per image. `encoder_share` 0 proposes from the prior alone (plain SNIS)."""
    n, d, size = len(images), model.config.latent_dim, model.config.image_size
    counts = [k] * n if isinstance(k, int) else list(k)
    classes, total = model.config.score_classes, model.config.score_classes * importance_samples
    if importance_samples < 1 or not all(1 <= count <= total for count in counts):
        raise ValueError(f"need 1 to {total} completions of {importance_samples} proposals per label")
    for mask in masks:
        check_mask(mask)
    solver = solver or model.score_solver
    x = images.reshape(n, -1).to(model.device, torch.float32)
    observed = masks.reshape(n, -1).to(model.device, torch.float32)
    labels = torch.arange(classes, device=x.device).repeat(n) if classes > 1 else None
    mean, log_std = _imputed_encoding(model, x, observed, classes, labels)
    from_prior_count = prior_draws(importance_samples, encoder_share)
    encoder_draws = importance_samples - from_prior_count
    noise, base = _draws(model, seeds, classes, encoder_draws, from_prior_count)
    prior_labels = labels if model.prior.uses_labels else None

    def repeat(labels: torch.Tensor | None, times: int) -> torch.Tensor | None:
        return labels.repeat_interleave(times) if labels is not None else None

    from_encoder = mean.unsqueeze(1) + torch.exp(log_std).unsqueeze(1) * noise
    pushed = model.prior.transform(base, repeat(prior_labels, from_prior_count), solver) if from_prior_count else None
    from_prior = pushed.path[-1] if pushed is not None else base
    z = torch.cat([from_encoder, from_prior.reshape(n * classes, from_prior_count, d)], 1).reshape(-1, d)
    density = model.prior.log_prob(z, repeat(prior_labels, importance_samples), solver)
    assert density.log_prob is not None  # a prior's log_prob always sets it
    log_q_encoder = gaussian_log_density(
        z, mean.repeat_interleave(importance_samples, 0), log_std.repeat_interleave(importance_samples, 0)
    )
    shares = torch.tensor([encoder_draws, from_prior_count], dtype=z.dtype, device=z.device) / importance_samples
    log_q = torch.logsumexp(torch.stack([log_q_encoder, density.log_prob]) + shares.log()[:, None], 0)
    logits = model.decode(z)
    rows = torch.arange(n, device=x.device).repeat_interleave(total)
    log_observed = bernoulli_log_likelihood(logits, x[rows], observed[rows])
    weights = torch.softmax((density.log_prob + log_observed - log_q).reshape(n, total), 1)
    pixels = observed[rows] * x[rows] + (1 - observed[rows]) * torch.sigmoid(logits)
    out = []
    for i, count in enumerate(counts):
        top = weights[i].topk(count)
        chosen = i * total + top.indices
        out.append(
            Completion(
                latents=z[chosen].cpu(),
                images=pixels[chosen].reshape(count, 1, size, size).cpu(),
                weights=(top.values / top.values.sum()).cpu(),
                labels=(top.indices // importance_samples).cpu() if model.prior.uses_labels else None,
                mass=float(top.values.sum()),
                effective_sample_size=float(1 / weights[i].pow(2).sum()),
                label_probabilities=(weights[i].reshape(classes, -1).sum(1).cpu() if model.prior.uses_labels else None),
                importance_samples=importance_samples,
                nfe=density.nfe + (pushed.nfe if pushed is not None else 0),
            )
        )
    return out


@torch.inference_mode()
def log_unobserved_per_pixel(
    model: LatentCNF, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean log-likelihood per unobserved pixel of the true image under the decoder at each latent: how well a
    completion (or any latent) predicts what was hidden."""
    hidden = (~mask.reshape(-1)).float().to(model.device)
    logits = model.decode(latents.to(model.device))
    return bernoulli_log_likelihood(logits, image.reshape(-1).float().to(model.device), hidden) / hidden.sum()
