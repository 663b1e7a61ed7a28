"""LatentCNF: the one model API used by training, evaluation and the service."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cnf import FlowResult
from .config import DEFAULT_SOLVER, ModelConfig, SolverConfig
from .likelihood import bernoulli_log_likelihood, gaussian_log_density, iwae_bound, label_latent_elbo
from .networks import Decoder, Encoder
from .priors import build_prior

LabelArg = int | torch.Tensor | None
MAX_TEMPERATURE = 2.0


def base_draws(n: int, dim: int, classes: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard normal noise (n, dim) and uniform labels (n,) from a seed (or fresh, from torch's global generator).

    Each comes from its own NumPy stream of the seed, filled row by row, so any call's rows are the first rows of
    a larger call's: a seed names samples, as in JAX or diffusers. (torch.randn fills in blocks of 16 and does not.)
    """
    if seed is None:
        return torch.randn(n, dim), torch.randint(classes, (n,))
    noise, labels = (np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(2))
    return torch.from_numpy(noise.standard_normal((n, dim), dtype=np.float32)), torch.from_numpy(
        labels.integers(classes, size=n)
    )


@dataclass
class Samples:
    latents: torch.Tensor  # (n, d)
    images: torch.Tensor  # (n, 1, H, W) Bernoulli means in [0, 1]
    labels: torch.Tensor | None  # labels the prior was conditioned on
    nfe: int


@dataclass
class Trajectory:
    times: torch.Tensor  # (steps,)
    latents: torch.Tensor  # (steps, n, d)
    images: torch.Tensor  # (steps, n, 1, H, W)
    labels: torch.Tensor | None
    nfe: int


