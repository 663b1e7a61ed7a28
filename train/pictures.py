"""python -m train.pictures: the pictures of a checkpoint for docs/ (samples per label, trajectory, latents).

python -m train.pictures --checkpoint mnist-final-cond --data-dir ../shared/data --out docs/pictures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import latent_cnf
from latent_cnf import data
from latent_cnf.device import resolve_device
from latent_cnf.images import grid, trajectory_strip
from latent_cnf.latent_map import LatentMap

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def scatter(
    points: torch.Tensor, labels: torch.Tensor, title: str, bounds: tuple[torch.Tensor, torch.Tensor], size: int = 360
) -> Image.Image:
    """A 2-D scatter coloured by label, drawn with Pillow (no plotting library needed).

    `bounds` (low, high corners) are shared by the panels of one figure so that they can be compared."""
    canvas = Image.new("RGB", (size, size + 16), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black")
    low, high = bounds
    scaled = ((points - low) / (high - low).clamp_min(1e-6)).clamp(0, 1) * (size - 8) + 4
    for (x, y), label in zip(scaled.tolist(), labels.tolist(), strict=True):
        draw.point((x, size - y + 16), fill=PALETTE[label % 10])
    return canvas


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
    sample_labels = sampled.labels if sampled.labels is not None else torch.zeros(args.points, dtype=torch.long)
    left, right = project(encoded.cpu(), sampled.latents.cpu())
    how = "latents" if encoded.shape[1] == 2 else "PCA of latents"
    bounds = (left.quantile(0.005, 0), left.quantile(0.995, 0))  # the encoder's cloud frames both panels
    panels = [scatter(left, labels.cpu(), f"encoder {how}, test set, by digit", bounds)]
    title = f"CNF samples ({'by label' if conditional else 'one colour'}), same axes"
    panels.append(scatter(right, sample_labels.cpu(), title, bounds))
    figure = Image.new("RGB", (sum(p.width for p in panels), panels[0].height), "white")
    for i, panel in enumerate(panels):
        figure.paste(panel, (i * panel.width, 0))
    figure.save(args.out / f"latents-{name}.png")
    print(f"wrote samples-, trajectory- and latents-{name}.png to {args.out}")


if __name__ == "__main__":
    main()
