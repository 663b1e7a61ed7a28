"""POST /complete, <model>.complete (v2), GET /latent-map, and the map positions /score and /trajectory add: what
they answer, that they agree with the model, their errors, and a completion merged with others."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch

import latent_cnf
from bench.harness import metric, running_service
from latent_cnf import data, model_folder
from latent_cnf.completion import complete, named_mask
from latent_cnf.images import binarize_at_threshold
from train.latent_map import encode

from .conftest import REPO
from .service_helpers import ONE_THREAD, decode_png, png
from .test_v2_protocol import outputs, scalar

MODEL = "mnist-final-cond"


@pytest.fixture(scope="module")
def digits(data_dir) -> data.Split:
    return data.load_split("mnist", "test", data_dir, download=False).subset(torch.arange(8))


def pixels_of(split: data.Split, i: int) -> torch.Tensor:
    return binarize_at_threshold(data.to_float(split.images[i : i + 1])).reshape(28, 28)


def test_a_top_half_completes_with_weights_labels_and_its_pixels_kept(client, digits):
    image = pixels_of(digits, 0)  # a 7
    response = client.post("/complete", json={"image": image.tolist(), "mask": "top", "k": 6, "seed": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["mask"], body["observed_pixels"], body["seed"]) == (MODEL, "top", 392, 3)
    assert body["proposals"] == 10 * body["importance_samples"] == 320
    assert 1 <= body["effective_sample_size"] <= body["proposals"] and 0 < body["mass"] <= 1 + 1e-6
    assert sum(body["label_probabilities"]) == pytest.approx(1, abs=1e-5) and body["predicted_label"] == 7
    weights = [completion["weight"] for completion in body["completions"]]
    assert len(weights) == 6 and sum(weights) == pytest.approx(1, abs=1e-5) and weights == sorted(weights)[::-1]
    for completion in body["completions"]:
        shown = np.asarray(decode_png(completion["image"]), dtype=int)
        assert shown.shape == (28, 28) and np.array_equal(shown[:14], image[:14].numpy().astype(int) * 255)
    again = client.post("/complete", json={"image": image.tolist(), "mask": "top", "k": 6, "seed": 3}).json()
    assert again == body  # the seed fixes the proposals


def test_the_answer_is_the_models_completion(client, digits):
    image, mask = pixels_of(digits, 1), named_mask("left")
    body = client.post("/complete", json={"image": image.tolist(), "mask": mask.tolist(), "k": 3, "seed": 9}).json()
    assert body["mask"] == "custom"
    model = latent_cnf.load(MODEL)
    (expected,) = complete(model, image[None], mask[None], 3, 32, torch.tensor([9]))
    np.testing.assert_allclose([c["latent"] for c in body["completions"]], expected.latents.numpy(), atol=1e-4)
    np.testing.assert_allclose([c["weight"] for c in body["completions"]], expected.weights.numpy(), atol=1e-4)
    assert body["effective_sample_size"] == pytest.approx(expected.effective_sample_size, rel=1e-3)


BLANK = [[0.0] * 28] * 28


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"image": BLANK, "mask": [[False] * 28] * 28}, 422, "the mask observes no pixel"),
        ({"image": BLANK, "mask": [[True] * 28] * 28}, 422, "the mask observes every pixel"),
        ({"image": BLANK[:27], "mask": "top"}, 422, "image: List should have at least 28 items"),
        ({"image": [[0.0] * 29] * 28, "mask": "top"}, 422, "image.0: List should have at most 28 items"),
        ({"image": [[2.0] * 28] * 28, "mask": "top"}, 422, "less than or equal to 1"),
        ({"image": BLANK, "mask": [[True] * 28] * 14}, 422, "mask"),
        ({"image": BLANK, "mask": "middle"}, 422, "Input should be 'top', 'bottom', 'left' or 'right'"),
        ({"image": BLANK, "mask": "top", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"image": BLANK, "mask": "top", "k": 33}, 422, "k: Input should be less than or equal to 32"),
        ({"image": BLANK, "mask": "top", "k": 32, "importance_samples": 2}, 422, "at most 20 completions"),
        ({"image": BLANK, "mask": "top", "model": "nope"}, 404, "no model 'nope'"),
        (
            {"image": BLANK, "mask": "top", "model": "mnist-large", "importance_samples": 1024},
            422,
            "LATENT_CNF_MAX_REQUEST_COST",
        ),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(client, body, status, message):
    response = client.post("/complete", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_v2_complete_equals_the_native_route(client, digits):
    image, mask = pixels_of(digits, 2), named_mask("bottom")
    native = client.post("/complete", json={"image": image.tolist(), "mask": "bottom", "k": 4, "seed": 5}).json()
    inputs = [
        {"name": "IMAGE", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": image.reshape(-1).tolist()},
        {"name": "MASK", "datatype": "BOOL", "shape": [1, 1, 28, 28], "data": mask.reshape(-1).tolist()},
        scalar("K", "INT32", 4),
        scalar("SEED", "INT64", 5),
    ]
    response = client.post(f"/v2/models/{MODEL}.complete/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    out = outputs(response.json())
    assert out["COMPLETIONS"].shape == (4, 1, 28, 28) and out["LABEL_PROBABILITIES"].shape == (10,)
    np.testing.assert_allclose(out["WEIGHTS"], [c["weight"] for c in native["completions"]], atol=1e-6)
    np.testing.assert_allclose(out["LATENTS"], [c["latent"] for c in native["completions"]], atol=1e-6)
    assert out["LABELS"].tolist() == [c["label"] for c in native["completions"]]
    assert float(out["EFFECTIVE_SAMPLE_SIZE"][0]) == pytest.approx(native["effective_sample_size"])
    metadata = client.get(f"/v2/models/{MODEL}.complete").json()
    assert [t["name"] for t in metadata["inputs"]] == ["IMAGE", "MASK", "K", "IMPORTANCE_SAMPLES", "SEED"]
    empty = {**inputs[1], "data": [0] * 784}
    refused = client.post(f"/v2/models/{MODEL}.complete/infer", json={"inputs": [inputs[0], empty]})
    assert refused.status_code == 422 and "observes no pixel" in refused.json()["error"]
    unconditional = client.get("/v2/models/uncond.complete").json()
    assert "LABEL_PROBABILITIES" not in [t["name"] for t in unconditional["outputs"]]


def test_the_latent_map_route_serves_the_shipped_map_cached(client, data_dir):
    response = client.get("/latent-map", params={"model": MODEL})
    assert response.status_code == 200 and response.headers["cache-control"].startswith("public")
    body = response.json()
    shipped = model_folder.read_latent_map(MODEL)
    assert shipped is not None and body["latent_dim"] == 8 and len(body["points"]) == 1000
    np.testing.assert_allclose(body["axes"], shipped.axes.numpy())
    # each point is the projected encoding of the test image it names
    test = data.load_split("mnist", "test", data_dir, download=False)
    chosen = torch.tensor([point["index"] for point in body["points"][:50]])
    encodings = encode(latent_cnf.load(MODEL), test.subset(chosen))
    expected = shipped.project(encodings).numpy()
    np.testing.assert_allclose([[p["x"], p["y"]] for p in body["points"][:50]], expected, atol=1e-4)
    assert [p["label"] for p in body["points"][:50]] == test.labels[chosen].tolist()
    missing = client.get("/latent-map", params={"model": "uncond"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_latent_map"
    assert "python -m train.latent_map" in missing.json()["error"]["message"]


def test_score_places_the_drawing_on_the_map_and_trajectories_their_path(client, digits):
    """The first test digit, scored as it is (a 7, label 7 wins), lies where the map's point 0 is."""
    upload = png(digits.images[0].numpy())
    result = client.post("/score", files={"file": ("d.png", upload)}, data={"preprocess": "resize"}).json()
    place = result["results"][0]["latent_map"]
    point = client.get("/latent-map").json()["points"][0]
    assert point["index"] == 0 and (place["x"], place["y"]) == pytest.approx((point["x"], point["y"]), abs=1e-4)
    covariance = np.asarray(place["covariance"])
    assert covariance.shape == (2, 2) and np.allclose(covariance, covariance.T) and np.linalg.det(covariance) > 0
    path = client.get("/trajectory", params={"format": "json", "steps": 3, "n": 2, "seed": 4}).json()
    shipped = model_folder.read_latent_map(MODEL)
    assert shipped is not None
    for step in path["trajectory"]:
        expected = shipped.project(torch.tensor(step["latents"])).numpy()
        np.testing.assert_allclose(step["map_points"], expected, atol=1e-6)
    unconditional = client.get("/trajectory", params={"format": "json", "steps": 2, "model": "uncond"}).json()
    assert unconditional["trajectory"][0]["map_points"] is None


