"""Bad input gets a clear 4xx in one JSON shape; the service keeps serving."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest
from PIL import Image

import service
from service import failures
from service.errors import STATUSES

from .bad_inputs import CASES, RGBA, VALID


def test_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name, method, path, kwargs, status", CASES, ids=[case[0] for case in CASES])
def test_bad_input(client, name, method, path, kwargs, status):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]


def test_service_still_serves_after_the_corpus(client):
    for _, method, path, kwargs, _ in CASES:
        getattr(client, method)(path, **kwargs)
    assert client.post("/generate", json={"n": 1, "seed": 1}).status_code == 200
    assert client.post("/score", files={"file": ("rgba.png", RGBA)}).status_code == 200


def test_error_messages_name_the_problem(client):
    assert "n" in client.post("/generate", json={"n": 0}).json()["error"]["message"]
    assert "empty" in client.post("/score", files={"file": ("a.png", b"")}).json()["error"]["message"]
    assert "a.txt" in client.post("/score", files={"file": ("a.txt", b"hi")}).json()["error"]["message"]


def test_validation_messages_name_fields_alike_in_body_query_and_form(client):
    """Only the field's name, wherever it came from: no `body.`, `query.` or JSON positions posing as fields."""
    responses = {
        "n: Input should be greater than or equal to 1": client.post("/generate", json={"n": 0}),
        "solver.steps: Input should be greater than or equal to 1": client.post(
            "/generate", json={"solver": {"steps": 0}}
        ),
        "steps: Input should be greater than or equal to 2": client.get("/trajectory", params={"steps": 1}),
        "format: Input should be 'png' or 'json'": client.get("/trajectory", params={"format": "gif"}),
        "importance_samples: Input should be greater than or equal to 1": client.post(
            "/score", data={"importance_samples": "0"}, files={"file": ("a.png", b"x")}
        ),
        "JSON decode error at character 1: Expecting property name enclosed in double quotes": client.post(
            "/generate", content=b"{n: 1}", headers={"content-type": "application/json"}
        ),
    }
    for message, response in responses.items():
        assert response.status_code == 422, response.text
        assert response.json() == {"error": {"code": "invalid_request", "message": message}}


def test_a_body_that_is_no_json_object_is_told_what_to_send(client):
    """curl -d 'n=1' sends a form; pydantic alone would say "Input should be a valid dictionary or object"."""
    wanted = "the request body must be a JSON object, sent with Content-Type: application/json; got "
    responses = {
        "Content-Type: application/x-www-form-urlencoded": client.post("/generate", data={"n": "1"}),
        "Content-Type: text/plain": client.post(
            "/generate", content=b'{"n": 1}', headers={"content-type": "text/plain"}
        ),
        "a JSON array": client.post("/generate", json=[1, 2]),
        "no body": client.post("/generate"),
    }
    for got, response in responses.items():
        assert response.status_code == 422, response.text
        assert response.json() == {"error": {"code": "invalid_request", "message": wanted + got}}


def test_refusals_at_a_configured_limit_name_its_variable(client):
    """The message names the LATENT_CNF_* setting that moves the limit: the fix, for whoever runs the server."""
    big = io.BytesIO()
    Image.new("L", (5000, 5000)).save(big, format="PNG")  # 25,000,000 pixels in 25 kB
    response = client.post("/score", files={"file": ("big.png", big.getvalue())})
    assert response.status_code == 413
    message = (
        "big.png: 5000x5000 exceeds the limit of 16777216 pixels per image (the server's LATENT_CNF_MAX_IMAGE_PIXELS)"
    )
    assert response.json() == {"error": {"code": "image_too_large", "message": message}}

    response = client.post("/score", files=[("file", (f"{i}.png", VALID)) for i in range(5)])  # this app's limit: 4
    assert response.status_code == 422
    message = "at most 4 images per request, got 5 (the server's LATENT_CNF_MAX_FILES)"
    assert response.json() == {"error": {"code": "too_many_files", "message": message}}


def test_every_limit_refusal_names_its_setting_once():
    assert str(failures.RequestTooLarge("over")) == "over (the server's LATENT_CNF_MAX_REQUEST_PIXELS)"
    named = "over the limit (LATENT_CNF_MAX_REQUEST_COST): ask for less"
    assert str(failures.RequestTooCostly(named)) == named  # already named: not twice
    assert str(failures.InvalidRequest("n: too small")) == "n: too small"  # no setting behind it


def test_every_refusal_has_its_http_status():
    """The core's refusals are answered in service/errors.py: none may reach the 500 handler unmapped."""
    kinds = {
        value for value in vars(failures).values() if isinstance(value, type) and issubclass(value, failures.Refusal)
    }
    assert kinds - {failures.Refusal} == set(STATUSES)


CORE = (
    "batching",
    "call_spans",
    "cost",
    "failures",
    "inference",
    "model_calls",
    "model_process",
    "registry",
    "repository",
    "metrics",
    "open_inference",
    "schemas",
    "scores",
    "served",
    "settings",
    "uploads",
    "v2_models",
)


def test_service_core_imports_no_http():
    """The hub, batcher, upload decoding, score rows and v2 models (and what they import of the service) know nothing
    of HTTP: service/errors.py decides statuses and error bodies, the routes build responses."""
    root = Path(service.__file__).parent
    for name in CORE:
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:  # from .x import y, or from . import x
                used = [node.module] if node.module else [alias.name for alias in node.names]
                assert {module.split(".")[0] for module in used} <= set(CORE), (name, used)
            elif isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] not in ("fastapi", "starlette"), (name, node.module)
            elif isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & {"fastapi", "starlette"}, name
