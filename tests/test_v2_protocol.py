"""The Open Inference Protocol (KServe v2 REST) routes, in process: metadata, JSON and binary tensors, the same
answers as the native routes for the same seed or image, the protocol's error shape, bounded metric labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.harness import metric
from latent_cnf.images import to_uint8
from service.routes.score import prepare

from .conftest import REPO
from .service_helpers import decode_png

GENERATE = "/v2/models/mnist-final-cond.generate/infer"
SCORE = "/v2/models/mnist-final-cond.score/infer"
DIGIT = REPO / "docs" / "examples" / "digit.png"


def scalar(name: str, datatype: str, value: float) -> dict:
    return {"name": name, "datatype": datatype, "shape": [1], "data": [value]}


def outputs(body: dict) -> dict[str, np.ndarray]:
    """A JSON response's outputs as arrays of their declared shape."""
    dtypes = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
    return {o["name"]: np.asarray(o["data"], dtypes[o["datatype"]]).reshape(o["shape"]) for o in body["outputs"]}


def binary_request(header: dict, *arrays: np.ndarray) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + b"".join(a.tobytes() for a in arrays), {"Inference-Header-Content-Length": str(len(encoded))}


def split_binary(response) -> dict[str, np.ndarray]:
    """A binary-extension response's outputs, read as the extension defines them."""
    length = int(response.headers["Inference-Header-Content-Length"])
    header, offset, out = json.loads(response.content[:length]), length, {}
    dtypes = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        raw = response.content[offset : offset + size]
        out[output["name"]] = np.frombuffer(raw, dtypes[output["datatype"]]).reshape(output["shape"])
        offset += size
    assert offset == len(response.content)
    return out


def digit_pixels() -> np.ndarray:
    """docs/examples/digit.png as /score prepares it (mnist preprocessing, binarized): (1, 1, 28, 28) FP32."""
    return prepare(DIGIT.read_bytes(), DIGIT.name, "mnist", 1_000_000).numpy().reshape(1, 1, 28, 28)


