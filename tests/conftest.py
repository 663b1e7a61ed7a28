"""Shared fixtures: where the IDX files are, and small synthetic data sets written as real IDX files."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Where the library finds the IDX files (`make test` points LATENT_CNF_DATA at ../shared/data)."""
    from latent_cnf.data import default_data_dir

    path = default_data_dir()
    if not (path / "mnist").exists():
        pytest.fail(f"MNIST IDX files not found in {path}: set LATENT_CNF_DATA")
    return path


def run_offline(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m module args` in a new process whose dataset mirrors refuse connections: no download, ever."""
    code = (
        "import runpy, sys; from latent_cnf import data; "
        "data.MIRRORS.update(dict.fromkeys(data.MIRRORS, ('http://127.0.0.1:9/',))); "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def idx_bytes(array: torch.Tensor) -> bytes:
    """Encode a uint8 tensor as an IDX file."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.contiguous().numpy().tobytes()


@pytest.fixture
def tiny_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 64-image 'mnist' folder of random blobs with matching checksums patched into DATASETS."""
    from latent_cnf import data

    generator = torch.Generator().manual_seed(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    checksums = {}
    for prefix, n in (("train", 64), ("t10k", 32)):
        images = (torch.rand(n, 28, 28, generator=generator) > 0.8).to(torch.uint8) * 255
        labels = torch.arange(n, dtype=torch.uint8) % 10
        for kind, tensor in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            raw = idx_bytes(tensor)
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            checksums[name] = data._sha256(raw)
    monkeypatch.setitem(data.DATASETS, "mnist", checksums)
    return tmp_path


@pytest.fixture(scope="session")
def client(tmp_path_factory):
    """The real app with its lifespan, serving every shipped checkpoint plus an unconditional test model."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    from .service_helpers import make_settings, wait_ready

    app = create_app(make_settings(tmp_path_factory.mktemp("models"), max_upload_bytes=200_000, max_files=4))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def shipped_models(slow: tuple[str, ...] = ()) -> list:
    """Every shipped model as a case, the names in `slow` marked slow."""
    from latent_cnf.model_folder import available

    return [pytest.param(name, marks=[pytest.mark.slow] if name in slow else []) for name in available()]
