"""What the demo page needs from the API: /interpolate, label probabilities and pictures in /score, class names
in /v1/models, and the page itself with its assets served by the app."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import latent_cnf
from latent_cnf import data
from latent_cnf.model import slerp
from service.routes.page import STATIC

from .service_helpers import decode_png, png

DEFAULT = "mnist-final-cond"


def pixels(encoded: str) -> np.ndarray:
    return np.asarray(decode_png(encoded))


def test_interpolation_ends_are_the_two_seeds_samples(client):
    ends = client.get("/interpolate", params={"seed_a": 5, "seed_b": 9, "label": 3, "t": [0, 1]})
    assert ends.status_code == 200, ends.text
    body = ends.json()
    assert body["t"] == [0.0, 1.0] and body["label"] == 3 and body["model"] == DEFAULT
    for seed, image, latent in zip((5, 9), body["images"], body["latents"], strict=True):
        sample = client.post("/generate", json={"n": 1, "label": 3, "seed": seed}).json()
        assert image == sample["images"][0]  # the same noise through the same solver: the same PNG
        np.testing.assert_allclose(latent, sample["latents"][0], atol=1e-5)


def test_interpolation_runs_the_slerped_noise_through_the_flow(client):
    body = client.get("/interpolate", params={"seed_a": 5, "seed_b": 9, "label": 3, "t": 0.3}).json()
    model = latent_cnf.load(DEFAULT, "cpu")
    z_a, labels = model.draw_base(1, 3, 5)
    z_b, _ = model.draw_base(1, 3, 9)
    z0 = slerp(z_a, z_b, torch.tensor([[0.3]]))
    expected = model.sample_from(z0, labels, model.sample_solver).latents[-1]
    np.testing.assert_allclose(body["latents"], expected.numpy(), atol=1e-5)
    assert body["t"] == [0.3]
    midway = pixels(body["images"][0]).astype(int)
    ends = client.get("/interpolate", params={"seed_a": 5, "seed_b": 9, "label": 3, "t": [0, 1]}).json()
    assert all(np.abs(midway - pixels(end)).max() > 0 for end in ends["images"])


def test_slerp_keeps_the_norm_of_equal_norm_noise():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    t = torch.tensor([[0.0], [0.25], [0.5], [1.0]])
    z = slerp(a, b, t)
    assert torch.equal(z[0], a[0]) and torch.equal(z[3], b[0])
    torch.testing.assert_close(z.norm(dim=1), torch.full((4,), 3.0))
    torch.testing.assert_close(slerp(a, a, t), a.expand(4, 2))  # parallel: no division by sin(0)


@pytest.mark.parametrize(
    "params, code",
    [
        ({"seed_a": 1, "seed_b": 2}, "label_required"),  # the default model is label-conditioned
        ({"seed_a": 1, "seed_b": 2, "label": 1, "t": 1.5}, "invalid_request"),
        ({"seed_a": 1, "seed_b": 2, "label": 1, "t": [0.5] * 65}, "invalid_request"),
        ({"seed_a": 1, "seed_b": 2, "label": 1, "model": "uncond"}, "label_not_supported"),
    ],
)
def test_interpolation_refuses_bad_parameters(client, params, code):
    response = client.get("/interpolate", params=params)
    assert response.status_code == 422 and response.json()["error"]["code"] == code


def test_an_unconditional_model_interpolates_without_a_label(client):
    body = client.get("/interpolate", params={"seed_a": 1, "seed_b": 2, "model": "uncond"}).json()
    assert body["label"] is None and len(body["images"]) == 1


@pytest.fixture(scope="module")
def test_digits(data_dir) -> tuple[list[bytes], list[int]]:
    split = data.load_split("mnist", "test", data_dir)
    return [png(split.images[i].numpy()) for i in range(4)], split.labels[:4].tolist()


def test_score_returns_p_label_given_the_image(client, test_digits):
    images, labels = test_digits
    files = [("file", (f"{i}.png", image)) for i, image in enumerate(images)]
    results = client.post("/score", files=files).json()["results"]
    for result, label in zip(results, labels, strict=True):
        probabilities = result["label_probabilities"]
        assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-6
        assert int(np.argmax(probabilities)) == result["predicted_label"] == label
        assert probabilities[label] > 0.9


def test_score_shows_what_the_model_saw_and_kept(client, test_digits, data_dir):
    result = client.post("/score", files={"file": ("digit.png", test_digits[0][0])}).json()["results"][0]
    seen = pixels(result["input_png"])
    digit = data.load_split("mnist", "test", data_dir).images[0].numpy()
    assert seen.shape == (28, 28) and set(np.unique(seen)) <= {0, 255}  # binarized, as scored
    assert (seen > 0).sum() == pytest.approx((digit > 127).sum(), rel=0.2)  # the same digit, recentred
    kept = pixels(result["reconstruction_png"]).astype(float) / 255
    assert kept.shape == (28, 28)
    assert np.abs(kept - seen / 255).mean() < 0.1  # a reconstruction of it, not of something else


@pytest.mark.parametrize("model", ["uncond", "mnist-final"])  # mnist-final: a label-conditioned encoder only
def test_an_unconditional_prior_gives_no_label_probabilities(client, test_digits, model):
    response = client.post("/score", files={"file": ("d.png", test_digits[0][0])}, data={"model": model})
    result = response.json()["results"][0]
    assert result["label_probabilities"] is None and result["predicted_label"] is None
    assert pixels(result["reconstruction_png"]).shape == (28, 28)


def test_models_name_their_classes(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["fashion-mnist-final-cond"]["class_names"][:2] == ["T-shirt/top", "Trouser"]
    assert models[DEFAULT]["class_names"] == [str(i) for i in range(10)]


def test_the_page_and_its_assets_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html  # no CDN, no web font: works without a network
    for asset in ("app.js", "app.css"):
        assert f"/static/{asset}" in html
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and response.text == (STATIC / asset).read_text()
        assert "http://" not in response.text and "https://" not in response.text
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not part of the API
