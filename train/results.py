"""python -m train.results FILE.json ...: the evaluation JSONs as the Markdown table of docs/results.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from latent_cnf import checkpoints

COLUMNS = (
    "checkpoint", "test NLL", "-ELBO", "latent NLL", "FID (floor)", "precision / recall", "label acc.",
    "OOD AUROC (other; noise)", "sample NFE", "K / N / M", "train wall time, device",
)  # fmt: skip


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def row(result: dict) -> str:
    name = Path(result["checkpoint"]).name
    card = checkpoints.read_card(result["checkpoint"])
    other, noise = (result["ood_auroc"][key] for key in result["ood_auroc"])
    ood = (
        f"{_f(other['likelihood'], 3)} ({_f(other['complexity_corrected'], 3)} corr.); "
        f"{_f(noise['likelihood'], 3)} ({_f(noise['complexity_corrected'], 3)} corr.)"
    )
    cells = (
        name,
        _f(result["test_nll_nats"]),
        _f(result["test_elbo_nats"]),
        _f(result["latent_nll_nats"]),
        f"{_f(result['fid'], 1)} ({_f(result['fid_reference'], 1)})",
        f"{_f(result['precision'], 3)} / {_f(result['recall'], 3)}",
        _f(result["label_accuracy"], 3),
        ood,
        _f(result["sample_nfe_mean"], 0),
        f"{result['importance_samples']} / {result['num_samples']} / {result['test_images']}",
        f"{card.get('wall_time_s', 0) / 60:.0f} min, {card.get('device', '?')}",
    )
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    files = argv if argv is not None else sys.argv[1:]
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for path in files:
        print(row(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main()