def test_server_metadata_and_health(client):
    assert client.get("/v2").json() == {
        "name": "latent-cnf",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_configuration"],
    }
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    ready = client.get("/v2/models/mnist-final-cond.score/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "mnist-final-cond.score", "ready": True}


def test_model_metadata_names_the_tensors(client):
    generate = client.get("/v2/models/mnist-final-cond.generate").json()
    assert generate["versions"] == ["1"] and generate["platform"] == "pytorch"
    assert [(t["name"], t["datatype"], t["shape"]) for t in generate["inputs"]] == [
        ("N", "INT32", [1]),
        ("LABEL", "INT32", [1]),
        ("SEED", "INT64", [1]),
        ("TEMPERATURE", "FP32", [1]),
    ]
    assert [(t["name"], t["shape"]) for t in generate["outputs"]] == [
        ("IMAGES", [-1, 1, 28, 28]),
        ("LATENTS", [-1, client.get("/v1/models/mnist-final-cond").json()["latent_dim"]]),
        ("LABELS", [-1]),
        ("SEED", [1]),
        ("NFE", [1]),
    ]
    unconditional = client.get("/v2/models/uncond.generate").json()
    assert "LABEL" not in [t["name"] for t in unconditional["inputs"]]
    score = client.get("/v2/models/mnist-final-cond.score").json()
    assert [t["name"] for t in score["inputs"]] == ["IMAGES", "IMPORTANCE_SAMPLES"]
    assert [t["name"] for t in score["outputs"]] == [
        "LOG_LIKELIHOOD",
        "BITS_PER_DIM",
        "ELBO",
        "KL",
        "RECONSTRUCTION",
        "LATENT_LOG_DENSITY",
        "PREDICTED_LABEL",
        "PERCENTILE",
    ]


def test_model_config_is_tritons_shape(client):
    config = client.get("/v2/models/mnist-final-cond.generate/config").json()
    assert config["name"] == "mnist-final-cond.generate" and config["max_batch_size"] == 0
    assert config["input"][0] == {"name": "N", "data_type": "TYPE_INT32", "dims": [1], "optional": False}
    assert config["output"][0] == {"name": "IMAGES", "data_type": "TYPE_FP32", "dims": [-1, 1, 28, 28]}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_v2_samples_equal_native_samples_for_the_same_seed(client):
    native = client.post("/generate", json={"n": 3, "label": 4, "seed": 11}).json()
    request = {
        "id": "abc",
        "inputs": [scalar("N", "INT32", 3), scalar("LABEL", "INT32", 4), scalar("SEED", "INT64", 11)],
    }
    response = client.post(GENERATE, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "mnist-final-cond.generate" and body["id"] == "abc"
    out = outputs(body)
    assert out["IMAGES"].shape == (3, 1, 28, 28) and out["IMAGES"].dtype == np.float32
    pixels = np.stack([np.asarray(decode_png(image)) for image in native["images"]])
    assert np.array_equal(to_uint8(torch.from_numpy(out["IMAGES"])), pixels)
    assert np.array_equal(out["LATENTS"], np.asarray(native["latents"], np.float32))
    assert out["LABELS"].tolist() == native["labels"] == [4, 4, 4]
    assert out["SEED"].tolist() == [11] and out["NFE"].tolist() == [native["nfe"]]


def test_v2_sample_i_does_not_depend_on_n(client):
    first = outputs(
        client.post(GENERATE, json={"inputs": [scalar("N", "INT32", 1), scalar("SEED", "INT64", 8)]}).json()
    )
    more = outputs(
        client.post(GENERATE, json={"inputs": [scalar("N", "INT32", 16), scalar("SEED", "INT64", 8)]}).json()
    )
    np.testing.assert_allclose(more["LATENTS"][:1], first["LATENTS"], atol=1e-5)
    assert more["LABELS"][0] == first["LABELS"][0]


def test_binary_tensors_carry_the_same_values_as_json(client):
    inputs = [
        {"name": "N", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}},
        {"name": "SEED", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ]
    header = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    content, headers = binary_request(header, np.array([2], "<i4"), np.array([5], "<i8"))
    response = client.post(GENERATE, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    binary = split_binary(response)
    as_json = outputs(
        client.post(GENERATE, json={"inputs": [scalar("N", "INT32", 2), scalar("SEED", "INT64", 5)]}).json()
    )
    assert binary.keys() == as_json.keys()
    for name, array in as_json.items():
        assert np.array_equal(binary[name], array), name


def test_requested_outputs_only_and_in_their_own_encoding(client):
    request = {
        "inputs": [scalar("N", "INT32", 1), scalar("SEED", "INT64", 0)],
        "outputs": [{"name": "SEED"}, {"name": "LATENTS", "parameters": {"binary_data": True}}],
    }
    response = client.post(GENERATE, json=request)
    length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["SEED", "LATENTS"]
    size = 4 * client.get("/v1/models/mnist-final-cond").json()["latent_dim"]  # one FP32 latent
    assert header["outputs"][0]["data"] == [0] and header["outputs"][1]["parameters"] == {"binary_data_size": size}
    assert len(response.content) == length + size


def test_v2_scores_equal_native_scores_for_the_same_image(client):
    native = client.post("/score", files={"file": (DIGIT.name, DIGIT.read_bytes())}, data={"importance_samples": "8"})
    row = native.json()["results"][0]
    pixels = digit_pixels()
    request = {
        "inputs": [
            {"name": "IMAGES", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.reshape(-1).tolist()},
            scalar("IMPORTANCE_SAMPLES", "INT32", 8),
        ]
    }
    response = client.post(SCORE, json=request)
    assert response.status_code == 200, response.text
    out = outputs(response.json())
    assert out["LOG_LIKELIHOOD"].tolist() == [row["log_likelihood_nats"]]
    assert out["ELBO"].tolist() == [row["elbo_nats"]] and out["KL"].tolist() == [row["kl_nats"]]
    assert out["BITS_PER_DIM"].tolist() == [row["bits_per_dim"]]
    assert out["PREDICTED_LABEL"].tolist() == [row["predicted_label"]] == [7]
    assert out["PERCENTILE"].tolist() == [row["percentile"]]


def test_score_takes_images_without_a_channel_and_binarizes_at_one_half(client):
    pixels = digit_pixels().reshape(1, 28, 28)
    dimmed = np.where(pixels > 0, 0.51, 0.49).astype(np.float32)  # the same image after binarizing at 0.5

    def log_likelihood(images: np.ndarray) -> list[float]:
        tensor = {"name": "IMAGES", "datatype": "FP32", "shape": list(images.shape)}
        body = {"inputs": [{**tensor, "data": images.reshape(-1).tolist()}, scalar("IMPORTANCE_SAMPLES", "INT32", 4)]}
        return outputs(client.post(SCORE, json=body).json())["LOG_LIKELIHOOD"].tolist()

    assert log_likelihood(dimmed) == log_likelihood(pixels)


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v2/models/nope.generate/infer", {"inputs": []}, 404, "no model 'nope'"),
        ("/v2/models/mnist-final-cond.train/infer", {"inputs": []}, 404, "<model>.generate, .score or .complete"),
        (GENERATE, {"inputs": []}, 400, "input 'N' is required"),
        (GENERATE, {"inputs": [scalar("N", "INT32", 0)]}, 422, "input N: Input should be greater than or equal to 1"),
        (GENERATE, {"inputs": [scalar("N", "FP32", 1)]}, 400, "input 'N' must be INT32"),
        (GENERATE, {"inputs": [scalar("N", "INT32", 1), scalar("X", "INT32", 1)]}, 400, "unknown inputs ['X']"),
        (GENERATE, {"inputs": [{"name": "N", "datatype": "INT32", "shape": [2], "data": [1]}]}, 400, "1 elements"),
        (GENERATE, {"inputs": [{"name": "N", "datatype": "STRING", "shape": [1], "data": [1]}]}, 400, "datatype"),
        (GENERATE, {"inputs": [scalar("N", "INT32", 1)], "outputs": [{"name": "Y"}]}, 400, "no outputs named ['Y']"),
        (
            "/v2/models/uncond.generate/infer",
            {"inputs": [scalar("N", "INT32", 1), scalar("LABEL", "INT32", 1)]},
            400,
            "unknown inputs ['LABEL']",
        ),
        (
            SCORE,
            {"inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [1, 27, 28], "data": [0] * 756}]},
            400,
            "IMAGES must be",
        ),
        (
            SCORE,
            {"inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [1, 28, 28], "data": [2] * 784}]},
            400,
            "[0, 1]",
        ),
        (
            SCORE,
            {"inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [5, 28, 28], "data": [0] * 3920}]},
            422,
            "1 to 4 images",
        ),
    ],
)
def test_errors_in_the_protocols_shape(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"], response.json()


def test_malformed_bodies_and_unknown_routes_answer_in_the_protocols_shape(client):
    bad_json = client.post(GENERATE, content=b"{", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and isinstance(bad_json.json()["error"], str)
    short = client.post(GENERATE, content=b"{}", headers={"Inference-Header-Content-Length": "9"})
    assert short.status_code == 400 and "Inference-Header-Content-Length" in short.json()["error"]
    header = {"inputs": [{"name": "N", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 4}}]}
    extra, headers = binary_request(header, np.array([1, 2], "<i4"))
    assert client.post(GENERATE, content=extra, headers=headers).json() == {
        "error": "4 bytes of binary data belong to no input"
    }
    missing = client.get("/v2/models/mnist-final-cond.generate/versions")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
    too_big = client.post(GENERATE, content=b"x" * 300_000)
    assert too_big.status_code == 413 and too_big.json() == {"error": "request body exceeds the limit of 200000 bytes"}
    native = client.get("/v1/models/nope")
    assert native.json()["error"]["code"] == "unknown_model"  # the native API keeps its own shape


def test_v2_requests_are_counted_under_their_route_template(client):
    client.get("/v2/models/mnist-final-cond.score")
    client.get("/v2/models/whatever-name.score")
    text = client.get("/metrics").text
    for status in ("200", "404"):
        labels = {"endpoint": "/v2/models/{name}", "method": "GET", "status": status}
        assert metric(text, "latent_cnf_requests_total", **labels) >= 1, status
    assert "whatever-name" not in text


def test_response_id_defaults_to_the_request_id(client):
    response = client.post(GENERATE, json={"inputs": [scalar("N", "INT32", 1)]}, headers={"X-Request-ID": "req-42"})
    assert response.headers["X-Request-ID"] == "req-42" and response.json()["id"] == "req-42"


def test_impossible_shapes_and_unknown_outputs_are_400_not_500(client) -> None:
    empty = {"inputs": [{"name": "IMAGES", "shape": [0, 10**30], "datatype": "FP32", "data": []}]}
    response = client.post("/v2/models/mnist-final-cond.score/infer", json=empty)
    assert response.status_code == 400 and "shape" in response.json()["error"]
    bogus = {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [1]}], "outputs": [{"name": "BOGUS"}]}
    response = client.post("/v2/models/mnist-final-cond.generate/infer", json=bogus)
    assert response.status_code == 400 and "BOGUS" in response.json()["error"]
