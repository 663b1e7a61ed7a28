"""GET /latent-map: a model's fixed 2-D view of its latent, with projected test digits (latent_cnf/latent_map.py)."""

from __future__ import annotations

import torch
from fastapi import APIRouter, Query, Response

from latent_cnf.latent_map import LatentMap

from ..dependencies import Hub
from ..failures import NoLatentMap
from ..schemas import (
    ERROR_RESPONSES,
    MAX_MODEL_NAME,
    MAX_VERSION,
    VERSION_HELP,
    LatentMapResponse,
    MapPoint,
    MapPosition,
)
from ..served import ServedModel

router = APIRouter(tags=["latent map"])
CACHE_CONTROL = "public, max-age=3600"  # a map changes only with new weights, which restart the service
_answers: dict[tuple[str, str], LatentMapResponse] = {}  # by model and weights: built once, from the folder's file


@router.get("/latent-map", response_model=LatentMapResponse, responses=ERROR_RESPONSES)
async def latent_map(
    response: Response,
    hub: Hub,
    model: str | None = Query(None, min_length=1, max_length=MAX_MODEL_NAME),
    version: int | None = Query(None, ge=1, le=MAX_VERSION, description=VERSION_HELP),
) -> LatentMapResponse:
    """The projection (a latent z lies at ((z - mean) @ axes^T) / scale) and the test digits' points, by label.
    /score places a drawing on the same map, and /trajectory?format=json a sample's path."""
    served = hub.registry.get(model, version)
    key = (served.name, served.sha256)
    if key not in _answers:
        _answers[key] = build(served)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return _answers[key]


def build(served: ServedModel) -> LatentMapResponse:
    fitted = served.latent_map
    if fitted is None:
        raise NoLatentMap(
            f"model {served.name!r} has no latent map: make one with python -m train.latent_map --checkpoint NAME"
        )
    stored = fitted.points
    return LatentMapResponse(
        model=served.name,
        method="whitened PCA of the encoder means of the test set",
        latent_dim=len(fitted.mean),
        mean=fitted.mean.tolist(),
        axes=fitted.axes.tolist(),
        scale=fitted.scale.tolist(),
        explained_variance=list(fitted.explained_variance),
        points=[
            MapPoint(index=index, label=label, x=x, y=y)
            for index, label, (x, y) in zip(stored.indices, stored.labels, stored.xy, strict=True)
        ],
    )


def positions(fitted: LatentMap | None, means: torch.Tensor, stds: torch.Tensor) -> list[MapPosition | None]:
    """Where encoder posteriors N(mean, diag(std^2)) (rows) lie on a map, with their projected covariance."""
    if fitted is None:
        return [None] * len(means)
    xy, covariance = fitted.project(means).tolist(), fitted.project_spread(stds).tolist()
    return [MapPosition(x=x, y=y, covariance=c) for (x, y), c in zip(xy, covariance, strict=True)]
