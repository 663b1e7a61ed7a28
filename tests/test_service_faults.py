"""Faults the service must survive: broken checkpoints beside healthy ones, odd methods and names, HEAD probes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.harness import metric
from latent_cnf import model_folder
from service.app import create_app
from service.settings import Settings

from .service_helpers import wait_ready


def broken_copies(folder: Path) -> tuple[Path, Path]:
    """A copy of a shipped model with truncated weights, and one whose config is not JSON."""
    source = model_folder.resolve("mnist-final")
    truncated, bad_card = folder / "truncated", folder / "bad-card"
    for target in (truncated, bad_card):
        shutil.copytree(source, target)
    weights = truncated / model_folder.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    (bad_card / model_folder.CONFIG_FILE).write_text('{"format": ')
    return truncated, bad_card


def serve(**settings) -> TestClient:
    return TestClient(create_app(Settings(warmup=False, **settings)))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    truncated, bad_card = broken_copies(tmp_path_factory.mktemp("faulty"))
    with serve(models=["mnist-final-cond", str(truncated), str(bad_card)]) as client:
        wait_ready(client)
        yield client


def test_broken_checkpoints_are_reported_and_the_healthy_one_serves(faulty):
    ready = faulty.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == ["mnist-final-cond"]
    assert set(ready["failed"]) == {"truncated", "bad-card"}
    assert "model.safetensors" in ready["failed"]["truncated"] and "config.json" in ready["failed"]["bad-card"]
    assert faulty.post("/generate", json={"n": 2, "seed": 0}).status_code == 200
    listed = faulty.get("/v1/models").json()
    assert [m["name"] for m in listed["models"]] == ["mnist-final-cond"] and set(listed["failed"]) == set(
        ready["failed"]
    )
    response = faulty.post("/generate", json={"n": 1, "model": "bad-card"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
    assert "config.json" in response.json()["error"]["message"]
    assert metric(faulty.get("/metrics").text, "latent_cnf_model_load_failed", model="truncated") == 1


def test_a_broken_default_model_keeps_readyz_503_and_says_why(tmp_path):
    truncated, _ = broken_copies(tmp_path)
    with serve(models=["mnist-final-cond", str(truncated)], default_model="truncated") as client:
        deadline = time.monotonic() + 60
        while (response := client.get("/readyz")).json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert response.status_code == 503 and response.json()["status"] == "failed"
        assert "truncated" in response.json()["failed"]
        assert client.post("/generate", json={"n": 1, "model": "mnist-final-cond"}).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_answer_head(faulty, path):
    response = faulty.head(path)
    assert response.status_code == 200 and response.content == b""


@pytest.mark.parametrize("name, message", [("", "at least 1 character"), ("m" * 1_000_000, "at most 128 characters")])
def test_model_names_are_bounded(faulty, name, message):
    """An empty JSON or query name is an error, not the default; a long one is refused without being echoed.
    (An empty form field means 'not given', as HTML forms send blank fields.)"""
    responses = [faulty.post("/generate", json={"n": 1, "model": name})]
    if name:
        responses.append(faulty.post("/score", data={"model": name}, files={"file": ("x.png", b"not read")}))
    if len(name) < 10_000:
        responses.append(faulty.get("/trajectory", params={"model": name}))
    for response in responses:
        assert response.status_code == 422 and message in response.json()["error"]["message"]
        assert len(response.content) < 1000


def counter(client: TestClient, labels: dict[str, str]) -> float:
    return metric(client.get("/metrics").text, "latent_cnf_requests_total", **labels)


def test_made_up_methods_and_paths_do_not_grow_the_metrics(faulty):
    other = {"endpoint": "/healthz", "method": "other", "status": "405"}
    unmatched = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    before = counter(faulty, other), counter(faulty, unmatched)
    for i in range(20):
        faulty.request(f"M{i}", "/healthz")
        faulty.get(f"/no-such-path-{i}")
    text = faulty.get("/metrics").text
    assert "M1" not in text and "no-such-path" not in text
    assert (counter(faulty, other), counter(faulty, unmatched)) == (before[0] + 20, before[1] + 20)


def test_a_body_refused_before_routing_is_counted_for_its_route(tmp_path):
    refused = {"endpoint": "/score", "method": "POST", "status": "413"}
    with serve(models=["mnist-final-cond"], max_upload_bytes=1000) as client:
        before = counter(client, refused)
        response = client.post("/score", files={"file": ("x.png", b"0" * 5000)})
        assert response.status_code == 413
        assert counter(client, refused) == before + 1
