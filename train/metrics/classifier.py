"""The judge: a small LeNet-style CNN whose predictions and penultimate features score generated images.

`python -m train.metrics.classifier --dataset mnist` trains it and ships the weights with a JSON card in
latent_cnf/checkpoints/classifiers/. The judge sees float images in [0, 1] (grey levels or Bernoulli means).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from latent_cnf import data
from latent_cnf.checkpoints import SHIPPED_DIR
from latent_cnf.device import resolve_device

CLASSIFIER_DIR = SHIPPED_DIR / "classifiers"
IMAGE_SIZE = 28
NUM_CLASSES = 10
MAX_SHIFT_PX = 2


class Judge(nn.Module):
    """Two conv blocks and a 128-unit hidden layer: small enough to ship, accurate enough to judge."""

    feature_dim = 128

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
        return self.body(images.reshape(len(images), 1, IMAGE_SIZE, IMAGE_SIZE).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits (n, 10)."""
        return self.head(self.features(images))


@torch.no_grad()
def embed(
    judge: Judge, images: torch.Tensor, batch_size: int, desc: str | None = None
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


def accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    return (embed(judge, images, batch_size)[1] == labels).sum().item() / len(labels)


def weights_path(dataset: str, folder: Path = CLASSIFIER_DIR) -> Path:
    return folder / f"{dataset}.pt"


def load_classifier(dataset: str, device: str | torch.device = "cpu", folder: Path = CLASSIFIER_DIR) -> Judge:
    """The shipped judge for `dataset`, in eval mode; the weights file is read without executing code."""
    path = weights_path(dataset, folder)
    if not path.exists():
        raise FileNotFoundError(
            f"no classifier weights at {path}: run python -m train.metrics.classifier --dataset {dataset}"
        )
    judge = Judge()
    judge.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return judge.to(device).eval()


def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light augmentation: translate each image by up to MAX_SHIFT_PX pixels, filling with black."""
    n = len(images)
    offsets = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * MAX_SHIFT_PX / IMAGE_SIZE)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = offsets
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def train(
    dataset: str,
    data_dir: Path | None,
    device: torch.device,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
) -> tuple[Judge, dict]:
    """Adam with a cosine schedule on the 'fit' split; keeps the weights of the epoch with the best 'val' accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    fit, val = (data.load_split(dataset, split, data_dir) for split in ("fit", "val"))
    x = data.to_float(fit.images).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    val_x = data.to_float(val.images)
    judge = Judge().to(device)
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    best: dict = {"val_accuracy": -1.0}
    postfix = {}
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"judge {dataset}", unit="step", dynamic_ncols=True)
    for epoch in range(1, epochs + 1):
        judge.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            batch = shift(x[index], generator) if augment else x[index]
            loss = F.cross_entropy(judge(batch.to(device)), fit.labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", **postfix)
        val_accuracy = accuracy(judge, val_x, val.labels, batch_size=1000)
        bar.write(f"epoch {epoch}: val accuracy {val_accuracy:.4f}")
        postfix = {"val": f"{val_accuracy:.4f}"}
        if val_accuracy > best["val_accuracy"]:
            best = {"val_accuracy": val_accuracy, "best_epoch": epoch, "state": copy.deepcopy(judge.state_dict())}
    bar.close()
    judge.load_state_dict(best.pop("state"))
    return judge.eval(), best


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.metrics.classifier", description=__doc__)
    parser.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true", help="train without random shifts")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=CLASSIFIER_DIR, help="folder for <dataset>.pt and <dataset>.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    judge, selection = train(
        args.dataset,
        args.data_dir,
        resolve_device(args.device),
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
        not args.no_augment,
    )
    test = data.load_split(args.dataset, "test", args.data_dir)
    card = {
        "dataset": args.dataset,
        "test_accuracy": accuracy(judge, data.to_float(test.images), test.labels, batch_size=1000),
        **selection,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "augment": not args.no_augment,
        "seed": args.seed,
        "command": shlex.join(["python", "-m", "train.metrics.classifier", *(sys.argv[1:] if argv is None else argv)]),
        "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in judge.state_dict().items()}
    torch.save(state, weights_path(args.dataset, args.out))
    (args.out / f"{args.dataset}.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    print(json.dumps(card, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
