"""The model repository: which model folders exist on disk, by name and version, and which versions to serve.

The layout is Triton's: `<repository>/<name>/<version>/` holds one model folder (what training exports: config,
weights, serving data, card), versions are positive integers. A `<repository>/<name>/` that is itself a model
folder is version 1 of `name`, so the shipped models (latent_cnf/pretrained/models) are a repository as they
are. The disk is read when asked (start-up, a load request): dropping a folder in changes nothing until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from latent_cnf import model_folder

VersionPolicy = Literal["latest", "all"]  # Triton's version_policy: the newest version, or every version


@dataclass(frozen=True)
class ModelRepository:
    root: Path
    policy: VersionPolicy = "latest"

    def names(self) -> list[str]:
        """Every model with at least one version on disk."""
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir() and self.versions(path.name))

    def versions(self, name: str) -> list[int]:
        """The versions of `name` on disk, oldest first; none for a name that is not a plain folder name."""
        if not name or name != Path(name).name or name.startswith("."):
            return []  # a path, or '..': only folders directly under the repository are models
        folder = self.root / name
        if _is_model_folder(folder):
            return [1]
        if not folder.is_dir():
            return []
        return sorted(int(path.name) for path in folder.iterdir() if _is_version(path.name) and _is_model_folder(path))

    def folder(self, name: str, version: int) -> Path:
        folder = self.root / name
        return folder if _is_model_folder(folder) else folder / str(version)

    def to_serve(self, name: str) -> list[int]:
        """The versions the policy serves: the newest, or all of them."""
        versions = self.versions(name)
        return versions if self.policy == "all" else versions[-1:]


def _is_version(name: str) -> bool:
    return name.isdigit() and int(name) > 0 and name == str(int(name))


def _is_model_folder(path: Path) -> bool:
    return (path / model_folder.CONFIG_FILE).is_file() and (path / model_folder.WEIGHTS_FILE).is_file()
