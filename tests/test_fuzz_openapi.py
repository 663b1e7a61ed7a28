"""Schemathesis against the app's own /openapi.json: whatever a client sends, valid by the schema or not,
the answer is never a 5xx and always matches what the schema documents (status, content type, body).

The app runs in process with its lifespan, on two small untrained checkpoints (one label-conditioned, one
not): the API surface is the same as with the shipped models, each model call is cheap, and the shipped
files may be rewritten by a training run while the tests read them.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
import torch
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from latent_cnf import LatentCNF, save_pretrained
from service.app import create_app
from service.settings import Settings
from train.presets import PRESETS

MAX_EXAMPLES = 15  # generated cases per operation; the coverage phase adds its boundary cases
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def served_openapi(app: FastAPI) -> dict:
    """The /openapi.json the app serves, fetched without starting its lifespan (no models needed)."""
    client = asgi.get_client(app)  # not `with`: entering the client would start the lifespan
    try:
        return client.get("/openapi.json").json()
    finally:
        client.close()


# The document does not depend on the settings, so an app that loads nothing gives it at import.
OPENAPI = served_openapi(create_app(Settings(models=[])))
schema = schemathesis.openapi.from_dict(
    OPENAPI,
    # valid but heavy requests (n=16 at rk4 x 999) take seconds on a busy 2-core runner: not a defect
    config=schemathesis.Config.from_dict(
        {"seed": 0, "request-timeout": 60, "generation": {"max-examples": MAX_EXAMPLES}}
    ),
)


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The app on untrained checkpoints, with small upload limits so oversized bodies are cheap to send."""
    folder = tmp_path_factory.mktemp("fuzz-models")
    models = []
    for name, preset in (("fuzz-cond", "final-cond"), ("fuzz", "vae-cnf-prior")):
        torch.manual_seed(0)
        models.append(str(save_pretrained(LatentCNF(PRESETS[preset].model), folder / name, {"dataset": "mnist"})))
    settings_ = Settings(
        models=models, default_model="fuzz-cond", max_files=2, max_upload_bytes=100_000, max_image_pixels=1_000_000
    )
    app = create_app(settings_)
    assert served_openapi(app) == OPENAPI
    return app


@pytest.fixture(autouse=True)
def ready(fuzz_app: FastAPI) -> None:
    """Schemathesis ends the app's lifespan after each test; start it and wait for the models first."""
    with asgi.get_client(fuzz_app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.02)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_responses_match_the_schema(case: schemathesis.Case, fuzz_app: FastAPI) -> None:
    case.call_and_validate(checks=CHECKS, app=fuzz_app)
