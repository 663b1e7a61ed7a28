"""The real app (lifespan included) on the shipped checkpoints: every endpoint's status and body."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from bench.harness import metric
from latent_cnf import data
from latent_cnf.judges import load_classifier
from service.app import create_app

from .service_helpers import decode_png, make_settings, png


@pytest.fixture(scope="module")
def mnist_digit(data_dir) -> bytes:
    return png(data.load_split("mnist", "test", data_dir).images[0].numpy())


@pytest.fixture(scope="module")
def fashion_item(data_dir) -> bytes:
    return png(data.load_split("fashion-mnist", "test", data_dir).images[0].numpy())


def test_readyz_is_503_before_models_are_loaded(tmp_path):
    unstarted = TestClient(create_app(make_settings(tmp_path)))  # no lifespan: nothing loaded
    response = unstarted.get("/readyz")
    assert response.status_code == 503 and response.json() == {
        "status": "loading",
        "ready": False,
        "models": [],
        "failed": {},
    }
    health = unstarted.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "ready": False, "models": [], "failed": {}}
    refused = unstarted.post("/generate", json={"n": 1})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"


def test_health_and_ready(client):
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["ready"] is True and "mnist-final-cond" in ready["models"]
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "ready": True, "models": ready["models"], "failed": {}}
    assert set(ready["models"]) == {m["name"] for m in client.get("/v1/models").json()["models"]}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_other_hosts(client, page):
    """An offline machine gets working docs: every script, style sheet and icon comes from the app itself."""
    html = client.get(page)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "://" not in html.text  # no absolute URL, so no CDN
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(url.endswith(".js") for url in assets), assets
    kinds = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(kinds[Path(url).suffix]) and len(asset.content) > 1000, url
    assert client.get("/openapi.json").status_code == 200


def test_models_metadata(client):
    listing = client.get("/v1/models").json()
    assert listing["default"] == "mnist-final-cond"
    one = client.get("/v1/models/mnist-final-cond").json()
    assert (
        one["prior_uses_labels"] is True
        and one["encoder_uses_labels"] is True
        and one["latent_dim"] == 8
        and one["device"] == "cpu"
    )
    assert len(one["checkpoint_sha256"]) == 64 and one["parameters"] > 10_000
    assert one["training"]["dataset"] == "mnist" and "validation" in one["training"]
    assert "solvers" in one["serving"] and "score_reference" not in one["serving"]
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


def test_generate_json(client):
    body = client.post("/generate", json={"n": 3, "label": 4, "seed": 9}).json()
    assert body["model"] == "mnist-final-cond" and body["n"] == 3 and body["seed"] == 9
    assert body["labels"] == [4, 4, 4] and body["nfe"] > 0
    assert len(body["latents"]) == 3 and len(body["latents"][0]) == 8
    for image in body["images"]:
        decoded = decode_png(image)
        assert decoded.size == (28, 28) and decoded.mode == "L"


def test_generate_same_seed_same_images(client):
    first = client.post("/generate", json={"n": 4, "seed": 123}).json()
    second = client.post("/generate", json={"n": 4, "seed": 123}).json()
    assert first["images"] == second["images"] and first["labels"] == second["labels"]
    other = client.post("/generate", json={"n": 4, "seed": 124}).json()
    assert other["images"] != first["images"]


@pytest.mark.parametrize("extra", [{}, {"label": 2}, {"temperature": 0.7}], ids=["drawn-label", "label", "cold"])
def test_a_seed_names_the_same_samples_whatever_n_and_route(client, extra):
    """Sample i of a seeded request depends on (seed, i, label, temperature, model) only: /generate with n = 1
    and n = 16, /trajectory's last frame and /interpolate's t = 0 agree on a seed's first sample."""
    one = client.post("/generate", json={"n": 1, "seed": 21} | extra).json()
    many = client.post("/generate", json={"n": 16, "seed": 21} | extra).json()
    np.testing.assert_allclose(many["latents"][0], one["latents"][0], atol=1e-5)
    assert many["labels"][0] == one["labels"][0]
    path = client.get("/trajectory", params={"n": 3, "steps": 5, "seed": 21, "format": "json"} | extra).json()
    np.testing.assert_allclose(path["trajectory"][-1]["latents"], many["latents"][:3], atol=1e-4)
    assert path["labels"] == many["labels"][:3]
    if "label" in extra:  # /interpolate asks a label-conditioned model for one
        between = client.get("/interpolate", params={"seed_a": 21, "seed_b": 22, "t": 0} | extra).json()
        np.testing.assert_allclose(between["latents"][0], one["latents"][0], atol=1e-5)


def test_generate_temperature_shrinks_the_base_noise(client):
    request = {"n": 4, "seed": 5, "label": 1}
    warm = client.post("/generate", json=request).json()
    cold = client.post("/generate", json=request | {"temperature": 0.5}).json()
    assert warm["temperature"] == 1.0 and cold["temperature"] == 0.5 and cold["images"] != warm["images"]

    def path(**extra) -> list[dict]:
        return client.get("/trajectory", params=request | extra | {"format": "json"}).json()["trajectory"]

    cold_path, warm_path = path(temperature=0.5), path()
    np.testing.assert_allclose(cold_path[0]["latents"], 0.5 * np.array(warm_path[0]["latents"]), rtol=1e-5, atol=1e-6)
    # same noise; the trajectory's 10 frame intervals round the calibrated rk4 x 4 up to 10 steps
    same_solver = client.post("/generate", json=request | {"temperature": 0.5, "solver": {"steps": 10}}).json()
    np.testing.assert_allclose(same_solver["latents"], cold_path[-1]["latents"], atol=1e-4)
    np.testing.assert_allclose(cold["latents"], cold_path[-1]["latents"], atol=0.05)  # within the calibration
    refused = client.post("/generate", json={"n": 1, "temperature": 0})
    assert refused.status_code == 422 and "temperature" in refused.text


