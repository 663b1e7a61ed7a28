"""Request IDs: every response carries one (the client's X-Request-ID, or a new one), and every log line a
request causes carries the same one, in text or JSON logs."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.harness import running_service
from service import request_id
from service.app import create_app
from service.settings import Settings

from .service_helpers import ONE_THREAD

GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    "method, path, kwargs, status",
    [
        ("get", "/healthz", {}, 200),
        ("post", "/generate", {"json": {"n": 1, "seed": 0}}, 200),
        ("post", "/generate", {"json": {"n": 0}}, 422),
        ("get", "/v1/models/nope", {}, 404),
        ("get", "/v2/health/ready", {}, 200),
        ("post", "/v2/models/nope.score/infer", {"json": {"inputs": []}}, 404),
        ("post", "/generate", {"content": b"x" * 300_000}, 413),  # refused before routing
    ],
)
def test_every_response_echoes_the_callers_id(client, method, path, kwargs, status):
    response = getattr(client, method)(path, headers={"X-Request-ID": "client-id-1"}, **kwargs)
    assert response.status_code == status
    assert response.headers["X-Request-ID"] == "client-id-1"


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "é"])
def test_a_missing_or_unusable_id_is_replaced(client, given):
    headers = {"X-Request-ID": given.encode()} if given is not None else {}
    response = client.get("/healthz", headers=headers)
    assert GENERATED.fullmatch(response.headers["X-Request-ID"])


def test_ids_differ_between_requests(client):
    assert client.get("/healthz").headers["X-Request-ID"] != client.get("/healthz").headers["X-Request-ID"]


def test_an_unexpected_error_answers_with_the_id():
    app = create_app(Settings(models=[]))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    response = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500 and response.headers["X-Request-ID"] == "crash-1"


def test_log_records_carry_the_id_of_their_request():
    record = logging.LogRecord("latent_cnf.service", logging.INFO, __file__, 1, "hello", None, None)
    assert request_id.RequestIdFilter().filter(record) and record.request_id == "-"  # outside any request


def test_the_request_log_lines_of_the_running_service_carry_its_id():
    """`python -m service` with JSON logs: the access line of each request names its ID."""
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", **ONE_THREAD, "LATENT_CNF_LOG_FORMAT": "json"}
    with running_service(env, timeout_s=180) as server:
        httpx.post(f"{server.url}/generate", json={"n": 1}, headers={"X-Request-ID": "log-me-1"}, timeout=60)
        body = {"inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "data": [1]}]}
        httpx.post(f"{server.url}/v2/models/nope.generate/infer", json=body, headers={"X-Request-ID": "log-me-2"})
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert any(line["name"] == "latent_cnf.service" and "loaded mnist-final-cond" in line["message"] for line in lines)
    for request, path in (("log-me-1", "/generate"), ("log-me-2", "/v2/models/nope.generate/infer")):
        about = [line for line in lines if path in line["message"]]
        assert about and all(line["request_id"] == request for line in about), about
