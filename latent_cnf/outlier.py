"""The outlier-exposure judge: a tiny CNN that tells a digit from a non-digit (Hendrycks et al. 2019).

Likelihoods of the VAE-CNF rank circles, strokes and scribbles as digits (a circle is a good 0), so a
discriminative model trained on digits against exposed outliers gives latent_cnf/ood.py one more signal: the
digit logit log p(digit | x) / p(not a digit | x) of a binarized, preprocessed 28x28 image. It is trained by
`python -m train.outlier_judge` and shipped as the model folder latent_cnf/pretrained/judges/mnist-outlier-judge/;
without it the signal is skipped.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import model_folder

FOLDER = model_folder.JUDGES_DIR / "mnist-outlier-judge"
CONFIG = {"architecture": "outlier-judge", "image_size": 28}
DATASET = "mnist"  # its positives: the checkpoints whose rule may use it
log = logging.getLogger(__name__)


class OutlierJudge(nn.Module):
    """Two small conv blocks and a 64-unit layer (114k parameters, ~0.45 MB): the images are binary and
    centred already. In a trial a half-as-wide one let through several times as many glyphs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Digit logit (n,) of images (n, 28, 28) or (n, 784) in [0, 1]: positive = more likely a digit."""
        logits: torch.Tensor = self.net(images.reshape(len(images), 1, 28, 28).float())
        return logits.squeeze(1)


@dataclass(frozen=True)
class Loaded:
    judge: OutlierJudge
    sha256: str  # of the weights file: a model's bound is only valid for the weights it was calibrated with


def load(folder: Path = FOLDER) -> Loaded | None:
    """The judge in eval mode on the CPU, or None without its folder."""
    if not (folder / model_folder.WEIGHTS_FILE).exists():
        return None
    judge = model_folder.load_judge(OutlierJudge(), folder, CONFIG)
    return Loaded(judge, model_folder.weights_sha256(folder))


@functools.cache
def shipped() -> Loaded | None:
    """The shipped judge, loaded once per process; a missing file is logged once and the signal skipped."""
    loaded = load()
    if loaded is None:
        log.warning("no outlier judge at %s: in_distribution skips the digit_logit signal", FOLDER)
    return loaded


@torch.no_grad()
def digit_logit(judge: OutlierJudge, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The judge's digit logits of many images, batch by batch on the CPU, as float64."""
    judge.eval()
    parts = [judge(images[s : s + batch_size].cpu()) for s in range(0, len(images), batch_size)]
    return torch.cat(parts).double()
