"""Training configuration as data, and the presets: each a model configuration and how to train it. The four
seed stages (../shared/docs/seed-stages.md) stay reproducible as named presets; `python -m train --list-presets`
prints them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from latent_cnf.config import ModelConfig, SolverConfig, from_json_dict


@dataclass(frozen=True)
class TrainConfig:
    """The objective and optimisation of one training run (see train/objectives.py for the losses)."""

    objective: Literal["ae_cnf", "vae_cnf", "vae_cnf_prior", "flow_matching", "reflow"] = "vae_cnf_prior"
    recon_weight: float = 3.0
    kl_weight: float = 0.1
    cnf_weight: float = 0.0
    kl_warmup_steps: int = 0
    kinetic_weight: float = 0.0
    adversarial: bool = False
    adv_weight: float = 1.0
    feature_match_weight: float = 1.0
    disc_weight: float = 2.0
    disc_channels: int = 32
    disc_leaky: bool = False
    binarize: bool = False
    batch_size: int = 512
    epochs: int = 17
    lr: float = 2e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_final: float = 0.0
    disc_lr: float = 4e-3
    grad_clip: float | None = None
    seed: int = 1234
    train_solver: SolverConfig = field(default_factory=lambda: SolverConfig(method="rk4", steps=8))
    max_solver_gap_nats: float | None = 0.2  # refine the training solver beyond this (see train/loop.py)
    max_train_steps_per_solve: int = 128
    min_train_steps_per_solve: int = 8
    # A shipped checkpoint ("{dataset}" is filled in) whose encoder and decoder are loaded and kept fixed: only
    # the prior trains. None: everything trains from the seed.
    frozen_autoencoder: str | None = None
    ot_pairing: bool = True  # flow matching: pair base draws with latents by minibatch optimal transport
    # Reflow: a shipped checkpoint ("{dataset}" is filled in) whose prior the run starts from and whose flow,
    # integrated by `reflow_solver`, makes the training pairs (train/reflow.py). None: no teacher.
    reflow_teacher: str | None = None
    reflow_solver: SolverConfig = field(default_factory=lambda: SolverConfig(method="rk4", steps=8))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return from_json_dict(cls, data)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    train: TrainConfig


_STAGE1_MODEL = ModelConfig(latent_dim=2, encoder_activation="relu", variational=False, cnf_width=64)
_STAGE3_MODEL = ModelConfig(latent_dim=2, encoder_activation="tanh", cnf_width=32)
_FINAL_MODEL = ModelConfig(latent_dim=8, encoder_activation="tanh", encoder_uses_labels=True)
_FINAL_TRAIN = TrainConfig(objective="vae_cnf_prior", kl_weight=0.1, adversarial=True, batch_size=256, epochs=50)
# The digit-on-demand model: stage 4's latent, label-gated encoder and CNF, with a label-conditioned CNF and
# the changes measured to make a requested digit legible (docs/results.md, "label accuracy"): 512-wide MLPs
# (the judge reads 0.93 of the 32-unit decoder's reconstructions), the proper ELBO with KL warm-up instead
# of the 3 : 0.1 weighting, RNODE's kinetic term and a cosine schedule. No discriminator: the original's is
# affine in the image (no nonlinearity between its convolutions), so each patch score is an affine function
# of the patch, and it would be 95% of the cost of a step on a CPU.
_FINAL_COND_MODEL = dataclasses.replace(
    _FINAL_MODEL, prior_uses_labels=True, encoder_hidden=(512, 512), decoder_hidden=(512, 512)
)
_FINAL_COND_TRAIN = dataclasses.replace(
    _FINAL_TRAIN,
    adversarial=False,
    recon_weight=1.0,
    kl_weight=1.0,
    kl_warmup_steps=2000,
    kinetic_weight=0.05,
    lr_schedule="cosine",
    lr_final=1e-5,
)
# The flow-matching prior (issue 19): final-cond's model, its shipped encoder and decoder reused frozen (the
# same encoder/decoder budget, exactly), and the label-conditioned prior fitted by conditional flow matching
# to their posterior samples with minibatch OT pairing (train/flow_matching.py): one velocity evaluation per
# latent and step, no ODE solve, so no solver-gap guard or kinetic term. The hypernetwork dynamics keep the
# closed-form trace, so the prior's exact log-density is computed as for the maximum-likelihood prior.
_FM_COND_TRAIN = dataclasses.replace(
    _FINAL_COND_TRAIN,
    objective="flow_matching",
    frozen_autoencoder="{dataset}-final-cond",
    kl_warmup_steps=0,
    kinetic_weight=0.0,
    max_solver_gap_nats=None,
    epochs=30,
)
# Reflow of the flow-matching prior (Liu et al. 2022): the same frozen encoder and decoder, the prior started
# from the shipped fm-cond's and fitted by flow matching to its own coupling, one pair per training image with
# that image's label, integrated at rk4 x 8 (twice the steps of its calibrated sampler): straighter paths for
# one- and two-step sampling. A lower learning rate: it starts from a trained flow.
_FM_COND_REFLOW_TRAIN = dataclasses.replace(
    _FM_COND_TRAIN, objective="reflow", reflow_teacher="{dataset}-fm-cond", epochs=20, lr=1e-3
)
_LARGE_MODEL = ModelConfig(
    latent_dim=32,
    encoder_hidden=(512, 512),
    decoder_hidden=(512, 512),
    encoder_activation="relu",
    dropout=0.0,
    cnf_width=128,
    cnf_hidden=64,
)
_LARGE_TRAIN = TrainConfig(
    objective="vae_cnf_prior",
    recon_weight=1.0,
    kl_weight=1.0,
    kl_warmup_steps=10_000,
    kinetic_weight=0.1,
    binarize=True,
    batch_size=128,
    epochs=200,
    lr=1e-3,
    lr_schedule="cosine",
    lr_final=1e-5,
    grad_clip=10.0,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "ae-cnf",
            "stage 1: deterministic ReLU autoencoder, latent 2, CNF fitted to its latents",
            _STAGE1_MODEL,
            TrainConfig(objective="ae_cnf", kl_weight=0.0, cnf_weight=0.1, batch_size=512, epochs=17),
        ),
        Preset(
            "vae-cnf",
            "stage 2: Gaussian encoder with KL to N(0, I), CNF fitted to the sampled latents",
            dataclasses.replace(_STAGE1_MODEL, variational=True),
            TrainConfig(objective="vae_cnf", kl_weight=1.0, cnf_weight=0.1, batch_size=512, epochs=17),
        ),
        Preset(
            "vae-cnf-prior",
            "stage 3: the CNF is the VAE prior (KL to the CNF density), tanh encoder",
            _STAGE3_MODEL,
            TrainConfig(objective="vae_cnf_prior", kl_weight=0.1, batch_size=512, epochs=35),
        ),
        Preset(
            "final",
            "stage 4: stage 3 + patch discriminator + latent 8 + label-gated encoder",
            _FINAL_MODEL,
            _FINAL_TRAIN,
        ),
        Preset(
            "final-cond",
            "stage 4 with a label-conditioned CNF prior, 512-wide MLPs and the proper ELBO: "
            "sample(n, label=y) draws digit y",
            _FINAL_COND_MODEL,
            _FINAL_COND_TRAIN,
        ),
        Preset(
            "fm-cond",
            "final-cond's encoder and decoder (shipped, frozen) with the label-conditioned CNF prior fitted by "
            "conditional flow matching with minibatch OT pairing: few-step sampling, exact log-density kept",
            _FINAL_COND_MODEL,
            _FM_COND_TRAIN,
        ),
        Preset(
            "fm-cond-reflow",
            "fm-cond reflowed: its prior re-fitted by flow matching on the coupling its own flow makes of base "
            "draws and labels, for one- and two-step sampling",
            _FINAL_COND_MODEL,
            _FM_COND_REFLOW_TRAIN,
        ),
        Preset(
            "large",
            "quality-focused: latent 32, 512-wide MLPs, proper ELBO with KL warm-up, binarized data",
            _LARGE_MODEL,
            _LARGE_TRAIN,
        ),
        Preset(
            "vae-gauss",
            "baseline: `final` with an N(0, I) prior instead of the CNF, same encoder, decoder and budget",
            dataclasses.replace(_FINAL_MODEL, prior="gaussian"),
            _FINAL_TRAIN,
        ),
        Preset(
            "final-cond-gauss",
            "baseline: `final-cond` with an N(0, I) prior instead of the CNF, same networks and budget",
            dataclasses.replace(_FINAL_COND_MODEL, prior="gaussian", prior_uses_labels=False),
            _FINAL_COND_TRAIN,
        ),
        Preset(
            "large-gauss",
            "baseline: `large` with an N(0, I) prior instead of the CNF, same networks and budget",
            dataclasses.replace(_LARGE_MODEL, prior="gaussian"),
            _LARGE_TRAIN,
        ),
    )
}
