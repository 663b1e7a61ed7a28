"""Seconds per optimiser step of a latent prior trained on a frozen encoder: flow matching (the `fm-cond` preset)
against maximum likelihood through the training solver (the same preset with the ML objective, RNODE's kinetic
term and the solver-gap guard's rk4 x 8, as `mnist-final-cond` was trained). Both are the trainer's own
`train_step` on the same batches, interleaved so that machine noise hits both alike. Flow matching's trainer
encodes the training set once, when it is built (not timed here); the ML step encodes and decodes its batch,
so the frozen encoder and decoder's forward pass on a batch is timed too: the ML step less that is what an
ML step on cached encodings could cost at best.

    python bench/prior_step.py --data-dir ../shared/data --threads 1 [--steps 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from train.loop import RunOptions, Trainer
from train.presets import PRESETS

VARIANTS = {
    "flow matching": {},
    "maximum likelihood, rk4 x 8": {"objective": "vae_cnf_prior", "kinetic_weight": 0.05, "max_solver_gap_nats": 0.2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="folder holding mnist/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS["fm-cond"]
    trainers = {
        name: Trainer(
            RunOptions(
                preset=dataclasses.replace(preset, train=dataclasses.replace(preset.train, **overrides)),
                data_dir=args.data_dir,
            )
        )
        for name, overrides in VARIANTS.items()
    }
    model = trainers["flow matching"].model
    batch = torch.rand(preset.train.batch_size, model.config.image_size**2)
    labels = torch.arange(len(batch)) % model.config.num_classes

    @torch.no_grad()
    def encode_decode() -> None:
        mean, _ = model.encode(batch, labels if model.config.encoder_uses_labels else None)
        model.decode(mean)

    timed = {name: trainer.train_step for name, trainer in trainers.items()} | {"encode + decode": encode_decode}
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    for step in range(3 + args.steps):
        for name, run in timed.items():
            start = time.perf_counter()
            run()
            if step >= 3:
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    fm, ml, coding = medians.values()
    ratios = {"ml_over_fm": ml / fm, "ml_without_coding_over_fm": (ml - coding) / fm}
    print(json.dumps({"median_seconds_per_step": medians, **ratios, "steps": args.steps}, indent=2))


if __name__ == "__main__":
    main()
