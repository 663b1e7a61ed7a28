"""python -m train.results FILE.json ...: the evaluation JSONs as the Markdown table of docs/results.md.

A number measured with an interval prints as `value (low .. high)`, its 95 % interval (train/evaluate.py says
over what). Results written before evaluate had seeds and intervals say `single seed (old)`: their -ELBO is the
old column (for label-gated models the average over all ten labels' proposals) and their K was per label."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latent_cnf import model_folder

COLUMNS = (
    "checkpoint", "test NLL", "-ELBO", "-ELBO (true label)", "latent NLL", "judge-feature FID",
    "precision / recall", "label acc.", "OOD AUROC (other; noise), raw, complexity-corrected", "sample NFE",
    "K / N / M", "seeds", "training (epochs, time, device)",
)  # fmt: skip


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def cell(result: dict, key: str, digits: int = 2) -> str:
    """`value`, or `value (low .. high)` where the result has the value's 95 % interval."""
    interval = result.get(f"{key}_interval")
    value = _f(result.get(key), digits)
    return value if interval is None else f"{value} ({_f(interval[0], digits)} .. {_f(interval[1], digits)})"


def label_accuracy(result: dict) -> str:
    """At temperature 1, then at each lower temperature measured: 0.712; 0.879 at T=0.6."""
    colder = [f"{cell(q, 'label_accuracy', 3)} at T={t}" for t, q in result.get("by_temperature", {}).items()]
    first = cell(result, "label_accuracy", 3)
    return "; ".join([first, *colder]) if colder and result["label_accuracy"] is not None else first


def row(result: dict) -> str:
    name = model_folder.display_name(result["checkpoint"])
    training = result["training"]
    k, k_ood = result["importance_samples"], result["ood_importance_samples"]
    old = "seeds" not in result
    ood = "; ".join(
        f"{cell(scores, 'likelihood', 3)}, corr. {cell(scores, 'complexity_corrected', 3)}"
        for scores in result["ood_auroc"].values()
    )
    proposals = f"{k}{'' if k == k_ood else f' (OOD {k_ood})'}{' per label' if old else ''}"
    cells = (
        name,
        cell(result, "test_nll_nats"),
        f"{_f(result['test_elbo_nats'])} (old def.)" if old else cell(result, "test_elbo_nats"),
        cell(result, "test_elbo_true_label_nats"),
        cell(result, "latent_nll_nats"),
        f"{cell(result, 'fid', 1)}, floor {_f(result['fid_reference'], 1)}",
        f"{cell(result, 'precision', 3)} / {cell(result, 'recall', 3)}",
        label_accuracy(result),
        ood,
        _f(result["sample_nfe_mean"], 0),
        f"{proposals} / {result['num_samples']} / {result['test_images']}",
        "single seed (old)" if old else ", ".join(map(str, result["seeds"])),
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
