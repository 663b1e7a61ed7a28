"""python -m train: train a preset and export a model folder (weights, config, provenance, serving data, card).

Under `torchrun --nproc_per_node=N -m train ...` (or --nnodes with a rendezvous) the run is data-parallel:
--batch-size stays the global batch, split evenly over the N processes, and the learning rate, the epochs and
the steps per epoch are those of one process, so N changes the wall time and not the run (docs/operations.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from latent_cnf.config import ModelConfig
from latent_cnf.data import DataError
from train.presets import PRESETS, TrainConfig

from . import cli, distributed
from .loop import RunOptions, Trainer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="final-cond", help="what to train (--list-presets)"
    )
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument(
        "--batch-size", type=int, help="override the preset's batch size (the global batch under torchrun)"
    )
    parser.add_argument("--lr", type=float, help="override the preset's learning rate")
    parser.add_argument("--seed", type=int, help="override the preset's seed")
    parser.add_argument("--device", default="auto", help=cli.DEVICE_HELP)  # RunOptions holds the resolved one
    cli.add_flags(parser, RunOptions)
    parser.add_argument(
        "--out", type=Path, help="run folder: state, metrics.jsonl, pictures (default runs/<preset>-<dataset>)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override any TrainConfig field, e.g. --set adversarial=false --set kl_warmup_steps=2000",
    )
    parser.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override any ModelConfig field, e.g. --model-set 'decoder_hidden=[512,512]' (repeat it on --resume)",
    )
    return parser


def parse_sets(
    items: list[str], config_cls: type[TrainConfig] | type[ModelConfig], flag: str = "--set"
) -> dict[str, Any]:
    """KEY=JSON overrides of the fields of `config_cls` (a bare word is taken as a string). A nested config
    (a solver) is replaced whole: give all its fields."""
    fields = set(config_cls.__dataclass_fields__)
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"{flag} {item!r}: expected KEY=JSON with KEY one of {sorted(fields)}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(build_parser(), argv)
    if args.list_presets:
        for name, preset in PRESETS.items():
            print(f"{name:15s} {preset.description}")
            print(f"{'':15s} model: {json.dumps(preset.model.to_dict())}")
            print(f"{'':15s} train: {json.dumps(preset.train.to_dict())}")
        return
    preset = PRESETS[args.preset]
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    overrides = {k: v for k, v in overrides.items() if v is not None} | parse_sets(args.set, TrainConfig)
    train = TrainConfig.from_dict(preset.train.to_dict() | overrides)
    model = ModelConfig.from_dict(preset.model.to_dict() | parse_sets(args.model_set, ModelConfig, "--model-set"))
    preset = dataclasses.replace(preset, model=model, train=train)
    options = cli.options_from(
        args,
        RunOptions,
        preset=preset,
        out=args.out or Path("runs") / f"{args.preset}-{args.dataset}",
        device=distributed.setup(args.device),
        command=cli.command_line("train", argv),
    )
    reporter = distributed.is_main()  # rank 0 alone reports; asked now, before the process group is gone
    try:
        trainer = Trainer(options)  # reads the data set
        if reporter:
            print(f"run folder: {options.out.resolve()}", file=sys.stderr)
        metrics = trainer.run()
        del trainer  # its DDP wrappers hold threads of the process group: gone before the group is
    except DataError as error:
        raise SystemExit(f"error: {error}") from None  # the message says what to do; a traceback would bury it
    finally:
        distributed.teardown()
    if not reporter:
        return
    print(json.dumps(metrics, indent=2))
    print(f"run folder: {options.out.resolve()}, checkpoint: {options.checkpoint.resolve()}", file=sys.stderr)


if __name__ == "__main__":
    main()
