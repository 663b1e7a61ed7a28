"""Checkpoints: weights + JSON config + model card. Loading never executes code from the file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig, SolverConfig
from .model import LatentCNF

SHIPPED_DIR = Path(__file__).parent / "checkpoints"
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "card.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or its weights do not fit its config."""


def available() -> list[str]:
    """Names of the checkpoints shipped with the package."""
    return sorted(p.parent.name for p in SHIPPED_DIR.glob(f"*/{CARD_FILE}") if (p.parent / WEIGHTS_FILE).exists())


def resolve(name_or_path: str | Path) -> Path:
    """A shipped checkpoint's name, or a checkpoint folder."""
    path = Path(name_or_path)
    if (path / CARD_FILE).exists():
        return path
    shipped = SHIPPED_DIR / str(name_or_path)
    if (shipped / CARD_FILE).exists():
        return shipped
    raise CheckpointError(f"no checkpoint {name_or_path!r}: not a folder with {CARD_FILE}, nor one of {available()}")


def display_name(folder: str | Path) -> str:
    """A checkpoint's name for tables and files: its folder, or the run's for runs/<name>/checkpoint."""
    path = Path(folder)
    return path.parent.name if path.name == "checkpoint" else path.name


def save(model: LatentCNF, folder: str | Path, card: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)
    full_card = {**card, "config": model.config.to_dict()}
    (folder / CARD_FILE).write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n")
    return folder


def read_card(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve(name_or_path) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON card: {error}") from error


def update_card(name_or_path: str | Path, fields: dict[str, Any]) -> Path:
    """Merge `fields` into a checkpoint's card (e.g. the calibrated solvers); the weights are not touched."""
    folder = resolve(name_or_path)
    card = {**read_card(folder), **fields}
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return folder


def card_solvers(card: dict[str, Any]) -> dict[str, SolverConfig]:
    """The calibrated default solvers a card holds ("sample", "score"), if train.calibrate wrote them."""
    fields = {f.name for f in dataclasses.fields(SolverConfig)}
    return {
        use: SolverConfig(**{k: v for k, v in spec.items() if k in fields})
        for use, spec in card.get("solvers", {}).items()
        if use in ("sample", "score")
    }


def sha256(name_or_path: str | Path) -> str:
    return hashlib.sha256((resolve(name_or_path) / WEIGHTS_FILE).read_bytes()).hexdigest()


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> LatentCNF:
    """A ready model in eval mode on `device`, with the card's calibrated solvers as its defaults."""
    folder = resolve(name_or_path)
    card = read_card(folder)
    try:
        config = ModelConfig.from_dict(card["config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{folder}: invalid config in {CARD_FILE}: {error}") from error
    try:
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{folder}: cannot read {WEIGHTS_FILE}: {error}") from error
    model = LatentCNF(config)
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{folder}: weights do not match the config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}, wrong shape {sorted(wrong)}"
        )
    model.load_state_dict(state)
    try:
        solvers = card_solvers(card)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{folder / CARD_FILE}: invalid solvers: {error}") from error
    for use, solver in solvers.items():
        setattr(model, f"{use}_solver", solver)
    return model.to(device).eval()
