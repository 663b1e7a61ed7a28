"""python -m train.pictures on an untrained 2-D model: the three files, their sizes; the latent figure's axes,
labels and legend; the shared projection."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from latent_cnf import LatentCNF, save_pretrained
from latent_cnf.data import CLASS_NAMES
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
    latents = Image.open(out / "latents-mnist-vae-cnf-prior.png")
    assert latents.format == "PNG" and latents.size == (1100, 460)


def test_the_latent_figure_has_named_axes_a_legend_of_every_label_and_shared_frames() -> None:
    encoded, labels = torch.randn(300, 2), torch.arange(300) % 10
    sampled = torch.randn(50, 2) * 3  # wider than the encoder's cloud: some fall outside the frame
    figure = pictures.latent_figure(encoded, labels, sampled, None, CLASS_NAMES["fashion-mnist"], ("z1", "z2"))
    left, right = figure.axes
    assert [t.get_text() for t in figure.legends[0].get_texts()] == list(CLASS_NAMES["fashion-mnist"])
    assert (left.get_xlabel(), left.get_ylabel(), right.get_xlabel()) == ("z1", "z2", "z1")
    assert left.get_title() == "encoder latents of test images (n = 300)"
    assert right.get_title() == "CNF samples, unconditional (n = 50)"
    assert left.get_xlim() == right.get_xlim() and left.get_ylim() == right.get_ylim()
    drawn = left.collections[0]
    torch.testing.assert_close(torch.tensor(drawn.get_offsets().data, dtype=torch.float32), encoded)
    assert len({tuple(c) for c in drawn.get_facecolors()}) == 10  # one colour per label
    assert len({tuple(c) for c in right.collections[0].get_facecolors()}) == 1  # unconditional: one colour


def test_projection_keeps_2d_latents_and_shares_the_pca_axes() -> None:
    points = torch.randn(100, 2)
    assert pictures.project(points)[0] is points
    high = torch.randn(300, 8) * torch.arange(1, 9)  # variance grows with the index
    left, right = pictures.project(high, high[:10])
    assert left.shape == (300, 2) and right.shape == (10, 2)
    torch.testing.assert_close(right, left[:10])  # the same projection applied to both
    assert left.var(0)[0] >= high.var(0).max() * 0.999  # no direction carries more than the first axis
