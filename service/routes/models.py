"""GET /v1/models and /v1/models/{name}: what is served, with its config, training record and serving data."""

from __future__ import annotations

from fastapi import APIRouter, Query

from latent_cnf.data import CLASS_NAMES

from ..dependencies import Hub
from ..schemas import ERROR_RESPONSES, MAX_VERSION, VERSION_HELP, ModelInfo, ModelList
from ..served import ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(served: ServedModel, versions: list[int]) -> ModelInfo:
    return ModelInfo(
        name=served.name,
        version=served.version,
        versions=versions,
        dataset=served.training.get("dataset"),
        preset=served.training.get("preset"),
        prior_uses_labels=served.prior_uses_labels,
        encoder_uses_labels=served.model.config.encoder_uses_labels,
        class_names=list(CLASS_NAMES[served.training["dataset"]])
        if served.training.get("dataset") in CLASS_NAMES
        else None,
        latent_dim=served.model.config.latent_dim,
        parameters=served.parameters,
        checkpoint_sha256=served.sha256,
        device=served.device,
        config=served.model.config.to_dict(),
        training=served.training,
        serving={k: v for k, v in served.serving.items() if k != "score_reference"},
    )


@router.get("", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(hub: Hub) -> ModelList:
    """Every model served, the default one, and the checkpoints that could not be served (and why)."""
    served = list(hub.registry.models.values())  # a copy: the loading thread may add models meanwhile
    default = hub.settings.default_model if hub.settings.default_model in hub.registry.models else None
    models = [describe(m, sorted(hub.registry.versions.get(m.name, {}))) for m in served]
    return ModelList(default=default, models=models, failed=dict(hub.registry.failed))


@router.get("/{name}", response_model=ModelInfo, responses=ERROR_RESPONSES)
async def get_model(
    name: str, hub: Hub, version: int | None = Query(None, ge=1, le=MAX_VERSION, description=VERSION_HELP)
) -> ModelInfo:
    """One served model: its dataset, configuration, training record and calibrated serving data."""
    served = hub.registry.get(name, version)
    return describe(served, sorted(hub.registry.versions.get(served.name, {})))
