"""`python -m train.judge_classifier --dataset mnist`: train the judge classifier of latent_cnf/judges.py and
ship it as the model folder latent_cnf/pretrained/judges/<dataset>-classifier/."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from latent_cnf import data, judges, model_folder
from latent_cnf.device import resolve_device
from latent_cnf.judges import IMAGE_SIZE, Classifier

from . import cli
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


@dataclass(frozen=True)
class JudgeClassifierOptions:
    """The flags of python -m train.judge_classifier but where to write: the data, the device, the recipe."""

    dataset: str = cli.flag("mnist", help="training data", choices=sorted(data.DATASETS))
    data_dir: Path | None = cli.flag(None, help=cli.DATA_DIR_HELP)
    device: str = cli.flag("auto", help=cli.DEVICE_HELP)
    epochs: int = cli.flag(8, help="epochs of 'fit'")
    batch_size: int = cli.flag(128, help="images per step")
    lr: float = cli.flag(1e-3, help="Adam's initial rate")
    seed: int = cli.flag(0, help="seed of the weights, the order and the shifts")
    augment: bool = cli.flag(True, help="train without random shifts")  # --no-augment

    def recipe(self) -> dict[str, int | float | bool]:
        """What the judge's training.json records of how it was trained."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("dataset", "data_dir", "device")}


class CosineAdam:
    """The judges' optimiser (this one's and train.outlier_judge's): Adam, its learning rate falling along a
    cosine to 0 over `steps` steps."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], lr: float, steps: int):
        self.optimizer = torch.optim.Adam(parameters, lr=lr)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One epoch's batches of indices of `n` rows, in an order drawn from `generator` (the last may be smaller)."""
    return torch.randperm(n, generator=generator).split(batch_size)


def train(options: JudgeClassifierOptions) -> tuple[Classifier, dict]:
    """Adam with a cosine schedule on the 'fit' split; keeps the weights of the epoch with the best 'val' accuracy."""
    o = options
    torch.manual_seed(o.seed)
    generator = torch.Generator().manual_seed(o.seed)
    device = resolve_device(o.device)
    fit, val = (data.load_split(o.dataset, split, o.data_dir) for split in ("fit", "val"))
    x = data.to_float(fit.images).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    val_x = data.to_float(val.images)
    judge = Classifier().to(device)
    steps = o.epochs * -(-len(x) // o.batch_size)
    optimizer = CosineAdam(judge.parameters(), o.lr, steps)
    best: dict = {"val_accuracy": -1.0}
    postfix: dict[str, str] = {}
    bar = tqdm(total=steps, desc=f"judge {o.dataset}", unit="step", dynamic_ncols=True)
    for epoch in range(1, o.epochs + 1):
        judge.train()
        for index in shuffled_batches(len(x), o.batch_size, generator):
            batch = shift(x[index], generator) if o.augment else x[index]
            loss = F.cross_entropy(judge(batch.to(device)), fit.labels[index].to(device))
            optimizer.step(loss)
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
    cli.add_flags(parser, JudgeClassifierOptions)
    parser.add_argument(
        "--out", type=Path, help="model folder to write (default latent_cnf/pretrained/judges/<dataset>-classifier)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(build_parser(), argv)
    options = cli.options_from(args, JudgeClassifierOptions)
    start = time.perf_counter()
    judge, selection = train(options)
    test = data.load_split(options.dataset, "test", options.data_dir)
    device = next(judge.parameters()).device
    training = {
        "dataset": options.dataset,
        "test_accuracy": accuracy(judge, data.to_float(test.images), test.labels, batch_size=1000),
        **selection,
        **options.recipe(),
        "command": cli.command_line("train.judge_classifier", argv),
        "git_commit": git_commit(),
        "device": str(device),
        "torch": torch.__version__,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    out = args.out or model_folder.JUDGES_DIR / judges.classifier_name(options.dataset)
    print(f"wrote {model_folder.save_folder(judge, out, judges.CONFIG, training)}")


if __name__ == "__main__":
    main()
