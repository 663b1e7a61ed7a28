"""python -m train.outlier_judge: train the outlier-exposure judge of latent_cnf/outlier.py (Hendrycks et al.
2019), and measure how it generalizes to kinds of non-digits it never saw.

Positives: MNIST's 'fit' split (train minus the validation images the OOD bounds are calibrated on, so the
bounds and the test rates stay held out). Negatives: train/ood_set.py's non-digits drawn with a training seed
(default 1; train.ood_calibrate measures seed 0) and Fashion-MNIST train images. Every image goes the service's
way (PNG -> preprocess_mnist -> binarize at 0.5). In the cross-entropy digits weigh 1/2 in all, generated
non-digits `--generated-share` and clothes the rest, whatever their counts: clothes are easy to tell apart.

`--leave-one-out SIGNALS` (a file of `train.ood_calibrate --save-signals`) retrains once per category without
that category's negatives (and once with all of them, for comparison), recalibrates the digit-logit bound on
the same validation digits inside the same union-bound budget, and measures each category's false acceptance
(evaluation seed) under the whole rule and under the judge's bound alone. Blank images are not left out in
turn: the rule rejects them for having no ink.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from latent_cnf import data, model_folder, ood, outlier

from . import cli, ood_calibrate, ood_set
from .judge_classifier import CosineAdam, shuffled_batches
from .loop import git_commit

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"


@dataclass(frozen=True)
class JudgeOptions:
    """The training recipe and where the data is (the flags of python -m train.outlier_judge but what to write)."""

    data_dir: Path | None = cli.flag(None, help="folder holding mnist/ and fashion-mnist/ (else $LATENT_CNF_DATA)")
    per_category: int = cli.flag(2500, help="generated non-digits per category")
    seed: int = cli.flag(1, help="training seed (non-digits and weights); not 0")
    generated_share: float = cli.flag(0.4, help="of the loss; digits weigh 0.5")
    epochs: int = cli.flag(6, help="passes over the exposure set")
    batch_size: int = cli.flag(256, help="images per step")
    lr: float = cli.flag(2e-3, help="Adam's initial rate")

    def recipe(self) -> dict[str, int | float]:
        """What the judge's training.json records of how it was trained."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "data_dir"}


def served(pngs: list[bytes]) -> torch.Tensor:
    """Binarized 28x28 images (n, 28, 28) as /score sees the uploads."""
    return torch.stack([ood_calibrate.served_image(p) for p in pngs])


def exposure(data_dir: Path | None, per_category: int, seed: int) -> dict[str, torch.Tensor | list[str]]:
    """The served images: digits, generated non-digits (with their categories) and clothes."""
    generated = list(ood_set.generate(per_category, seed))
    return {
        "digits": served(ood_calibrate.digit_pngs(data.load_split(outlier.DATASET, "fit", data_dir).images)),
        "generated": served([p for _, p in generated]),
        "categories": [c for c, _ in generated],
        "clothes": served(ood_calibrate.digit_pngs(data.load_split("fashion-mnist", "train", data_dir).images)),
    }


