"""Model folders: the one on-disk format of every model and judge of the project.

A folder holds `model.safetensors` (the weights: tensors only, so loading executes nothing), `config.json`
(what building the network needs), `training.json` (how it was made), `README.md` (a model card for people
and model hubs, written from the JSON files; never parsed on load) and, for generative models,
`serving.json` (what the service needs: score reference, OOD bounds, calibrated solvers),
`evaluation.json` (the headline test metrics, written by `python -m train.evaluate --record-in-folder`) and
`latent_map.json` (a fixed 2-D projection of the latent with projected test points, written by
`python -m train.latent_map`; see latent_cnf/latent_map.py).
Keeping the JSON files apart means a calibration or evaluation rewrites what it measured, never the weights
or their provenance; writing new weights drops the serving and evaluation data of the old ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import safetensors
import safetensors.torch
import torch
from torch import nn

from . import model_card
from .config import ModelConfig, SolverConfig
from .latent_map import LatentMap
from .model import LatentCNF

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
MODELS_DIR = PRETRAINED_DIR / "models"
JUDGES_DIR = PRETRAINED_DIR / "judges"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
SERVING_FILE = "serving.json"
EVALUATION_FILE = "evaluation.json"
LATENT_MAP_FILE = "latent_map.json"
CARD_FILE = "README.md"
FORMAT = "latent-cnf-model-folder/1"
Module = TypeVar("Module", bound=nn.Module)


class ModelFolderError(RuntimeError):
    """A model folder is missing, unreadable, or its weights do not fit its config."""


def available(root: Path = MODELS_DIR) -> list[str]:
    """Names of the folders shipped under `root` (the generative models by default)."""
    return sorted(p.parent.name for p in root.glob(f"*/{CONFIG_FILE}") if (p.parent / WEIGHTS_FILE).exists())


def resolve(name_or_path: str | Path, root: Path = MODELS_DIR) -> Path:
    """A shipped folder's name under `root`, or a model folder anywhere."""
    path = Path(name_or_path)
    if (path / CONFIG_FILE).exists():
        return path
    shipped = root / str(name_or_path)
    if (shipped / CONFIG_FILE).exists():
        return shipped
    raise ModelFolderError(
        f"no model folder {name_or_path!r}: not a folder with {CONFIG_FILE}, nor one of {available(root)}"
    )


def display_name(folder: str | Path) -> str:
    """A model's name for tables and files: its folder, or the run's for runs/<name>/checkpoint."""
    path = Path(folder)
    return path.parent.name if path.name == "checkpoint" else path.name


def _read_json(path: Path, required: bool = True) -> dict[str, Any]:
    if not required and not path.exists():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{path}: not a readable JSON file: {error}") from error
    if not isinstance(value, dict):
        raise ModelFolderError(f"{path}: not a JSON object")
    return value


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json without its format marker."""
    config = _read_json(Path(folder) / CONFIG_FILE)
    if config.pop("format", None) != FORMAT:
        raise ModelFolderError(f"{Path(folder) / CONFIG_FILE}: not a {FORMAT} config")
    return config


def read_training(name_or_path: str | Path, root: Path = MODELS_DIR) -> dict[str, Any]:
    return _read_json(resolve(name_or_path, root) / TRAINING_FILE)


def read_serving(name_or_path: str | Path) -> dict[str, Any]:
    """serving.json, or {} for a folder that has none (the service then answers without percentiles)."""
    return _read_json(resolve(name_or_path) / SERVING_FILE, required=False)


def _card(folder: Path, serving: dict[str, Any], evaluation: dict[str, Any]) -> str:
    """The card of the folder's config and training record with this serving and evaluation data; raises
    ModelFolderError for data the card cannot show, before anything is written."""
    shipped = folder.resolve().parent == MODELS_DIR.resolve()
    try:
        return model_card.render(
            display_name(folder),
            read_config(folder),
            _read_json(folder / TRAINING_FILE),
            serving,
            serving_solvers(serving),
            evaluation,
            load_as=display_name(folder) if shipped else None,
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ModelFolderError(f"{folder}: serving or evaluation data the card cannot show: {error!r}") from error


def write_card(folder: Path) -> None:
    """(Re)write README.md from the folder's JSON files."""
    serving = _read_json(folder / SERVING_FILE, required=False)
    evaluation = _read_json(folder / EVALUATION_FILE, required=False)
    (folder / CARD_FILE).write_text(_card(folder, serving, evaluation))


