"""The judge classifiers: a small LeNet-style CNN per dataset whose predictions and penultimate features
score generated images (FID, precision/recall, label accuracy in train/evaluate.py).

Trained by `python -m train.judge_classifier --dataset mnist` and shipped as model folders in
latent_cnf/pretrained/judges/<dataset>-classifier/. A judge sees float images in [0, 1] (grey levels or
Bernoulli means).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import model_folder

IMAGE_SIZE = 28
NUM_CLASSES = 10
FEATURE_DIM = 128
CONFIG = {
    "architecture": "classifier",
    "image_size": IMAGE_SIZE,
    "num_classes": NUM_CLASSES,
    "feature_dim": FEATURE_DIM,
}


class Classifier(nn.Module):
    """Two conv blocks and a 128-unit hidden layer: small enough to ship, accurate enough to judge."""

    feature_dim = FEATURE_DIM

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 5 * 5, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(self.feature_dim, NUM_CLASSES))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (n, 128): the embedding FID and precision/recall are computed in."""
        features: torch.Tensor = self.body(images.reshape(len(images), 1, IMAGE_SIZE, IMAGE_SIZE).float())
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (n, 10)."""
        logits: torch.Tensor = self.head(self.features(images))
        return logits


def classifier_name(dataset: str) -> str:
    return f"{dataset}-classifier"


def load_classifier(
    dataset: str, device: str | torch.device = "cpu", root: Path = model_folder.JUDGES_DIR
) -> Classifier:
    """The shipped judge for `dataset`, in eval mode."""
    name = classifier_name(dataset)
    try:
        folder = model_folder.resolve(name, root)
    except model_folder.ModelFolderError as error:
        raise model_folder.ModelFolderError(
            f"{error}; train it with python -m train.judge_classifier --dataset {dataset}"
        ) from None
    return model_folder.load_judge(Classifier(), folder, CONFIG).to(device)
