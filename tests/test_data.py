import gzip

import pytest
import torch

from latent_cnf import data

from .conftest import idx_bytes


def test_parse_idx_round_trip():
    array = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    assert torch.equal(data.parse_idx(idx_bytes(array)), array)


@pytest.mark.parametrize(
    "raw, problem",
    [
        (b"\x01\x00\x08\x01", "magic"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05ab", "size"),
    ],
)
def test_parse_idx_rejects_malformed(raw, problem):
    with pytest.raises(data.DataError, match=problem):
        data.parse_idx(raw)


def test_real_mnist_files(data_dir):
    test = data.load_split("mnist", "test", data_dir)
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == torch.uint8
    train = data.load_split("mnist", "train", data_dir)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(data.to_float(train.images).mean().item() - 0.1307) < 1e-3


def test_validation_split_is_fixed_and_disjoint(data_dir):
    fit, val = data.validation_indices(60_000)
    assert len(val) == data.VALIDATION_SIZE and len(fit) + len(val) == 60_000
    assert not set(fit.tolist()) & set(val.tolist())
    assert torch.equal(val, data.validation_indices(60_000)[1])


def test_checksum_failure(tiny_dataset):
    path = tiny_dataset / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[-1] ^= 1
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.load_split("mnist", "test", tiny_dataset)


def test_raw_files_accepted(tiny_dataset):
    folder = tiny_dataset / "mnist"
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert len(data.load_split("mnist", "train", tiny_dataset)) == 64


def test_missing_offline_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "mnist", ("http://127.0.0.1:9/",))
    with pytest.raises(data.DataError, match=str(tmp_path / "mnist")):
        data.load_split("mnist", "test", tmp_path)
    assert not (tmp_path / "mnist").exists()  # a failed download leaves no folder behind (a mistyped path stays so)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENT_CNF_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
