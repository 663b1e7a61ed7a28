"""One loss per training stage of the original, plus the adversarial add-on of the final stage.

The training solver comes apart from the TrainConfig: the trainer adapts its step count during a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from latent_cnf.config import SolverConfig
from latent_cnf.likelihood import bernoulli_log_likelihood, gaussian_entropy, kl_to_standard_normal
from latent_cnf.model import LatentCNF
from train.discriminator import PatchDiscriminator
from train.presets import TrainConfig

from .flow_matching import flow_matching_loss


@dataclass
class Objective:
    loss: torch.Tensor
    terms: dict[str, float]
    logits: torch.Tensor | None  # reconstructions, for the discriminator; None when nothing is decoded
    nfe: int


def _encode(model: LatentCNF, x: torch.Tensor, labels: torch.Tensor, sample: bool):
    mean, log_std = model.encode(x, labels if model.config.encoder_uses_labels else None)
    z = mean + torch.exp(log_std) * torch.randn_like(mean) if sample else mean
    recon = -bernoulli_log_likelihood(model.decode(z), x).mean()
    return mean, log_std, z, recon


def _prior(model: LatentCNF, z: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig):
    prior_labels = labels if model.prior.uses_labels else None
    return model.prior.log_prob(z, prior_labels, solver, kinetic=cfg.kinetic_weight > 0)


def _kinetic(cfg: TrainConfig, prior, terms: dict[str, float]) -> torch.Tensor:
    """RNODE's kinetic-energy penalty (weighted), logging the energy itself when it is computed."""
    if prior.kinetic is None:
        return 0.0
    energy = prior.kinetic.mean()
    terms["kinetic"] = energy.item()
    return cfg.kinetic_weight * energy


def ae_cnf(
    model: LatentCNF, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig, step: int
) -> Objective:
    """Stage 1: autoencoder reconstruction plus the CNF's NLL of the (deterministic) latents."""
    _, _, z, recon = _encode(model, x, labels, sample=False)
    prior = _prior(model, z, labels, cfg, solver)
    cnf_nll = -prior.log_prob.mean()
    terms = {"recon": recon.item(), "cnf_nll": cnf_nll.item()}
    loss = cfg.recon_weight * recon + cfg.cnf_weight * cnf_nll + _kinetic(cfg, prior, terms)
    return Objective(loss, terms, model.decode(z), prior.nfe)


def vae_cnf(
    model: LatentCNF, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig, step: int
) -> Objective:
    """Stage 2: VAE with KL to N(0, I); the CNF separately fits the sampled latents."""
    mean, log_std, z, recon = _encode(model, x, labels, sample=True)
    kl = kl_to_standard_normal(mean, log_std).mean()
    prior = _prior(model, z, labels, cfg, solver)
    cnf_nll = -prior.log_prob.mean()
    terms = {"recon": recon.item(), "kl": kl.item(), "cnf_nll": cnf_nll.item()}
    loss = cfg.recon_weight * recon + cfg.kl_weight * kl + cfg.cnf_weight * cnf_nll + _kinetic(cfg, prior, terms)
    return Objective(loss, terms, model.decode(z), prior.nfe)


def vae_cnf_prior(
    model: LatentCNF, x: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig, step: int
) -> Objective:
    """Stage 3: the CNF is the prior; KL = -H[q] - log p_CNF(z) with one sample of z."""
    mean, log_std, z, recon = _encode(model, x, labels, sample=True)
    prior = _prior(model, z, labels, cfg, solver)
    kl = (-gaussian_entropy(log_std) - prior.log_prob).mean()
    warmup = min(1.0, (step + 1) / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0
    terms = {"recon": recon.item(), "kl": kl.item(), "elbo": -(recon + kl).item()}
    loss = cfg.recon_weight * recon + warmup * cfg.kl_weight * kl + _kinetic(cfg, prior, terms)
    return Objective(loss, terms, model.decode(z), prior.nfe)


def flow_matching(
    model: LatentCNF, posterior: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig, step: int
) -> Objective:
    """The prior alone, by conditional flow matching on posterior samples of the frozen encoder, given as rows
    [mean, log_std] that the trainer encodes once (Trainer.posterior_rows); one velocity evaluation per
    latent, nothing encoded or decoded."""
    mean, log_std = posterior.chunk(2, dim=1)
    z = mean + torch.exp(log_std) * torch.randn_like(mean)
    return _prior_alone(model, z, labels, ot=cfg.ot_pairing)


def reflow(
    model: LatentCNF, pairs: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, solver: SolverConfig, step: int
) -> Objective:
    """The prior alone, by flow matching on rows [z0, z1] of a teacher flow's own coupling (train/reflow.py):
    no pairing, no encoder, one velocity evaluation per pair."""
    z0, z1 = pairs.chunk(2, dim=1)
    return _prior_alone(model, z1, labels, z0=z0)


def _prior_alone(model: LatentCNF, z1: torch.Tensor, labels: torch.Tensor, **pairing: Any) -> Objective:
    """Flow matching's step: the prior's loss on latents z1, one velocity evaluation, nothing decoded."""
    prior_labels = labels if model.prior.uses_labels else None
    loss = flow_matching_loss(model.prior, z1, prior_labels, **pairing)
    return Objective(loss, {"flow_matching": loss.item()}, None, 1)


OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "ae_cnf": ae_cnf,
    "vae_cnf": vae_cnf,
    "vae_cnf_prior": vae_cnf_prior,
    "flow_matching": flow_matching,
    "reflow": reflow,
}


def discriminator_loss(disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """BCE over all patches: real batch vs detached reconstructions."""
    real_logits, _ = disc(real)
    fake_logits, _ = disc(fake.detach())
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def adversarial_losses(
    disc: PatchDiscriminator, real: torch.Tensor, fake: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-saturating generator loss on the fake patches, and L1 feature matching against the real batch."""
    fake_logits, fake_features = disc(fake)
    with torch.no_grad():
        _, real_features = disc(real)
    adversarial = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    matching = sum(F.l1_loss(f, r) for f, r in zip(fake_features, real_features, strict=True)) / len(fake_features)
    return adversarial, matching
