"""`python -m train.legacy_checkpoint OLD NEW`: convert a checkpoint of the old format to a model folder.

The old format is the only place that needs `torch.load` (with `weights_only=True`): a model was a folder
with weights.pt and card.json (config, provenance and serving data in one file), a judge a `<name>.pt`
state dict with a `<name>.json` card beside it. The tensors are copied unchanged; the card is split into
config.json, training.json and serving.json, with the old config keys renamed (`encoder_conditional`,
`cnf_conditional`) and `sample_solver` dropped (a model's default solvers are serving data: serving.json's
calibrated ones), and training.json records which file the weights came from.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from latent_cnf import judges, model_folder, outlier
from latent_cnf.config import ModelConfig
from latent_cnf.model import LatentCNF

OLD_WEIGHTS, OLD_CARD = "weights.pt", "card.json"
RENAMED_CONFIG_KEYS = {"encoder_conditional": "encoder_uses_labels", "cnf_conditional": "prior_uses_labels"}
DROPPED_CONFIG_KEYS = ("sample_solver",)
SERVING_KEYS = ("score_reference", "ood_reference", "solvers")
OLD_FILE_RECORDS = ("sha256", "bytes")  # a judge card's facts about its old .pt file, not about the training


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        return state
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise model_folder.ModelFolderError(f"cannot read {path}: {error}") from error


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise model_folder.ModelFolderError(f"{path}: not a readable JSON card: {error}") from error
    if not isinstance(card, dict):
        raise model_folder.ModelFolderError(f"{path}: not a JSON object")
    return card


def _origin(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _converted_judge(old_sha256: str) -> dict[str, str] | None:
    """The shipped judge folder converted from the old file with this checksum, as serving data names it."""
    for name in model_folder.available(model_folder.JUDGES_DIR):
        origin = model_folder.read_training(name, model_folder.JUDGES_DIR).get("converted_from", {})
        if origin.get("sha256") == old_sha256:
            return {"judge": name, "sha256": model_folder.weights_sha256(name, model_folder.JUDGES_DIR)}
    return None


def convert_model(old: Path, new: Path) -> Path:
    """A model folder from an old weights.pt + card.json folder."""
    card = _read_card(old / OLD_CARD)
    if not isinstance(card.get("config"), dict):
        raise model_folder.ModelFolderError(f"{old / OLD_CARD}: no `config` object: not a model's card")
    old_config = card.pop("config").items()
    try:
        config = ModelConfig.from_dict(
            {RENAMED_CONFIG_KEYS.get(k, k): v for k, v in old_config if k not in DROPPED_CONFIG_KEYS}
        )
    except (TypeError, ValueError) as error:
        raise model_folder.ModelFolderError(f"{old / OLD_CARD}: invalid config: {error}") from error
    model, state = LatentCNF(config), _read_state(old / OLD_WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise model_folder.ModelFolderError(f"{old}: weights do not match the config: {error}") from error
    serving = {key: card.pop(key) for key in SERVING_KEYS if key in card}
    judge = serving.get("ood_reference", {}).get("outlier_judge")
    if judge is not None and (converted := _converted_judge(judge["sha256"])) is not None:
        serving["ood_reference"]["outlier_judge"] = converted
    training = {**card, "converted_from": _origin(old / OLD_WEIGHTS)}
    return model_folder.save_pretrained(model, new, training, serving or None)


def convert_judge(old: Path, new: Path) -> Path:
    """A judge's model folder from an old <name>.pt with its <name>.json card: a classifier or the outlier judge."""
    state = _read_state(old)
    module, config = (
        (judges.Classifier(), judges.CONFIG)
        if "head.1.weight" in state
        else (
            outlier.OutlierJudge(),
            outlier.CONFIG,
        )
    )
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise model_folder.ModelFolderError(f"{old}: not a judge's weights: {error}") from error
    card = _read_card(old.with_suffix(".json"))
    training = {k: v for k, v in card.items() if k not in OLD_FILE_RECORDS} | {"converted_from": _origin(old)}
    return model_folder.save_folder(module, new, config, training)


def convert(old: Path, new: Path) -> Path:
    if old.is_dir():
        return convert_model(old, new)
    if old.suffix == ".pt":
        return convert_judge(old, new)
    raise model_folder.ModelFolderError(f"{old}: neither a folder with {OLD_WEIGHTS} nor a judge's .pt file")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.legacy_checkpoint", description=__doc__)
    parser.add_argument("old", type=Path, help=f"old checkpoint folder ({OLD_WEIGHTS} + {OLD_CARD}) or judge .pt")
    parser.add_argument("new", type=Path, help="model folder to write")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {convert(args.old, args.new)}")
    except model_folder.ModelFolderError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
