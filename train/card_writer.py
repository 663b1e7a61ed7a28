"""What the commands that measure a model and write the result into its serving.json share (train.calibrate,
train.ood_calibrate): the run from arguments to model folder, and the provenance every result carries."""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from latent_cnf import data, model_folder

from .cli import options_from
from .loop import git_commit


@dataclass(frozen=True)
class CardOptions:
    """What every such command is given: which checkpoint, where the data is, the device. A command's options
    add its own fields (with defaults) to these."""

    checkpoint: str
    data_dir: Path | None = None
    device: str = "auto"


Options = TypeVar("Options", bound=CardOptions)


def provenance(command: str, device: torch.device | str, started: float) -> dict[str, Any]:
    """How a result was made: the exact command, the code, when, where, and how long it took."""
    return {
        "command": command,
        "git_commit": git_commit(),
        "date": datetime.date.today().isoformat(),
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }


def parser(module: str, description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """A parser with the options every such command has: which checkpoint, where the data is, the device,
    the threads, and --dry-run."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description, **kwargs)
    parser.add_argument("--checkpoint", required=True, help="shipped model name or model folder")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--device", default=CardOptions.device, help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
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
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(options_from(args, options), shlex.join(["python", "-m", module, *argv]))
    except (data.DataError, model_folder.ModelFolderError) as error:
        raise SystemExit(f"error: {error}") from None
    report(result)
    if not args.dry_run:
        folder = model_folder.update_serving(args.checkpoint, {serving_key: result})
        print(f"wrote {serving_key} to {folder / model_folder.SERVING_FILE}")
