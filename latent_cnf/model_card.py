"""The README.md of a model folder: a model card with the YAML front matter model hubs read.

Written from the folder's JSON files whenever they change, so the card never says more than they hold and
renders from the folder alone (an installed wheel has no docs/); nothing loads a model from it. Test metrics
come from the folder's evaluation.json, which only an evaluation of these very weights writes.
"""

from __future__ import annotations

from typing import Any

import yaml

from .config import SolverConfig

HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
JUDGES = {
    "classifier": (
        "The judge classifier of {dataset}: its penultimate features and predictions score generated images "
        "(FID, precision/recall, label accuracy in train/evaluate.py).",
        'from latent_cnf.judges import load_classifier\n\njudge = load_classifier("{dataset}")',
    ),
    "outlier-judge": (
        "The outlier-exposure judge: its digit logit tells a digit from a non-digit, one signal of the service's "
        "out-of-distribution rule (latent_cnf/ood.py).",
        "from latent_cnf import outlier\n\njudge = outlier.load().judge",
    ),
}
TEST_METRICS = ("test_nll_nats", "test_elbo_nats", "latent_nll_nats", "fid", "precision", "recall", "label_accuracy")
# The provenance hubs index (front matter `training:`) and people read (the Training section); `command` is
# the command as it was run, `current_command` today's equivalent where modules or paths have moved since.
PROVENANCE = (
    ("command", "command", "`{}`"),
    ("current_command", "command today", "`{}`"),
    ("git_commit", "git commit", "`{}`"),
    ("wall_time_s", "wall time", "{} s"),
    ("device", "device", "{}"),
)


def _metrics(values: dict[str, Any], keys: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"type": key, "name": key, "value": values[key]}
        for key in keys
        if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool)
    ]


def _result(task: str, dataset: str, split: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    hub_id = HUB_DATASETS.get(dataset, dataset)
    return {
        "task": {"type": task},
        "dataset": {"type": hub_id, "name": dataset, "split": split},
        "metrics": metrics,
    }


def _evaluation_lines(evaluation: dict[str, Any]) -> list[str]:
    """The Evaluation section: the headline test metrics and how they were measured."""
    protocol = [
        f"{symbol} = {evaluation[key]} {what}"
        for symbol, key, what in (
            ("K", "importance_samples", "importance samples"),
            ("M", "test_images", "test images"),
            ("N", "num_samples", "generated samples"),
        )
        if evaluation.get(key) is not None
    ]
    if solver := evaluation.get("sample_solver"):
        protocol.append(f"sampled by {SolverConfig(**solver)}")
    lines = ["", "## Evaluation", ""]
    lines += [f"- {m['name']}: {m['value']:.4f}" for m in _metrics(evaluation, TEST_METRICS)]
    lines += [f"- protocol: {', '.join(protocol)}"] if protocol else []
    lines += [f"- command: `{evaluation['command']}`"] if evaluation.get("command") else []
    lines += [f"- date: {evaluation['date']}"] if evaluation.get("date") else []
    return lines


def render(
    name: str,
    config: dict[str, Any],
    training: dict[str, Any],
    serving: dict[str, Any],
    solvers: dict[str, SolverConfig],
    evaluation: dict[str, Any],
    load_as: str | None,
) -> str:
    """The card of a generative model (its config has a latent_dim) or of a judge. `solvers` are serving's
    calibrated ones, parsed; `load_as` the shipped name `latent_cnf.load` takes, None for a folder elsewhere
    (the snippet then shows a path). A training record without a dataset names none."""
    generative = "latent_dim" in config
    dataset: str | None = training.get("dataset")
    task = "unconditional-image-generation" if generative else "image-classification"
    results = []
    if generative:
        validation = training.get("validation", {})
        nats = sorted(key for key in validation if key.endswith("_nats"))
        if dataset is not None:
            results.append(_result(task, dataset, "validation", _metrics(validation, nats)))
        if (tested := evaluation.get("dataset", dataset)) is not None:
            results.append(_result(task, tested, "test", _metrics(evaluation, TEST_METRICS)))
    elif dataset is not None:
        for split, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
            results.append(_result(task, dataset, split, _metrics(training, (key,))))
    front: dict[str, Any] = {"license": "mit", "library_name": "latent-cnf"}
    if dataset is not None:
        front["datasets"] = [HUB_DATASETS.get(dataset, dataset)]
    front["tags"] = ["latent-cnf", "pytorch", "safetensors"] + (
        ["vae", "continuous-normalizing-flow", "likelihood"] if generative else ["judge"]
    )
    front["pipeline_tag"] = task
    if provenance := {key: training[key] for key, _, _ in PROVENANCE if training.get(key) is not None}:
        front["training"] = provenance
    if results := [r for r in results if r["metrics"]]:
        front["model-index"] = [{"name": name, "results": results}]
    if generative:
        description = training.get("description") or "A latent-cnf model."
        call = f'latent_cnf.load("{load_as}")' if load_as else 'latent_cnf.load("<path>")  # <path>: this folder'
        load = f"import latent_cnf\n\nmodel = {call}"
    else:
        description, load = (text.format(dataset=dataset) for text in JUDGES[config["architecture"]])
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, width=10_000).rstrip(),  # a command on one line
        "---",
        "",
        f"# {name}",
        "",
        description,
        "",
        "## How to load",
        "",
        "```python",
        load,
        "```",
        "",
        "## Training",
        "",
        *([f"- dataset: {dataset}"] if dataset is not None else []),
        *(f"- {label}: {form.format(provenance[key])}" for key, label, form in PROVENANCE if key in provenance),
        *([f"- torch: {training['torch']}"] if training.get("torch") is not None else []),
    ]
    if evaluation:
        lines += _evaluation_lines(evaluation)
    if serving:
        lines += ["", "## Serving", ""]
        for use, solver in sorted(solvers.items()):
            entry = serving["solvers"][use]
            measured = [f"{entry['nfe']} NFE"] if entry.get("nfe") is not None else []
            measured += [_heldout_errors(entry["heldout"])] if "heldout" in entry else []
            lines.append(f"- calibrated {use} solver: {solver}" + (f" ({'; '.join(measured)})" if measured else ""))
        if reference := serving.get("score_reference"):
            split = reference.get("split", f"{dataset} test" if dataset else "the test set")
            lines.append(
                f"- score reference: the first {reference['images']} images of {split}, "
                f"K = {reference['importance_samples']} ({reference['binarization']})"
            )
        if "ood_reference" in serving:
            lines.append("- OOD bounds: calibrated (train.ood_calibrate)")
    files = ["model.safetensors (weights)", "config.json (architecture)", "training.json (full provenance)"]
    files += ["serving.json"] if serving else []
    files += ["evaluation.json"] if evaluation else []
    lines += ["", f"Files: {', '.join(files)}."]
    return "\n".join(lines) + "\n"


def _heldout_errors(heldout: dict[str, Any]) -> str:
    """A calibrated solver's errors on train.calibrate's held-out draw: what its budget is known to hold on."""
    if "max_pixel_error" in heldout:
        return f"held out: worst pixel error {heldout['max_pixel_error']:.3f}, FID change {heldout['fid_change']:.3%}"
    return f"held out: worst score error {heldout['max_error_nats']:.4f} nats"
