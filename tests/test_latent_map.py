"""The latent map (latent_cnf/latent_map.py, python -m train.latent_map): deterministic, shipped for every model,
its points the projected encodings of the test images they name, and kept with the weights it was fitted to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latent_cnf import LatentCNF, available, data, model_folder
from latent_cnf.latent_map import LatentMap
from train.latent_map import encode, first_per_label, main
from train.presets import PRESETS

SHIPPED = available()


def test_the_fit_is_deterministic_whitened_and_blind_to_row_order():
    encodings = torch.randn(500, 6, generator=torch.Generator().manual_seed(0)) * torch.arange(1.0, 7.0)
    fitted = LatentMap.fit(encodings)
    again = LatentMap.fit(encodings[torch.randperm(500, generator=torch.Generator().manual_seed(1))])
    torch.testing.assert_close(fitted.axes, again.axes, atol=1e-10, rtol=0)
    torch.testing.assert_close(fitted.mean, again.mean, atol=1e-10, rtol=0)
    xy = fitted.project(encodings)
    torch.testing.assert_close(xy.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(xy.std(0), torch.ones(2, dtype=torch.float64), atol=1e-10, rtol=0)
    assert fitted.explained_variance[0] >= fitted.explained_variance[1] > 0


def test_the_projected_spread_is_the_covariance_of_projected_draws():
    fitted = LatentMap.fit(torch.randn(200, 4, generator=torch.Generator().manual_seed(2)) * 3)
    mean, std = torch.tensor([0.5, -1.0, 2.0, 0.0]), torch.tensor([0.3, 0.1, 0.7, 1.2])
    draws = mean + std * torch.randn(200_000, 4, generator=torch.Generator().manual_seed(3))
    empirical = torch.cov(fitted.project(draws).T)
    torch.testing.assert_close(fitted.project_spread(std), empirical, atol=0.01, rtol=0.02)


@pytest.fixture(scope="module")
def test_split(data_dir) -> dict[str, data.Split]:
    return {name: data.load_split(name, "test", data_dir, download=False) for name in ("mnist", "fashion-mnist")}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_has_the_map_its_command_makes(name, test_split):
    """Refitting on the test encodings gives the shipped map, and its points are the projected encodings of
    the first 100 test images of each label, which it names by index."""
    shipped = model_folder.read_latent_map(name)
    assert shipped is not None, f"{name} ships no {model_folder.LATENT_MAP_FILE}: run python -m train.latent_map"
    model = model_folder.load(name)
    split = test_split[model_folder.read_training(name)["dataset"]]
    encodings = encode(model, split)
    refitted = LatentMap.fit(encodings)
    for field in ("mean", "axes", "scale"):
        torch.testing.assert_close(getattr(refitted, field), getattr(shipped, field), atol=1e-5, rtol=1e-5)
    indices = torch.tensor(shipped.points.indices)
    assert torch.equal(indices, first_per_label(split.labels, 100)) and len(indices) == 1000
    assert shipped.points.labels == split.labels[indices].tolist()
    expected = shipped.project(encodings[indices])
    torch.testing.assert_close(torch.tensor(shipped.points.xy, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def test_the_command_writes_the_map_into_the_folder(tiny_dataset: Path, tmp_path: Path):
    folder = model_folder.save_pretrained(LatentCNF(PRESETS["final-cond"].model), tmp_path / "m", {"dataset": "mnist"})
    args = ["--checkpoint", str(folder), "--data-dir", str(tiny_dataset), "--per-label", "2", "--threads", "1"]
    main(args)
    written = model_folder.read_latent_map(folder)
    assert written is not None and len(written.points.indices) == 20  # the tiny test split has 10 labels
    assert written.provenance["command"].startswith("python -m train.latent_map")
    first = json.loads((folder / model_folder.LATENT_MAP_FILE).read_text())
    main(args)  # the same weights and data: the same map (only the run's timing may differ)
    second = json.loads((folder / model_folder.LATENT_MAP_FILE).read_text())
    assert {**first, "provenance": None} == {**second, "provenance": None}


def test_new_weights_drop_the_old_map_and_a_malformed_one_is_refused(tmp_path: Path):
    model = LatentCNF(PRESETS["vae-cnf-prior"].model)
    folder = model_folder.save_pretrained(model, tmp_path / "m")
    fitted = LatentMap.fit(torch.randn(10, model.config.latent_dim))
    model_folder.write_latent_map(folder, fitted)
    assert model_folder.read_latent_map(folder) is not None
    model_folder.save_pretrained(model, folder)
    assert model_folder.read_latent_map(folder) is None
    (folder / model_folder.LATENT_MAP_FILE).write_text(json.dumps({**fitted.to_dict(), "axes": [[1.0]]}))
    with pytest.raises(model_folder.ModelFolderError, match="do not fit a latent of 2 dimensions"):
        model_folder.read_latent_map(folder)
