"""A training run's resume state in one safetensors file, so that `--resume` executes nothing from disk.

The state is a tree (model and optimizer state dicts, step, random states, sessions): its tensors are stored
as the file's tensors, and the rest of the tree, with each tensor replaced by its name, as JSON in the file's
metadata. Dict keys keep their types (an optimizer's state is keyed by parameter index) and tuples stay tuples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

STATE_FILE = "state.safetensors"
# Runs begun before this format left a pickle, which is not read (unpickling executes code from disk): --resume
# refuses it by name rather than restart at step 0. LEGACY_COMMIT is the last code that wrote and read it.
LEGACY_STATE_FILE = "state.pt"
LEGACY_COMMIT = "157449d"


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` atomically: a run stopped mid-write keeps its previous state."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(safetensors.torch.save(tensors, metadata={"tree": json.dumps(tree)}))
    partial.replace(path)


def load(path: Path) -> dict[str, Any]:
    """The state as saved, tensors on the CPU (load_state_dict moves them to the model's device)."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as file:
        tree = json.loads(file.metadata()["tree"])
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    state = _decode(tree, tensors)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a resume state")
    return state


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):  # a copy: safetensors refuses tensors that share memory
        name = str(len(tensors))
        tensors[name] = value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[key, _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [_encode(item, tensors) for item in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"a resume state cannot hold a {type(value).__name__}")


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    ((kind, content),) = node.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "dict":
        return {key: _decode(item, tensors) for key, item in content}
    if kind in ("list", "tuple"):
        items = [_decode(item, tensors) for item in content]
        return items if kind == "list" else tuple(items)
    return content
