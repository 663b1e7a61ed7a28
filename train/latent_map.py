"""python -m train.latent_map: a model's latent map (latent_cnf/latent_map.py), written to its latent_map.json.

Encodes every test image (binarized at 0.5, as /score binarizes; a label-gated encoder is given the true
label), fits the whitened PCA of the encoder means, and keeps the projections of the first --per-label test
images of each label as the map's points (what GET /latent-map serves). Deterministic: the same weights and
data give the same file.

    python -m train.latent_map --checkpoint mnist-final-cond --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import torch

from latent_cnf import data, model_folder
from latent_cnf.device import resolve_device
from latent_cnf.images import binarize_at_threshold
from latent_cnf.latent_map import LatentMap
from latent_cnf.model import LatentCNF

from . import cli, serving_writer
from .serving_writer import FolderOptions, provenance


@dataclass(frozen=True)
class LatentMapOptions(FolderOptions):
    """The flags of python -m train.latent_map."""

    per_label: int = cli.flag(100, help="test images of each label kept as the map's points")


def build_parser() -> argparse.ArgumentParser:
    return serving_writer.parser("train.latent_map", __doc__, LatentMapOptions)


@torch.inference_mode()
def encode(model: LatentCNF, split: data.Split, batch: int = 2_000) -> torch.Tensor:
    """Encoder means of a split's images, binarized as the service binarizes what it scores."""
    means = []
    for start in range(0, len(split), batch):
        pixels = binarize_at_threshold(data.to_float(split.images[start : start + batch])).to(model.device)
        labels = split.labels[start : start + batch].to(model.device) if model.config.encoder_uses_labels else None
        means.append(model.encode(pixels, labels)[0].cpu())
    return torch.cat(means)


def first_per_label(labels: torch.Tensor, per_label: int) -> torch.Tensor:
    """The indices of the first `per_label` images of each label, in index order."""
    chosen = [torch.nonzero(labels == label).flatten()[:per_label] for label in labels.unique()]
    return torch.cat(chosen).sort().values


def make(options: LatentMapOptions, command: str) -> LatentMap:
    device = resolve_device(options.device)
    model = model_folder.load(options.checkpoint, device)
    dataset = model_folder.read_training(options.checkpoint).get("dataset", "mnist")
    started = time.perf_counter()
    test = data.load_split(dataset, "test", options.data_dir)
    encodings = encode(model, test)
    chosen = first_per_label(test.labels, options.per_label)
    fitted = LatentMap.fit(encodings).with_points(chosen, test.labels[chosen], encodings[chosen])
    record = {"dataset": dataset, "split": "test", "fitted_on": len(test)} | provenance(command, device, started)
    return dataclasses.replace(fitted, provenance=record)


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(build_parser(), argv)
    options = cli.options_from(args, LatentMapOptions)
    try:
        latent_map = make(options, cli.command_line("train.latent_map", argv))
    except (data.DataError, model_folder.ModelFolderError) as error:
        raise SystemExit(f"error: {error}") from None
    shares = ", ".join(f"{share:.1%}" for share in latent_map.explained_variance)
    print(f"{len(latent_map.points.indices)} points; the two axes explain {shares} of the variance")
    if not args.dry_run:
        print(f"wrote {model_folder.write_latent_map(options.checkpoint, latent_map)}")


if __name__ == "__main__":
    main()
