"""What the judge classifier (latent_cnf/judges.py) sees in many images: its penultimate features (the
embedding of FID and precision/recall), its predicted labels, and its accuracy."""

from __future__ import annotations

import torch
from tqdm import tqdm

from latent_cnf.judges import Classifier


@torch.no_grad()
def embed(
    judge: Classifier, images: torch.Tensor, batch_size: int, desc: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted labels) of many images, batch by batch on the judge's device; results on the CPU."""
    judge.eval()
    device = next(judge.parameters()).device
    features, labels = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=desc is None, leave=False):
        h = judge.features(images[start : start + batch_size].to(device))
        features.append(h.cpu())
        labels.append(judge.head(h).argmax(1).cpu())
    return torch.cat(features), torch.cat(labels)


def accuracy(judge: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    return (embed(judge, images, batch_size)[1] == labels).sum().item() / len(labels)