@dataclass
class Score:
    """Per-image log-likelihood bound in nats, and its parts (shaped (n,) unless noted)."""

    log_likelihood: torch.Tensor  # IWAE bound on log p(x)
    elbo: torch.Tensor  # ELBO on log p(x); the label is a latent for label-gated models (see LatentCNF.score)
    reconstruction: torch.Tensor  # E_q log p(x|z)
    kl: torch.Tensor  # E_q [log q(z, y|x) - log p(z, y)]: elbo = reconstruction - kl
    latent_log_density: torch.Tensor  # log p(encoder mean) under the prior
    decoded_mean: torch.Tensor  # (n, 1, H, W) pixel means decoded from that encoder mean: what the model kept
    encoder_mean: torch.Tensor  # (n, d) that encoder mean (for a label-gated encoder, the best label's)
    encoder_std: torch.Tensor  # (n, d) and the std of the same encoder posterior
    label_log_likelihood: torch.Tensor | None  # (n, classes): IWAE bound on log p(x | y), conditional priors
    label_elbo: torch.Tensor  # (n, score classes): ELBO on log p(x | y) for each label (one column if none)
    predicted_label: torch.Tensor | None
    importance_samples: int
    nfe: int


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of base noise rows at weights `t` (shaped (m, 1)): the norm stays near the
    Gaussian's typical radius, where a straight line would cut through the low-norm middle that the flow
    rarely saw (White 2016). Exactly `a` at t=0 and `b` at t=1; parallel rows are interpolated linearly."""
    unit_a, unit_b = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    angle = torch.arccos((unit_a * unit_b).sum(-1, keepdim=True).clamp(-1, 1))
    sin = torch.sin(angle)
    parallel = sin < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    weight_a = torch.where(parallel, 1 - t, torch.sin((1 - t) * angle) / safe)
    weight_b = torch.where(parallel, t, torch.sin(t * angle) / safe)
    return weight_a * a + weight_b * b


class LatentCNF(nn.Module):
    """A VAE (or autoencoder) whose latent prior is a continuous normalizing flow.

    Two operations, named as everywhere in the project: `sample` (with `trajectory`, a sample's path through
    the flow, and `sample_from`, the same from given base draws) and `score`. They run under
    `torch.inference_mode()` and return plain tensors (no autograd history, `.numpy()` works). `encode`,
    `decode` and `log_prob` stay differentiable for training. `from_pretrained` / `save_pretrained` read and
    write a model folder (latent_cnf/model_folder.py), as diffusers' models do.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # The solvers used when a call names none; `latent_cnf.load` sets serving.json's calibrated ones.
        self.sample_solver: SolverConfig = DEFAULT_SOLVER
        self.score_solver: SolverConfig = DEFAULT_SOLVER
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.prior = build_prior(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> LatentCNF:
        """A shipped model by name, or a model folder, ready in eval mode on `device`, with its calibrated
        solvers (serving.json) as the defaults; nothing in the folder is executed (safetensors and JSON)."""
        from .model_folder import load  # the folder format builds on this class

        return load(name_or_path, device)

    def save_pretrained(
        self, folder: str | Path, training: dict[str, Any] | None = None, serving: dict[str, Any] | None = None
    ) -> Path:
        """Write this model's folder: weights, config, `training` (its provenance) and `serving` data, a card."""
        from .model_folder import save_pretrained

        return save_pretrained(self, folder, training, serving)

    @property
    def device(self) -> torch.device:
        return self.prior.base_std.device

    def _labels(self, label: LabelArg, n: int, needed: bool, drawn: torch.Tensor | None = None) -> torch.Tensor | None:
        """Labels for `n` samples; a conditional prior asked for no label takes `drawn`, uniform class labels."""
        if not needed:
            if label is not None:
                raise ValueError("this model is not label-conditioned: omit the label")
            return None
        if label is None:
            assert drawn is not None, "a conditional prior without a label samples drawn labels"
            labels = drawn
        else:
            labels = torch.as_tensor(label).expand(n).clone()
        if labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise ValueError(f"label must be in 0..{self.config.num_classes - 1}")
        return labels.to(self.device)

    def encode(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of q(z | x[, y])."""
        mean_log_std: tuple[torch.Tensor, torch.Tensor] = self.encoder(images.reshape(len(images), -1), labels)
        return mean_log_std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits per pixel, shape (n, H*W)."""
        logits: torch.Tensor = self.decoder(z)
        return logits

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        return torch.sigmoid(self.decode(z)).reshape(len(z), 1, size, size)

    def log_prob(
        self, z: torch.Tensor, label: LabelArg = None, solver: SolverConfig | None = None, kinetic: bool = False
    ) -> FlowResult:
        """Exact prior log-density of latents; for a conditional prior without labels, the label marginal."""
        if not self.prior.uses_labels or label is not None:
            labels = self._labels(label, len(z), self.prior.uses_labels)
            return self.prior.log_prob(z, labels, solver, kinetic)
        k = self.config.num_classes
        labels = torch.arange(k, device=z.device).repeat_interleave(len(z))
        result = self.prior.log_prob(z.repeat(k, 1), labels, solver, kinetic)
        assert result.log_prob is not None  # a prior's log_prob always sets it
        marginal = torch.logsumexp(result.log_prob.reshape(k, len(z)), 0) - math.log(k)
        return dataclasses.replace(result, path=result.path.reshape(len(result.path), k, len(z), -1), log_prob=marginal)

    def draw_base(
        self, n: int, label: LabelArg = None, seed: int | None = None, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The random inputs of a sample: base noise and labels, drawn on the CPU so a seed means the same on
        every device. With a seed, sample i depends on (seed, i, label, temperature) only, whatever `n` is.

        A temperature below 1 shrinks the base noise towards the mode (as in Glow): samples get more
        typical and more often the requested digit, at the price of variety.
        """
        if not 0 < temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must be in (0, {MAX_TEMPERATURE}]")
        noise, drawn = base_draws(n, self.config.latent_dim, self.config.num_classes, seed)
        labels = self._labels(label, n, self.prior.uses_labels, drawn)
        return noise.to(self.device) * self.prior.base_std * temperature, labels

    @torch.inference_mode()
    def sample_from(
        self, z0: torch.Tensor, labels: torch.Tensor | None, solver: SolverConfig | None = None, steps: int = 2
    ) -> Trajectory:
        """Samples from given base draws (`draw_base`'s, or others such as an interpolation's): the noise through
        the flow, decoded at `steps` evenly spaced times (the last is the sample)."""
        solver = solver or self.sample_solver
        result = self.prior.transform(z0, labels, solver, steps)
        latents = result.path
        images = self.decode_images(latents.reshape(-1, latents.shape[-1]))
        times = torch.linspace(self.config.t0, self.config.t1, steps)
        return Trajectory(times, latents, images.reshape(steps, len(z0), *images.shape[1:]), labels, result.nfe)

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        label: LabelArg = None,
        seed: int | None = None,
        solver: SolverConfig | None = None,
        temperature: float = 1.0,
    ) -> Samples:
        path = self.sample_from(*self.draw_base(n, label, seed, temperature), solver=solver)
        return Samples(path.latents[-1], path.images[-1], path.labels, path.nfe)

    @torch.inference_mode()
    def trajectory(
        self,
        n: int,
        steps: int = 11,
        label: LabelArg = None,
        seed: int | None = None,
        solver: SolverConfig | None = None,
        temperature: float = 1.0,
    ) -> Trajectory:
        if steps < 2:
            raise ValueError("a trajectory needs at least 2 steps")
        return self.sample_from(*self.draw_base(n, label, seed, temperature), solver=solver, steps=steps)

    @torch.inference_mode()
    def score(
        self,
        images: torch.Tensor,
        k: int = 64,
        solver: SolverConfig | None = None,
        seed: int | torch.Tensor = 0,
        max_rows: int = 65_536,
    ) -> Score:
        """IWAE bound on log p(x) with `k` importance samples per label (C k proposals per image in all for a
        label-gated model, C = config.score_classes; k for others), and the matching ELBO.

        Label-gated models marginalise the label: the proposals are stratified over the uniform label prior,
        k from each q(z | x, y), so the bound is on log p(x) = log 1/C sum_y p(x | y), and the per-label bounds
        give `predicted_label`. The ELBO treats the label as a latent too (likelihood.label_latent_elbo):
        log 1/C sum_y exp ELBO_y, ELBO_y = E_q(z|x,y) log p(x, z | y) / q(z | x, y) estimated by the k draws of
        label y. It never exceeds the IWAE bound of the same draws (ELBO_y <= label y's IWAE bound). Averaging
        ELBO_y over all labels instead (a uniform label posterior) charges every image for its wrong labels.
        Image i draws its proposal noise from seed + i (or seed[i] for a tensor of seeds), so an image's
        score does not depend on what else is in the batch. `max_rows` caps how many latent rows go through
        the flow at once (memory, not maths).
        """
        if k < 1:
            raise ValueError("importance_samples must be >= 1")
        solver = solver or self.score_solver
        x = images.reshape(len(images), -1).to(self.device, torch.float32)
        classes = self.config.score_classes
        chunk = max(1, max_rows // (classes * k))
        seeds = torch.as_tensor(seed) + torch.arange(len(x)) if not torch.is_tensor(seed) else seed
        parts = [
            self._score_chunk(x[i : i + chunk], k, classes, solver, seeds[i : i + chunk])
            for i in range(0, len(x), chunk)
        ]
        merged = {key: torch.cat([p[key] for p in parts]) for key in parts[0] if key != "nfe"}
        per_label = merged["per_label"] if self.prior.uses_labels else None
        return Score(
            log_likelihood=merged["iwae"],
            elbo=merged["elbo"],
            reconstruction=merged["reconstruction"],
            kl=merged["kl"],
            latent_log_density=merged["latent"],
            decoded_mean=merged["decoded_mean"],
            encoder_mean=merged["encoder_mean"],
            encoder_std=merged["encoder_std"],
            label_log_likelihood=per_label,
            label_elbo=merged["label_elbo"],
            predicted_label=per_label.argmax(1) if per_label is not None else None,
            importance_samples=k,
            nfe=sum(p["nfe"] for p in parts),
        )

    def _score_chunk(
        self, x: torch.Tensor, k: int, classes: int, solver: SolverConfig, seeds: torch.Tensor
    ) -> dict[str, Any]:
        n, d = len(x), self.config.latent_dim
        labels = torch.arange(classes, device=x.device).repeat(n) if classes > 1 else None
        x_rows = x.repeat_interleave(classes, 0)
        mean, log_std = self.encoder(x_rows, labels if self.config.encoder_uses_labels else None)
        eps = torch.cat(
            [torch.randn(classes, k, d, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(x.device)
        z = (mean.unsqueeze(1) + torch.exp(log_std).unsqueeze(1) * eps).reshape(-1, d)
        log_q = gaussian_log_density(z, mean.repeat_interleave(k, 0), log_std.repeat_interleave(k, 0))
        prior_labels = labels.repeat_interleave(k) if self.prior.uses_labels and labels is not None else None
        prior = self.prior.log_prob(z, prior_labels, solver)
        assert prior.log_prob is not None  # a prior's log_prob always sets it
        log_px = bernoulli_log_likelihood(torch.unflatten(self.decode(z), 0, (-1, k)), x_rows.unsqueeze(1)).flatten()
        log_w = (log_px + prior.log_prob - log_q).reshape(n, classes, k)
        per_label = iwae_bound(log_w, dim=2)
        elbo, log_r = label_latent_elbo(log_w)  # log 1/C sum_y exp ELBO_y, with r(y|x) its label posterior
        r = log_r.exp()
        label_kl = (r * (log_r + math.log(classes))).sum(1)  # KL(r || uniform prior)
        latent_kl = (log_q - prior.log_prob).reshape(n, classes, k).mean(2)
        best = per_label.argmax(1)
        mean_best = mean.reshape(n, classes, d)[torch.arange(n), best]
        std_best = torch.exp(log_std).reshape(n, classes, d)[torch.arange(n), best]
        label_best = best if self.prior.uses_labels else None
        latent = self.prior.log_prob(mean_best, label_best, solver)
        return {
            "iwae": iwae_bound(per_label, dim=1),
            "per_label": per_label,
            "label_elbo": log_w.mean(2),
            "elbo": elbo,
            "reconstruction": (r * log_px.reshape(n, classes, k).mean(2)).sum(1),
            "kl": (r * latent_kl).sum(1) + label_kl,
            "latent": latent.log_prob,
            "decoded_mean": self.decode_images(mean_best),
            "encoder_mean": mean_best,
            "encoder_std": std_best,
            "nfe": prior.nfe + latent.nfe,
        }
