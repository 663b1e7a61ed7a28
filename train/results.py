"""python -m train.results FILE.json ...: the evaluation JSONs as the Markdown table of docs/results.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latent_cnf import model_folder

COLUMNS = (
    "checkpoint", "test NLL", "-ELBO", "latent NLL", "FID (floor)", "precision / recall", "label acc.",
    "OOD AUROC (other; noise)", "sample NFE", "K / N / M", "training (epochs, time, device)",
)  # fmt: skip


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def label_accuracy(result: dict) -> str:
    """At temperature 1, then at each lower temperature measured: 0.712 (0.879 at T=0.6)."""
    colder = [f"{_f(q['label_accuracy'], 3)} at T={t}" for t, q in result.get("by_temperature", {}).items()]
    cell = _f(result["label_accuracy"], 3)
    return f"{cell} ({', '.join(colder)})" if colder and result["label_accuracy"] is not None else cell


def row(result: dict) -> str:
    name = model_folder.display_name(result["checkpoint"])
    training = result["training"]
    k, k_ood = result["importance_samples"], result["ood_importance_samples"]
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
        label_accuracy(result),
        ood,
        _f(result["sample_nfe_mean"], 0),
        f"{k}{'' if k == k_ood else f' (OOD {k_ood})'} / {result['num_samples']} / {result['test_images']}",
        f"{training['epochs']:g} ep., {training['wall_time_s'] / 60:.0f} min, {training['device']}",
    )
    return "| " + " | ".join(cells) + " |"


def is_evaluation(result: dict) -> bool:
    """A `python -m train.evaluate` JSON (docs/results/ also holds other commands' results)."""
    return {"checkpoint", "dataset", "test_nll_nats"} <= result.keys()


def table(paths: list[Path]) -> str:
    """The Markdown table of the evaluation JSONs among `paths`, best likelihood first per dataset."""
    results = [json.loads(path.read_text()) for path in paths]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    evaluations = [result for result in results if is_evaluation(result)]
    ordered = sorted(evaluations, key=lambda r: (r["dataset"] != "mnist", r["dataset"], r["test_nll_nats"]))
    return "\n".join(lines + [row(result) for result in ordered])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.results", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="evaluation JSONs (others, e.g. a judge's, are skipped)")
    args = parser.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            parser.error(f"no such file: {path}")
        if not is_evaluation(json.loads(path.read_text())):
            print(f"skipped {path}: not a train.evaluate result", file=sys.stderr)
    print(table(args.files))


if __name__ == "__main__":
    main()