def test_generate_without_seed_returns_the_seed_used(client):
    body = client.post("/generate", json={"n": 2}).json()
    again = client.post("/generate", json={"n": 2, "seed": body["seed"]}).json()
    assert again["images"] == body["images"]


@pytest.mark.parametrize("how", ["accept", "query"])
def test_generate_png_grid(client, how):
    kwargs = {"headers": {"Accept": "image/png"}} if how == "accept" else {"params": {"format": "png"}}
    response = client.post("/generate", json={"n": 5, "seed": 1}, **kwargs)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert decode_png(response.content).size == (3 * 30 + 2, 2 * 30 + 2)  # 3 columns, 2 rows of 28 + padding


def test_generate_with_solver(client):
    body = client.post("/generate", json={"n": 2, "seed": 1, "solver": {"method": "rk4", "steps": 5}}).json()
    assert body["nfe"] == 20


def test_trajectory_png(client):
    response = client.get("/trajectory", params={"steps": 11, "n": 2, "seed": 3})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    width, height = decode_png(response.content).size
    assert (width, height) == (2 * (11 * 30 + 2), 2 * (2 * 30 + 2) + 14)  # scale 2, 14 px of time labels


def test_trajectory_json(client):
    body = client.get("/trajectory", params={"steps": 5, "n": 2, "seed": 3, "label": 1, "format": "json"}).json()
    assert [step["t"] for step in body["trajectory"]] == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert body["labels"] == [1, 1]
    assert all(len(step["images"]) == 2 and len(step["latents"]) == 2 for step in body["trajectory"])
    final = client.post("/generate", json={"n": 2, "seed": 3, "label": 1}).json()
    np.testing.assert_allclose(body["trajectory"][-1]["latents"], final["latents"], atol=1e-4)


def test_score_ranks_digits_above_noise_and_clothes(client, mnist_digit, fashion_item):
    noise = png(np.random.default_rng(0).integers(0, 256, (28, 28)))
    files = [("file", ("digit.png", mnist_digit)), ("file", ("noise.png", noise)), ("file", ("item.png", fashion_item))]
    response = client.post("/score", files=files, data={"importance_samples": "16"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["digit.png", "noise.png", "item.png"]
    digit, noise_score, item = (r["log_likelihood_nats"] for r in results)
    assert digit > noise_score and digit > item
    first = results[0]
    assert first["importance_samples"] == 16 and 0 <= first["percentile"] <= 100
    assert first["bits_per_dim"] == pytest.approx(-digit / (784 * np.log(2)))
    assert first["predicted_label"] in range(10) and first["in_distribution"] is True
    assert results[1]["in_distribution"] is False


def test_score_preprocess_resize_and_jpeg(client, mnist_digit):
    jpeg = png(np.asarray(Image.open(io.BytesIO(mnist_digit)).convert("RGB")), fmt="JPEG")
    response = client.post("/score", files={"file": ("d.jpg", jpeg)}, data={"preprocess": "resize"})
    assert response.status_code == 200 and response.json()["preprocess"] == "resize"


def test_metrics_move_after_requests(client):
    before = client.get("/metrics").text
    client.post("/generate", json={"n": 3, "seed": 1})
    after = client.get("/metrics").text
    generate_ok = {"endpoint": "/generate", "method": "POST", "status": "200"}
    requests = "latent_cnf_requests_total"
    assert metric(after, requests, **generate_ok) == metric(before, requests, **generate_ok) + 1
    samples = "latent_cnf_samples_generated_total"
    assert metric(after, samples, model="mnist-final-cond") == metric(before, samples, model="mnist-final-cond") + 3
    assert metric(after, "latent_cnf_model_info", model="mnist-final-cond") == 1
    assert metric(after, "process_resident_memory_bytes") > 0


def test_conditional_samples_are_the_requested_digit(client):
    """The judge classifier calls most samples for label y a y (evaluation: 0.71 over 1,000 samples)."""
    judge = load_classifier("mnist")
    hits = 0
    for label in range(10):
        body = client.post("/generate", json={"n": 10, "label": label, "seed": 100 + label}).json()
        images = torch.tensor(
            np.stack([np.asarray(decode_png(image), dtype=np.float32) / 255 for image in body["images"]])
        )
        with torch.no_grad():
            hits += (judge(images).argmax(1) == label).sum().item()
    assert hits / 100 >= 0.6


def test_the_generate_shortcut_answers_as_the_fastapi_route_does(client):
    """service/fast_generate.py takes a plain JSON request; `?format=json` goes through FastAPI's route. Same
    answer, byte for byte; a body that does not validate is handed to the route and refused in its words."""
    body = {"n": 2, "seed": 5, "temperature": 0.9}
    shortcut, route = client.post("/generate", json=body), client.post("/generate?format=json", json=body)
    assert shortcut.status_code == route.status_code == 200
    assert shortcut.content == route.content and shortcut.headers["content-type"] == "application/json"
    refused = client.post("/generate", json={"n": 0, "surprise": True})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"
    assert "n:" in refused.json()["error"]["message"] and "surprise" in refused.json()["error"]["message"]
