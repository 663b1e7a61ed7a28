"""`latent-cnf COMMAND ...`: one console script for every command, as `vllm serve` or `bentoml serve`.

Each command is the `main(argv)` of a module that `python -m MODULE` also runs, so both spellings take the same
flags (`latent-cnf evaluate --help` is `python -m train.evaluate --help`). The modules are imported only when
their command runs: the model package needs neither the service nor training installed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import NamedTuple


class Command(NamedTuple):
    module: str  # the module whose main(argv) runs the command; `python -m` runs it too
    extra: str  # the optional dependencies it needs: pip install 'latent-cnf[extra]'
    summary: str


COMMANDS: dict[str, Command] = {
    "serve": Command("service.__main__", "serve", "the web service and its page (the shipped models by default)"),
    "train": Command("train.__main__", "train", "train a preset and export a model folder"),
    "evaluate": Command("train.evaluate", "train", "NLL, FID, label accuracy and OOD AUROC of a checkpoint"),
    "calibrate": Command("train.calibrate", "train", "the cheapest fixed-step solvers within an error budget"),
    "ood-calibrate": Command("train.ood_calibrate", "train", "the out-of-distribution bounds of a model folder"),
    "latent-map": Command("train.latent_map", "train", "the fixed 2-D view of a model's latent space"),
    "pictures": Command("train.pictures", "train", "a checkpoint's pictures for the docs"),
    "results": Command("train.results", "train", "the results table from evaluation JSONs"),
    "judge-classifier": Command("train.judge_classifier", "train", "train the classifier that judges samples"),
    "outlier-judge": Command("train.outlier_judge", "train", "train the digit-or-not judge of the OOD verdict"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"  {name:<{width}}  {command.summary} (python -m {command.module.removesuffix('.__main__')})"
        for name, command in COMMANDS.items()
    ]
    return (
        "usage: latent-cnf COMMAND [ARGS ...]   (latent-cnf COMMAND --help for its flags)\n\ncommands:\n"
        + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        raise SystemExit(f"latent-cnf: no command {name!r}\n\n{usage()}")
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as error:
        raise SystemExit(f"latent-cnf {name} needs {error.name!r}: pip install 'latent-cnf[{command.extra}]'") from None
    run: Callable[[list[str]], None] = module.main
    run(rest)
