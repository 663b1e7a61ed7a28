"""python -m train.pictures: the pictures of a checkpoint for docs/ (samples per label, trajectory, latents).

python -m train.pictures --checkpoint mnist-final-cond --data-dir ../shared/data --out docs/pictures
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import latent_cnf
from latent_cnf import data
from latent_cnf.device import resolve_device
from latent_cnf.images import grid, trajectory_strip
from latent_cnf.latent_map import LatentMap

from .plotting import COLOURS, new_figure, save, styled

PALETTE = (*COLOURS, "tab:olive", "tab:cyan")  # one colour per label, matplotlib's own ten


@styled
def latent_figure(
    encoded: torch.Tensor,
    labels: torch.Tensor,
    sampled: torch.Tensor,
    sample_labels: torch.Tensor | None,
    class_names: Sequence[str],
    axis_names: tuple[str, str],
) -> Figure:
    """Encoder latents of test images beside CNF samples, on the same axes, coloured by label (one colour for
    unconditional samples). Small translucent dots so that dense regions show as dense; the axes are framed by
    the encoder's cloud (0.5 to 99.5 % quantiles), so a prior that misses it shows samples off the frame."""
    figure, axes = new_figure(11, 4.6, columns=2)
    low, high = encoded.quantile(0.005, 0).tolist(), encoded.quantile(0.995, 0).tolist()
    sample_title = "CNF samples, by requested label" if sample_labels is not None else "CNF samples, unconditional"
    panels = [
        (axes[0], encoded, labels, "encoder latents of test images"),
        (axes[1], sampled, sample_labels, sample_title),
    ]
    for ax, points, by, title in panels:
        colours = [PALETTE[y % len(PALETTE)] for y in by.tolist()] if by is not None else "0.3"
        ax.scatter(points[:, 0], points[:, 1], s=4, c=colours, alpha=0.35, linewidths=0)
        ax.set(title=f"{title} (n = {len(points)})", xlabel=axis_names[0], ylabel=axis_names[1])
        ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]))
    handles = [
        Line2D([], [], marker="o", linestyle="", color=PALETTE[i], label=name) for i, name in enumerate(class_names)
    ]
    figure.legend(handles=handles, loc="outside right center", title="label")
    return figure


def project(reference: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Identity for 2-D latents, else the first two principal axes of `reference` (the latent map's, unwhitened:
    the spreads along them stay comparable) applied to all."""
    if reference.shape[1] == 2:
        return [reference, *others]
    fitted = LatentMap.fit(reference)
    return [((x.double() - fitted.mean) @ fitted.axes.T).float() for x in (reference, *others)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.pictures", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="shipped checkpoint name or checkpoint folder")
    parser.add_argument("--out", type=Path, default=Path("docs/pictures"), help="folder for the PNGs (%(default)s)")
    parser.add_argument("--data-dir", type=Path, help="folder holding <dataset>/ IDX files (else $LATENT_CNF_DATA)")
    parser.add_argument("--points", type=int, default=5000, help="latents per scatter")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    return parser


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    model = latent_cnf.load(args.checkpoint, device)
    name = latent_cnf.model_folder.display_name(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    conditional = model.prior.uses_labels
    rows = [model.sample(10, label=y if conditional else None, seed=y) for y in range(10)]
    grid(torch.cat([r.images for r in rows]), columns=10).resize((604, 604)).save(args.out / f"samples-{name}.png")
    path = model.trajectory(4, steps=11, label=torch.tensor([0, 3, 7, 9]) if conditional else None, seed=0)
    trajectory_strip(path.times, path.images).save(args.out / f"trajectory-{name}.png")
    dataset = latent_cnf.model_folder.read_training(args.checkpoint).get("dataset", "mnist")
    test = data.load_split(dataset, "test", args.data_dir).subset(torch.arange(args.points))
    labels = test.labels.to(device)
    encoder_labels = labels if model.config.encoder_uses_labels else None
    encoded, _ = model.encode(data.to_float(test.images).to(device), encoder_labels)
    sampled = model.sample(args.points, seed=0)
    left, right = project(encoded.cpu(), sampled.latents.cpu())
    names = ("latent z1", "latent z2") if encoded.shape[1] == 2 else ("PCA axis 1 of the encoder latents", "PCA axis 2")
    sample_labels = sampled.labels.cpu() if sampled.labels is not None else None
    figure = latent_figure(left, labels.cpu(), right, sample_labels, data.CLASS_NAMES[dataset], names)
    save(figure, args.out / f"latents-{name}.png")
    print(f"wrote samples-, trajectory- and latents-{name}.png to {args.out}")


if __name__ == "__main__":
    main()
