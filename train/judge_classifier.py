"""`python -m train.judge_classifier --dataset mnist`: train the judge classifier of latent_cnf/judges.py and
ship it as the model folder latent_cnf/pretrained/judges/<dataset>-classifier/."""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from latent_cnf import data, judges, model_folder
from latent_cnf.device import resolve_device
from latent_cnf.judges import IMAGE_SIZE, Classifier

from .loop import git_commit
from .metrics.features import accuracy

MAX_SHIFT_PX = 2


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
) -> tuple[Classifier, dict]:
    """Adam with a cosine schedule on the 'fit' split; keeps the weights of the epoch with the best 'val' accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    fit, val = (data.load_split(dataset, split, data_dir) for split in ("fit", "val"))
    x = data.to_float(fit.images).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    val_x = data.to_float(val.images)
    judge = Classifier().to(device)
    optimizer = torch.optim.Adam(judge.parameters(), lr=lr)
    steps_per_epoch = -(-len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    best: dict = {"val_accuracy": -1.0}
    postfix: dict[str, str] = {}
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
    parser = argparse.ArgumentParser(prog="python -m train.judge_classifier", description=__doc__)
    parser.add_argument("--dataset", choices=sorted(data.DATASETS), default="mnist")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true", help="train without random shifts")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, help="model folder to write (default latent_cnf/pretrained/judges/<dataset>-classifier)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = resolve_device(args.device)
    judge, selection = train(
        args.dataset,
        args.data_dir,
        device,
        args.epochs,
        args.batch_size,
        args.lr,
        args.seed,
        not args.no_augment,
    )
    test = data.load_split(args.dataset, "test", args.data_dir)
    training = {
        "dataset": args.dataset,
        "test_accuracy": accuracy(judge, data.to_float(test.images), test.labels, batch_size=1000),
        **selection,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "augment": not args.no_augment,
        "seed": args.seed,
        "command": shlex.join(["python", "-m", "train.judge_classifier", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "device": str(device),
        "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    out = args.out or model_folder.JUDGES_DIR / judges.classifier_name(args.dataset)
    print(f"wrote {model_folder.save_folder(judge, out, judges.CONFIG, training)}")


if __name__ == "__main__":
    main()
