"""How good are completions: on N test digits (the first, or from --start) with one half observed, the
effective sample size of the completion sampler's weights against the prior alone as proposal, and how well the
completions predict the hidden half (mean log-likelihood per hidden pixel under the decoder, weighted by the
completions' weights) against unconditional samples of the same model. tests/test_completion.py asserts on the
same measurement.

    python bench/completion.py --checkpoint mnist-final-cond --data-dir ../shared/data [--images 100] [--json out.json]
    python bench/completion.py --start 1000 --images 1000    # digits the sampler's design never saw
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if not __package__:  # `python bench/completion.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import latent_cnf
from latent_cnf import data
from latent_cnf.completion import MASKS, complete, log_unobserved_per_pixel, named_mask
from latent_cnf.images import binarize_at_threshold
from latent_cnf.model import LatentCNF
from train.metrics.intervals import t_interval


@dataclass(frozen=True)
class Measurement:
    images: int
    mask: str
    importance_samples: int  # per label
    completions: int  # k per image
    ess_mixture: list[float]  # per image: the sampler's effective sample size
    ess_prior: list[float]  # per image: with the prior alone as proposal, same K
    completed: list[float]  # per image: weighted mean log-likelihood per hidden pixel of the k completions
    unconditional: list[float]  # per image: mean over k unconditional samples
    label_accuracy: float | None  # argmax of p(label | observed half) against the true label

    def summary(self) -> dict[str, float | int | str | None]:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        better = sum(c > u for c, u in zip(self.completed, self.unconditional, strict=True))
        gains = [c - u for c, u in zip(self.completed, self.unconditional, strict=True)]
        return {
            "images": self.images,
            "mask": self.mask,
            "importance_samples_per_label": self.importance_samples,
            "mean_ess_mixture": mean(self.ess_mixture),
            "median_ess_mixture": float(torch.tensor(self.ess_mixture).median()),
            "mean_ess_prior": mean(self.ess_prior),
            "median_ess_prior": float(torch.tensor(self.ess_prior).median()),
            "completed_nats_per_hidden_pixel": mean(self.completed),
            "unconditional_nats_per_hidden_pixel": mean(self.unconditional),
            "completions_better": better / self.images,
            "label_accuracy": self.label_accuracy,
            "gain_nats_per_hidden_pixel": mean(gains),
            "gain_95_interval": interval(gains),
            "ess_mixture_95_interval": interval(self.ess_mixture),
        }


def interval(values: list[float]) -> str:
    """The mean's 95 % t-interval over the digits."""
    _, low, high = t_interval(values)
    return f"{low:.4g} .. {high:.4g}"


def measure(
    model: LatentCNF, split: data.Split, mask_name: str = "top", importance_samples: int = 16, k: int = 8
) -> Measurement:
    """Completions (seed i for image i) and k unconditional samples (seed 0) per digit of `split`."""
    n = len(split)
    images = binarize_at_threshold(data.to_float(split.images))
    mask = named_mask(mask_name, model.config.image_size)
    masks, seeds = mask.expand(n, -1, -1), torch.arange(n)
    mixture = complete(model, images, masks, k, importance_samples, seeds)
    prior = complete(model, images, masks, 1, importance_samples, seeds, encoder_share=0.0)
    samples = model.sample(n * k, seed=0).latents.reshape(n, k, -1)
    completed, unconditional = [], []
    for image, done, drawn in zip(images, mixture, samples, strict=True):
        completed.append(float((done.weights * log_unobserved_per_pixel(model, done.latents, image, mask)).sum()))
        unconditional.append(float(log_unobserved_per_pixel(model, drawn, image, mask).mean()))
    accuracy = None
    if mixture[0].label_probabilities is not None:
        guesses = torch.stack([done.label_probabilities for done in mixture if done.label_probabilities is not None])
        accuracy = float((guesses.argmax(1) == split.labels).float().mean())
    return Measurement(
        images=n,
        mask=mask_name,
        importance_samples=importance_samples,
        completions=k,
        ess_mixture=[done.effective_sample_size for done in mixture],
        ess_prior=[done.effective_sample_size for done in prior],
        completed=completed,
        unconditional=unconditional,
        label_accuracy=accuracy,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/completion.py", description=__doc__)
    parser.add_argument("--checkpoint", default="mnist-final-cond", help="shipped model name or model folder")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--images", type=int, default=100, help="N test digits")
    parser.add_argument(
        "--start", type=int, default=0, help="first test index (1000: digits no choice of the sampler was made on)"
    )
    parser.add_argument("--mask", choices=MASKS, default="top", help="the observed half")
    parser.add_argument("--importance-samples", type=int, default=16, help="proposals per label")
    parser.add_argument("--k", type=int, default=8, help="completions per digit")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the summary and per-image values here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = latent_cnf.load(args.checkpoint)
    dataset = latent_cnf.model_folder.read_training(args.checkpoint).get("dataset", "mnist")
    split = data.load_split(dataset, "test", args.data_dir).subset(torch.arange(args.start, args.start + args.images))
    result = measure(model, split, args.mask, args.importance_samples, args.k)
    for name, value in result.summary().items():
        print(f"{name:<40} {value:.4g}" if isinstance(value, float) else f"{name:<40} {value}")
    if args.json:
        args.json.write_text(json.dumps({"summary": result.summary(), **asdict(result)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