def training_set(
    images: dict[str, torch.Tensor | list[str]], generated_share: float, leave_out: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """(images, is-digit targets, loss weights summing to 1, counts), without the `leave_out` category."""
    kept = torch.tensor([c != leave_out for c in images["categories"]])
    digits, generated, clothes = images["digits"], images["generated"][kept], images["clothes"]
    parts = ((digits, 1.0, 0.5), (generated, 0.0, generated_share), (clothes, 0.0, 0.5 - generated_share))
    x = torch.cat([p for p, _, _ in parts])
    y = torch.cat([torch.full((len(p),), target) for p, target, _ in parts])
    w = torch.cat([torch.full((len(p),), share / len(p)) for p, _, share in parts])
    return x, y, w, {"digits": len(digits), "generated_non_digits": len(generated), "fashion_mnist": len(clothes)}


def train(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, epochs: int, batch_size: int, lr: float, seed: int
) -> outlier.OutlierJudge:
    """Adam with a cosine schedule on the weighted binary cross-entropy; the last epoch's weights are kept."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    judge = outlier.OutlierJudge()
    steps = epochs * -(-len(x) // batch_size)
    optimizer = CosineAdam(judge.parameters(), lr, steps)
    judge.train()
    with tqdm(total=steps, desc="outlier judge", unit="step", leave=False) as bar:
        for _ in range(epochs):
            for index in shuffled_batches(len(x), batch_size, generator):
                losses = F.binary_cross_entropy_with_logits(judge(x[index]), y[index], reduction="none")
                loss = (losses * w[index]).sum() * len(x) / len(index)  # unbiased for the weighted mean
                optimizer.step(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    return judge.eval()


def leave_one_out(signals: Path, options: JudgeOptions) -> dict:
    """Per left-out category ("none": the same recipe with every category), the false acceptance of each
    category (evaluation seed): the diagonal says how the judge generalizes to a kind it never saw."""
    saved = torch.load(signals, weights_only=True)
    val = data.load_split(outlier.DATASET, "val", options.data_dir).images[: len(saved["val"]["ink_pixels"])]
    val_x = served(ood_calibrate.digit_pngs(val))
    categories = saved["categories"]
    per_category = len(categories) // len(ood_set.CATEGORIES)
    ood_x = served([p for _, p in ood_set.generate(per_category, saved["ood_seed"])])
    images = exposure(options.data_dir, options.per_category, options.seed)
    out = {}
    for left_out in ("none", *(c for c in ood_set.CATEGORIES if c != "blank")):
        started = time.perf_counter()
        x, y, w, _ = training_set(images, options.generated_share, None if left_out == "none" else left_out)
        judge = train(x, y, w, options.epochs, options.batch_size, options.lr, options.seed)
        val_values = saved["val"] | {"digit_logit": outlier.digit_logit(judge, val_x)}
        ood_values = saved["ood"] | {"digit_logit": outlier.digit_logit(judge, ood_x)}
        bounds = ood.bounds(val_values, saved["false_rejection"])
        alone = {"digit_logit": bounds["digit_logit"]}
        out[left_out] = {"seconds": round(time.perf_counter() - started, 1)}
        for category in ood_set.CATEGORIES:
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            out[left_out][category] = {
                "false_acceptance": ood_calibrate.rate(ood_values, bounds, index),
                "judge_bound_alone": ood_calibrate.rate(ood_values, alone, index),
            }
        print(f"left out {left_out}: {out[left_out]}", flush=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.outlier_judge", description=__doc__)
    cli.add_flags(parser, JudgeOptions)
    parser.add_argument("--out", type=Path, default=outlier.FOLDER, help="model folder to write")
    parser.add_argument(
        "--leave-one-out",
        type=Path,
        metavar="SIGNALS",
        help="write docs/results/<out's name>-loco.json instead of training the judge",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(build_parser(), argv)
    if args.seed == 0:
        raise SystemExit("error: seed 0 draws the evaluation non-digits of train.ood_calibrate; use another")
    command = cli.command_line("train.outlier_judge", argv)
    started = time.perf_counter()
    options = cli.options_from(args, JudgeOptions)
    settings = options.recipe()
    if args.leave_one_out:
        report = {
            "left_out": leave_one_out(args.leave_one_out, options),
            **settings,
            "signals": str(args.leave_one_out),
        }
        report |= {"command": command, "torch": torch.__version__, "wall_time_s": wall_time(started)}
        path = RESULTS_DIR / f"{args.out.name}-loco.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path}")
    else:
        images = exposure(options.data_dir, options.per_category, options.seed)
        x, y, w, counts = training_set(images, options.generated_share)
        judge = train(x, y, w, options.epochs, options.batch_size, options.lr, options.seed)
        parameters = sum(p.numel() for p in judge.parameters())
        training = {**counts, **settings, "parameters": parameters, "dataset": outlier.DATASET, "command": command}
        training |= {"git_commit": git_commit(), "torch": torch.__version__, "wall_time_s": wall_time(started)}
        print(f"wrote {model_folder.save_folder(judge, args.out, outlier.CONFIG, training)}")


def wall_time(started: float) -> float:
    return round(time.perf_counter() - started, 1)


if __name__ == "__main__":
    main()