def save_folder(
    module: nn.Module,
    folder: str | Path,
    config: dict[str, Any],
    training: dict[str, Any],
    serving: dict[str, Any] | None = None,
) -> Path:
    """Write a model or judge: weights, config, provenance, serving data when given, and the card. An
    evaluation.json or latent_map.json already there is removed: they were measured on other weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    (folder / WEIGHTS_FILE).write_bytes(safetensors.torch.save(state, metadata={"format": "pt"}))
    _write_json(folder / CONFIG_FILE, {"format": FORMAT, **config})
    _write_json(folder / TRAINING_FILE, training)
    if serving is not None:
        _write_json(folder / SERVING_FILE, serving)
    else:
        (folder / SERVING_FILE).unlink(missing_ok=True)  # an older export's serving data would not fit
    (folder / EVALUATION_FILE).unlink(missing_ok=True)
    (folder / LATENT_MAP_FILE).unlink(missing_ok=True)  # projected other weights' encodings
    write_card(folder)
    return folder


def save_pretrained(
    model: LatentCNF,
    folder: str | Path,
    training: dict[str, Any] | None = None,
    serving: dict[str, Any] | None = None,
) -> Path:
    """Write a generative model's folder; its config is the model's ModelConfig, `training` its provenance
    (none recorded by default)."""
    return save_folder(model, folder, model.config.to_dict(), training or {}, serving)


def update_serving(name_or_path: str | Path, fields: dict[str, Any]) -> Path:
    """Merge `fields` into serving.json (e.g. calibrated solvers, OOD bounds) and rewrite the card; the
    weights and the training record are not touched. Malformed fields raise ModelFolderError and leave the
    folder as it was."""
    folder = resolve(name_or_path)
    serving = {**read_serving(folder), **fields}
    card = _card(folder, serving, _read_json(folder / EVALUATION_FILE, required=False))
    _write_json(folder / SERVING_FILE, serving)
    (folder / CARD_FILE).write_text(card)
    return folder


def record_evaluation(name_or_path: str | Path, evaluation: dict[str, Any]) -> Path:
    """Write evaluation.json (the headline test metrics of these weights) and rewrite the card."""
    folder = resolve(name_or_path)
    card = _card(folder, read_serving(folder), evaluation)
    _write_json(folder / EVALUATION_FILE, evaluation)
    (folder / CARD_FILE).write_text(card)
    return folder


def read_latent_map(name_or_path: str | Path) -> LatentMap | None:
    """latent_map.json, or None for a folder that has none (the service then serves no map)."""
    folder = resolve(name_or_path)
    if not (folder / LATENT_MAP_FILE).exists():
        return None
    latent_dim = int(read_config(folder)["latent_dim"])
    try:
        return LatentMap.from_dict(_read_json(folder / LATENT_MAP_FILE), latent_dim)
    except ValueError as error:
        raise ModelFolderError(f"{folder / LATENT_MAP_FILE}: {error}") from error


def write_latent_map(name_or_path: str | Path, latent_map: LatentMap) -> Path:
    """Write latent_map.json; the weights, the other JSON files and the card are not touched."""
    folder = resolve(name_or_path)
    _write_json(folder / LATENT_MAP_FILE, latent_map.to_dict())
    return folder / LATENT_MAP_FILE


def serving_solvers(serving: dict[str, Any]) -> dict[str, SolverConfig]:
    """The calibrated default solvers ("sample", "score") in serving data, if train.calibrate wrote them."""
    fields = {f.name for f in dataclasses.fields(SolverConfig)}
    try:
        return {
            use: SolverConfig(**{k: v for k, v in spec.items() if k in fields})
            for use, spec in serving.get("solvers", {}).items()
            if use in ("sample", "score")
        }
    except (AttributeError, TypeError, ValueError) as error:
        raise ModelFolderError(f"invalid solvers in serving data: {error}") from error


def weights_sha256(name_or_path: str | Path, root: Path = MODELS_DIR) -> str:
    return hashlib.sha256((resolve(name_or_path, root) / WEIGHTS_FILE).read_bytes()).hexdigest()


def load_judge(module: Module, folder: Path, config: dict[str, Any]) -> Module:
    """A judge's folder into `module`, in eval mode, refused unless its config is the one the code builds."""
    if read_config(folder) != config:
        raise ModelFolderError(f"{folder}: not a {config} judge")
    return load_weights(module, folder).eval()


def load_weights(module: Module, folder: Path) -> Module:
    """Fill `module` with the folder's weights, which must match its parameters name for name and shape."""
    path = folder / WEIGHTS_FILE
    try:
        state = safetensors.torch.load_file(path, device="cpu")
    except (OSError, safetensors.SafetensorError) as error:
        raise ModelFolderError(f"{folder}: cannot read {WEIGHTS_FILE} as safetensors: {error}") from error
    expected = module.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ModelFolderError(
            f"{folder}: weights do not match the config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}, wrong shape {sorted(wrong)}"
        )
    module.load_state_dict(state)
    return module


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> LatentCNF:
    """A ready model in eval mode on `device`, with the calibrated solvers of serving.json as its defaults
    (DEFAULT_SOLVER where it has none)."""
    folder = resolve(name_or_path)
    try:
        config = ModelConfig.from_dict(read_config(folder))
    except (TypeError, ValueError) as error:
        raise ModelFolderError(f"{folder}: invalid {CONFIG_FILE}: {error}") from error
    model = load_weights(LatentCNF(config), folder)
    try:
        solvers = serving_solvers(read_serving(folder))
    except ModelFolderError as error:
        raise ModelFolderError(f"{folder / SERVING_FILE}: {error}") from error
    model.sample_solver = solvers.get("sample", model.sample_solver)
    model.score_solver = solvers.get("score", model.score_solver)
    return model.to(device).eval()
