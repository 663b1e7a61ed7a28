"""A model's latent map: a fixed 2-D view of its latent space, the same on every call and every machine.

The map is whitened PCA of the encoder means of test images (binarized as /score binarizes; a label-gated
encoder is given the true label): z -> ((z - mean) @ axes.T) / scale, with `axes` the first two principal
directions (each signed so that its largest component is positive, which makes the fit deterministic) and
`scale` the spread of the test encodings along them, so a map unit is one standard deviation of the test set.
A model folder keeps it in latent_map.json (model_folder.LATENT_MAP_FILE) with a bounded set of projected test
points; `python -m train.latent_map` makes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT = "latent-cnf-latent-map/1"
DECIMALS = 5  # of the stored points' coordinates


@dataclass(frozen=True)
class MapPoints:
    """Projected test encodings: each point's index in the test split, its label and its map position."""

    indices: list[int]
    labels: list[int]
    xy: list[tuple[float, float]]


@dataclass(frozen=True)
class LatentMap:
    mean: torch.Tensor  # (d,) float64
    axes: torch.Tensor  # (2, d) unit principal directions
    scale: torch.Tensor  # (2,) std of the fitted encodings along each axis
    explained_variance: tuple[float, float]  # share of the encodings' variance along each axis
    points: MapPoints = field(default_factory=lambda: MapPoints([], [], []))
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was made: data, command, commit

    @classmethod
    def fit(cls, encodings: torch.Tensor) -> LatentMap:
        """Whitened PCA of (n, d) encodings, in float64 on the CPU."""
        z = encodings.detach().to("cpu", torch.float64)
        if z.ndim != 2 or z.shape[1] < 2 or len(z) < 3:
            raise ValueError("a latent map needs at least 3 encodings of at least 2 dimensions")
        mean = z.mean(0)
        _, singular, vt = torch.linalg.svd(z - mean, full_matrices=False)
        axes = vt[:2]
        signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
        axes = axes * signs
        variance = singular**2 / (len(z) - 1)
        explained = variance[:2] / variance.sum()
        return cls(mean, axes, variance[:2].sqrt(), (float(explained[0]), float(explained[1])))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) latents -> (..., 2) map positions."""
        return ((z.to(torch.float64) - self.mean) @ self.axes.T) / self.scale

    def project_spread(self, std: torch.Tensor) -> torch.Tensor:
        """(..., d) stds of a diagonal Gaussian in latent space -> (..., 2, 2) covariance of its map position."""
        rows = self.axes / self.scale[:, None]  # the projection's linear part, (2, d)
        variance = std.to(torch.float64).pow(2)
        return torch.einsum("id,...d,jd->...ij", rows, variance, rows)

    def with_points(self, indices: torch.Tensor, labels: torch.Tensor, encodings: torch.Tensor) -> LatentMap:
        """This map holding the projected encodings of the test images at `indices`."""
        xy = self.project(encodings).round(decimals=DECIMALS)
        points = MapPoints(indices.tolist(), labels.tolist(), [(float(x), float(y)) for x, y in xy.tolist()])
        return dataclasses.replace(self, points=points)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "method": "whitened PCA of encoder means",
            "mean": self.mean.tolist(),
            "axes": self.axes.tolist(),
            "scale": self.scale.tolist(),
            "explained_variance": list(self.explained_variance),
            "points": {"index": self.points.indices, "label": self.points.labels, "xy": self.points.xy},
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any], latent_dim: int) -> LatentMap:
        """Read back to_dict's output, refusing one that does not fit a `latent_dim` model (ValueError)."""
        if value.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} map")
        try:
            mean = torch.tensor(value["mean"], dtype=torch.float64)
            axes = torch.tensor(value["axes"], dtype=torch.float64)
            scale = torch.tensor(value["scale"], dtype=torch.float64)
            explained = tuple(float(share) for share in value["explained_variance"])
            stored = value["points"]
            points = MapPoints(
                [int(i) for i in stored["index"]],
                [int(y) for y in stored["label"]],
                [(float(x), float(y)) for x, y in stored["xy"]],
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed latent map: {error!r}") from None
        if mean.shape != (latent_dim,) or axes.shape != (2, latent_dim) or scale.shape != (2,) or len(explained) != 2:
            raise ValueError(f"the map's shapes do not fit a latent of {latent_dim} dimensions")
        if not len(points.indices) == len(points.labels) == len(points.xy):
            raise ValueError("the map's points have unequal index, label and position lists")
        if not bool((scale > 0).all()):
            raise ValueError("the map's scales must be positive")
        return cls(mean, axes, scale, (explained[0], explained[1]), points, dict(value.get("provenance", {})))
