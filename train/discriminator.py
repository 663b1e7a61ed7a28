"""The patch discriminator of the original's adversarial training (presets with `adversarial=True`): a training
aid, not part of the served model."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchBranch(nn.Module):
    def __init__(self, kernel: int, channels: int, leaky: bool):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, channels, kernel, padding="same") for i in (1, channels, channels))
        self.out = nn.Conv2d(channels, 1, kernel)
        self.leaky = leaky

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for conv in self.convs:
            x = conv(x)
            if self.leaky:
                x = F.leaky_relu(x, 0.2)
            features.append(x)
        return self.out(x), features


class PatchDiscriminator(nn.Module):
    """Two branches (kernels 3 and 5) of 'same' convolutions ending in a map of patch logits.

    The original has no nonlinearity between convolutions (`leaky=False` keeps that); the sigmoid is
    applied inside the BCE loss, so `forward` returns logits.
    """

    def __init__(self, channels: int = 32, leaky: bool = False, image_size: int = 28):
        super().__init__()
        self.image_size = image_size
        self.branches = nn.ModuleList(PatchBranch(k, channels, leaky) for k in (3, 5))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = pixels.reshape(-1, 1, self.image_size, self.image_size)
        logits, features = [], []
        for branch in self.branches:
            score, feats = branch(x)
            logits.append(score.flatten(1))
            features += feats
        return torch.cat(logits, dim=1), features
