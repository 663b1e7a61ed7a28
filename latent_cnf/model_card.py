"""The README.md of a model folder: a model card with the YAML front matter model hubs read.

Written from the folder's JSON files whenever they change, so the card never says more than they hold;
nothing loads a model from it. Test metrics come from docs/results/<name>.json (source checkouts only),
and only when that evaluation was of this very training run (same command and epochs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

RESULTS_DIR = Path(__file__).resolve().parents[1] / "docs" / "results"
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


def _metrics(values: dict[str, Any], keys: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"type": key, "name": key, "value": values[key]}
        for key in keys
        if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool)
    ]


def _evaluation(name: str, training: dict[str, Any]) -> dict[str, Any] | None:
    """docs/results/<name>.json when it evaluated this run's weights."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    run = result.get("training", {})
    same = run.get("command") == training.get("command") and run.get("epochs") == training.get("epochs")
    return result if same else None


def _result(task: str, dataset: str, split: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    hub_id = HUB_DATASETS.get(dataset, dataset)
    return {
        "task": {"type": task},
        "dataset": {"type": hub_id, "name": dataset, "split": split},
        "metrics": metrics,
    }


def render(name: str, config: dict[str, Any], training: dict[str, Any], serving: dict[str, Any]) -> str:
    """The card of a generative model (its config has a latent_dim) or of a judge."""
    generative = "latent_dim" in config
    dataset = training.get("dataset", "mnist")
    task = "unconditional-image-generation" if generative else "image-classification"
    results = []
    if generative:
        validation = training.get("validation", {})
        nats = sorted(key for key in validation if key.endswith("_nats"))
        results.append(_result(task, dataset, "validation", _metrics(validation, nats)))
        if (evaluation := _evaluation(name, training)) is not None:
            results.append(_result(task, dataset, "test", _metrics(evaluation, TEST_METRICS)))
    else:
        for split, key in (("validation", "val_accuracy"), ("test", "test_accuracy")):
            results.append(_result(task, dataset, split, _metrics(training, (key,))))
    front = {
        "license": "mit",
        "library_name": "latent-cnf",
        "datasets": [HUB_DATASETS.get(dataset, dataset)],
        "tags": ["latent-cnf", "pytorch", "safetensors"]
        + (["vae", "continuous-normalizing-flow", "likelihood"] if generative else ["judge"]),
        "pipeline_tag": task,
    }
    if results := [r for r in results if r["metrics"]]:
        front["model-index"] = [{"name": name, "results": results}]
    if generative:
        description = training.get("description") or "A latent-cnf model."
        load = f'import latent_cnf\n\nmodel = latent_cnf.load("{name}")'
    else:
        description, load = (text.format(dataset=dataset) for text in JUDGES[config["architecture"]])
    provenance = (
        ("command", "`{}`", training.get("command")),
        ("git commit", "`{}`", training.get("git_commit")),
        ("wall time", "{} s", training.get("wall_time_s")),
        ("device", "{}", training.get("device")),
        ("torch", "{}", training.get("torch")),
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
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
        f"- dataset: {dataset}",
        *(f"- {label}: {form.format(value)}" for label, form, value in provenance if value is not None),
    ]
    if serving:
        lines += ["", "## Serving", ""]
        for use, spec in sorted(serving.get("solvers", {}).items()):
            if use in ("sample", "score"):
                lines.append(f"- calibrated {use} solver: {spec['method']} x {spec['steps']} ({spec.get('nfe')} NFE)")
        if reference := serving.get("score_reference"):
            split = reference.get("split", f"{dataset} test")
            lines.append(
                f"- score reference: the first {reference['images']} images of {split}, "
                f"K = {reference['importance_samples']} ({reference['binarization']})"
            )
        if "ood_reference" in serving:
            lines.append("- OOD bounds: calibrated (train.ood_calibrate)")
    files = "config.json (architecture), training.json (full provenance)"
    lines += ["", f"Files: model.safetensors (weights), {files}{', serving.json' if serving else ''}."]
    return "\n".join(lines) + "\n"
