"""What the commands that measure a model and write the result into its serving.json share (train.calibrate,
train.ood_calibrate): the run from arguments to model folder, and the provenance every result carries."""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from latent_cnf import data, model_folder

from . import cli
from .loop import git_commit


@dataclass(frozen=True)
class FolderOptions:
    """What every such command is given: which model folder, where the data is, the device, a seed. A command's
    options add its own fields (with defaults) to these."""

    checkpoint: str = cli.flag(help=cli.CHECKPOINT_HELP)
    data_dir: Path | None = cli.flag(None, help=cli.DATA_DIR_HELP)
    device: str = cli.flag("auto", help=cli.DEVICE_HELP)
    seed: int = cli.flag(0, help="random seed")  # a command says what its seed drives in its own field


Options = TypeVar("Options", bound=FolderOptions)


def provenance(command: str, device: torch.device | str, started: float) -> dict[str, Any]:
    """How a result was made: the exact command, the code, when, where, and how long it took."""
    return {
        "command": command,
        "git_commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parser(
    module: str, description: str | None, options: type[FolderOptions], **kwargs: Any
) -> argparse.ArgumentParser:
    """A parser with the flags of `options` (cli.add_flags: the checkpoint, the data, the device, the seed, which
    each command draws for its own purpose, the command's own, and --threads), and --dry-run."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description, **kwargs)
    cli.add_flags(parser, options)
    parser.add_argument("--dry-run", action="store_true", help="print the results, leave the folder as it is")
    return parser


def run(
    module: str,
    parser: argparse.ArgumentParser,
    options: type[Options],
    measure: Callable[[Options, str], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    serving_key: str,
    argv: list[str] | None = None,
) -> None:
    """Parse into `options`, measure, print the report, then write the result under `serving_key` of
    serving.json, which rewrites the model card too (unless --dry-run); data and model-folder errors end the
    command with their message, not a traceback."""
    args = cli.parse(parser, argv)
    try:
        result = measure(cli.options_from(args, options), cli.command_line(module, argv))
    except (data.DataError, model_folder.ModelFolderError) as error:
        raise SystemExit(f"error: {error}") from None
    report(result)
    if not args.dry_run:
        folder = model_folder.update_serving(args.checkpoint, {serving_key: result})
        print(f"wrote {serving_key} to {folder / model_folder.SERVING_FILE}")
