"""GET /v1/models and /v1/models/{name}: what is served, with config and model card."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from latent_cnf.data import CLASS_NAMES

from ..dependencies import get_hub
from ..inference import ModelHub, ServedModel
from ..schemas import ERROR_RESPONSES, ModelInfo, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(served: ServedModel) -> ModelInfo:
    card = {k: v for k, v in served.card.items() if k not in ("config", "score_reference")}
    return ModelInfo(
        name=served.name,
        dataset=served.card.get("dataset"),
        preset=served.card.get("preset"),
        conditional=served.conditional,
        class_names=list(CLASS_NAMES[served.card["dataset"]]) if served.card.get("dataset") in CLASS_NAMES else None,
        latent_dim=served.model.config.latent_dim,
        parameters=served.parameters,
        checkpoint_sha256=served.sha256,
        device=served.device,
        config=served.model.config.to_dict(),
        card=card,
    )


@router.get("", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(hub: ModelHub = Depends(get_hub)) -> ModelList:
    served = list(hub.models.values())  # a copy: the loading thread may add models meanwhile
    default = hub.settings.default_model if hub.settings.default_model in hub.models else None
    return ModelList(default=default, models=[describe(m) for m in served], failed=dict(hub.failed))


@router.get("/{name}", response_model=ModelInfo, responses=ERROR_RESPONSES)
async def get_model(name: str, hub: ModelHub = Depends(get_hub)) -> ModelInfo:
    return describe(hub.get(name))
