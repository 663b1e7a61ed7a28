"""MNIST-format IDX files: find them, download and verify them when missing, read them into tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

DATASETS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {  # label i's name, as the datasets' authors give them
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IDX_DTYPES = {0x08: torch.uint8, 0x09: torch.int8, 0x0B: torch.int16, 0x0C: torch.int32}
VALIDATION_SIZE = 5_000
VALIDATION_SEED = 0


class DataError(RuntimeError):
    """A data file is missing, corrupt or fails its checksum."""


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, 28, 28)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


def default_data_dir() -> Path:
    """`LATENT_CNF_DATA`, else the user cache directory."""
    if env := os.environ.get("LATENT_CNF_DATA"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "latent-cnf" / "data"


def parse_idx(raw: bytes) -> torch.Tensor:
    """Decode the bytes of an uncompressed IDX file."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError("not an IDX file: bad magic number")
    dtype, ndim = IDX_DTYPES.get(raw[2]), raw[3]
    if dtype is None:
        raise DataError(f"unsupported IDX element type 0x{raw[2]:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = 1
    for size in shape:
        count *= size
    if len(raw) != header + count * itemsize:
        raise DataError(f"IDX size mismatch: header says {shape}, file has {len(raw) - header} bytes of data")
    data = torch.frombuffer(bytearray(raw[header:]), dtype=dtype)
    if itemsize > 1:
        data = data.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype).view(-1)
    return data.reshape(shape)


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _download(dataset: str, name: str, target: Path) -> None:
    errors = []
    for mirror in MIRRORS[dataset]:
        url = f"{mirror}{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                payload = response.read()
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            errors.append(f"{url}: {error}")
            continue
        if _sha256(gzip.decompress(payload)) != DATASETS[dataset][name]:
            errors.append(f"{url}: checksum mismatch")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)  # only now: a mistyped --data-dir leaves nothing behind
        target.write_bytes(payload)
        return
    raise DataError(
        f"{dataset}/{name} is missing and could not be downloaded ({'; '.join(errors)}). "
        f"Put the IDX files (gzipped or raw) in {target.parent}, or point --data-dir / "
        f"LATENT_CNF_DATA at a folder that holds a '{dataset}/' subfolder."
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(dataset: str, name: str, data_dir: Path | str | None = None, download: bool = True) -> torch.Tensor:
    """Read one IDX file of a known dataset, verifying the SHA-256 of its uncompressed content."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = folder / dataset
    candidates = [folder / f"{name}.gz", folder / name]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        if not download:
            raise DataError(f"{dataset}/{name} not found in {folder} (looked for {name}.gz and {name})")
        _download(dataset, name, candidates[0])
        path = candidates[0]
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"cannot read {path}: {error}") from error
    if _sha256(raw) != DATASETS[dataset][name]:
        raise DataError(f"checksum mismatch for {path}: the file is corrupt or not the {dataset} release")
    return parse_idx(raw)


def load_split(dataset: str, split: str, data_dir: Path | str | None = None, download: bool = True) -> Split:
    """`split` is 'train' (all 60k), 'fit' (train minus validation), 'val' or 'test'."""
    source = "test" if split == "test" else "train"
    prefix = SPLIT_PREFIX[source]
    images = read_file(dataset, f"{prefix}-images-idx3-ubyte", data_dir, download)
    labels = read_file(dataset, f"{prefix}-labels-idx1-ubyte", data_dir, download).long()
    data = Split(images, labels)
    if split in ("train", "test"):
        return data
    fit, val = validation_indices(len(data))
    if split == "fit":
        return data.subset(fit)
    if split == "val":
        return data.subset(val)
    raise ValueError(f"unknown split {split!r}: use train, fit, val or test")


def validation_indices(
    n: int, size: int = VALIDATION_SIZE, seed: int = VALIDATION_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random split of the training set: (fit indices, validation indices)."""
    size = min(size, n // 10) if n < 10 * size else size
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 784) in [0, 1]."""
    return images.reshape(len(images), -1).float().div_(255.0)


def binarize(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each pixel is a Bernoulli draw with its grey level as probability."""
    noise = torch.rand(
        pixels.shape, generator=generator, device=pixels.device if generator is None else generator.device
    )
    return (noise.to(pixels.device) < pixels).to(pixels.dtype)
