"""python -m train.pictures on an untrained 2-D model: the three files, their sizes, shared scatter axes."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from latent_cnf import LatentCNF, save_pretrained
from train import pictures
from train.presets import PRESETS


def test_pictures_of_a_run_folder(tmp_path: Path, data_dir: Path) -> None:
    torch.manual_seed(0)
    run = tmp_path / "runs" / "mnist-vae-cnf-prior"
    save_pretrained(LatentCNF(PRESETS["vae-cnf-prior"].model), run / "checkpoint", {"dataset": "mnist"})
    out = tmp_path / "pictures"
    argv = ["--checkpoint", str(run / "checkpoint"), "--data-dir", str(data_dir), "--out", str(out)]
    pictures.main([*argv, "--points", "200", "--device", "cpu"])
    names = {p.name for p in out.iterdir()}
    assert names == {f"{kind}-mnist-vae-cnf-prior.png" for kind in ("samples", "trajectory", "latents")}
    assert Image.open(out / "samples-mnist-vae-cnf-prior.png").size == (604, 604)
    assert Image.open(out / "latents-mnist-vae-cnf-prior.png").size == (720, 376)


def test_projection_keeps_2d_latents_and_shares_the_pca_axes() -> None:
    points = torch.randn(100, 2)
    assert pictures.project(points)[0] is points
    high = torch.randn(300, 8) * torch.arange(1, 9)  # variance grows with the index
    left, right = pictures.project(high, high[:10])
    assert left.shape == (300, 2) and right.shape == (10, 2)
    torch.testing.assert_close(right, left[:10])  # the same projection applied to both
    assert left.var(0)[0] >= high.var(0).max() * 0.999  # no direction carries more than the first axis
