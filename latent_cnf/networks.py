"""Encoder, decoder and patch discriminator."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from .config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class GatedLayer(nn.Module):
    """Linear layer with a WaveNet-style gate conditioned on a label: tanh(a + c1) * sigmoid(b + c2)."""

    def __init__(self, in_features: int, out_features: int, label_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)
        self.condition = nn.Linear(label_dim, 2 * out_features)

    def forward(self, x: torch.Tensor, label_embedding: torch.Tensor) -> torch.Tensor:
        a, b = (self.linear(x) + self.condition(label_embedding)).chunk(2, dim=-1)
        return torch.tanh(a) * torch.sigmoid(b)


class Encoder(nn.Module):
    """MLP from pixels to a latent mean and (for the VAE) a clamped log-std."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        widths = (config.data_dim, *config.encoder_hidden)
        self.label_embedding: nn.Embedding | None
        if config.encoder_uses_labels:
            self.label_embedding = nn.Embedding(config.num_classes, config.encoder_label_dim)
            self.layers = nn.ModuleList(GatedLayer(i, o, config.encoder_label_dim) for i, o in pairwise(widths))
        else:
            self.label_embedding = None
            self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in pairwise(widths))
            self.activation = ACTIVATIONS[config.encoder_activation]()
        self.dropout = nn.Dropout(config.dropout)
        out = 2 * config.latent_dim if config.variational else config.latent_dim
        self.head = nn.Linear(widths[-1], out)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mean, log_std); a deterministic encoder gets the fixed proposal std of the config."""
        h = x
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("this encoder is label-conditioned: pass labels")
            embedding = self.label_embedding(labels)
            for layer in self.layers:
                h = self.dropout(layer(h, embedding))
        else:
            for layer in self.layers:
                h = self.dropout(self.activation(layer(h)))
        out = self.head(h)
        if not self.config.variational:
            return out, torch.full_like(out, math.log(self.config.ae_proposal_std))
        mean, raw = out.chunk(2, dim=-1)
        return mean, raw.clamp(self.config.log_std_min, self.config.log_std_max)


class Decoder(nn.Module):
    """MLP from a latent to Bernoulli logits per pixel (the sigmoid lives inside the loss)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = (config.latent_dim, *config.decoder_hidden)
        layers: list[nn.Module] = []
        for i, o in pairwise(widths):
            layers += [nn.Linear(i, o), ACTIVATIONS[config.decoder_activation]()]
        layers.append(nn.Linear(widths[-1], config.data_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(z)
        return logits