async def complete_many(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/complete", json=body) for body in bodies))


def test_a_completion_merged_with_others_is_the_one_it_gets_alone(digits):
    bodies = [
        {"image": pixels_of(digits, i).tolist(), "mask": mask, "k": 4, "seed": 100 + i}
        for i, mask in enumerate(["top", "left", "bottom", "right", "top", "top"])
    ]
    env = {"LATENT_CNF_MODELS": MODEL, "LATENT_CNF_MAX_WAIT_MS": "500"}
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        alone = httpx.post(f"{server.url}/complete", json=bodies[0], timeout=60).json()
        before = httpx.get(f"{server.url}/metrics").text
        together = asyncio.run(complete_many(server.url, bodies))
        after = httpx.get(f"{server.url}/metrics").text
    calls = metric(after, "latent_cnf_batch_requests_count", kind="complete") - metric(
        before, "latent_cnf_batch_requests_count", kind="complete"
    )
    assert all(r.status_code == 200 for r in together)
    assert 0 < calls < len(bodies), "the requests were not merged"
    merged = together[0].json()
    np.testing.assert_allclose(
        [c["latent"] for c in merged["completions"]], [c["latent"] for c in alone["completions"]], atol=1e-4
    )
    np.testing.assert_allclose(
        [c["weight"] for c in merged["completions"]], [c["weight"] for c in alone["completions"]], atol=1e-4
    )
    assert merged["effective_sample_size"] == pytest.approx(alone["effective_sample_size"], rel=1e-3)
    assert merged["label_probabilities"] == pytest.approx(alone["label_probabilities"], abs=1e-4)


def test_the_example_requests_hold_the_example_digit_with_its_top_half_observed():
    digit = np.asarray(decode_png((REPO / "docs" / "examples" / "digit.png").read_bytes()), dtype=float) / 255
    native = json.loads((REPO / "docs" / "examples" / "complete-top.json").read_text())
    assert native["mask"] == "top" and np.allclose(native["image"], digit, atol=5e-4)
    v2 = {
        tensor["name"]: tensor
        for tensor in json.loads((REPO / "docs" / "examples" / "complete-v2.json").read_text())["inputs"]
    }
    assert v2["IMAGE"]["data"] == [value for row in native["image"] for value in row]
    assert v2["MASK"]["data"] == named_mask("top").reshape(-1).tolist()
    assert v2["K"]["data"] == [native["k"]] and v2["SEED"]["data"] == [native["seed"]]
