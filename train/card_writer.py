"""What the commands that measure a checkpoint and write the result into its card share (train.calibrate,
train.ood_calibrate): the run from arguments to card, and the provenance every result carries."""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latent_cnf import checkpoints, data

from .loop import git_commit


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
    parser.add_argument("--checkpoint", required=True, help="shipped checkpoint name or checkpoint folder")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--dry-run", action="store_true", help="print the results, leave the card as it is")
    return parser


def run(
    module: str,
    parser: argparse.ArgumentParser,
    measure: Callable[[argparse.Namespace, str], dict[str, Any]],
    report: Callable[[dict[str, Any]], None],
    card_key: str,
    argv: list[str] | None = None,
) -> None:
    """Parse, measure, print the report, then write the result under `card_key` (unless --dry-run); data and
    checkpoint errors end the command with their message, not a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args, shlex.join(["python", "-m", module, *argv]))
    except (data.DataError, checkpoints.CheckpointError) as error:
        raise SystemExit(f"error: {error}") from None
    report(result)
    if not args.dry_run:
        folder = checkpoints.update_card(args.checkpoint, {card_key: result})
        print(f"wrote {card_key} to {folder / checkpoints.CARD_FILE}")
