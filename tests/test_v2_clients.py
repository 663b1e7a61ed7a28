"""Clients we did not write, against the service as it ships (`python -m service` on a loopback port):
NVIDIA's tritonclient[http] (binary tensors by default) and the KServe SDK's v2 REST client (JSON tensors).
Each gets the same answers as the native routes for the same seed or image."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from bench.harness import running_service
from latent_cnf.images import to_uint8

from .service_helpers import ONE_THREAD, decode_png
from .test_v2_protocol import DIGIT, digit_pixels

GENERATE, SCORE = "mnist-final-cond.generate", "mnist-final-cond.score"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", **ONE_THREAD}
    with running_service(env, timeout_s=180) as server:
        yield server.url


def native_samples(url: str, n: int, label: int, seed: int) -> dict:
    body = httpx.post(f"{url}/generate", json={"n": n, "label": label, "seed": seed}, timeout=60).json()
    body["pixels"] = np.stack([np.asarray(decode_png(image)) for image in body["images"]])
    return body


def native_score(url: str, k: int) -> dict:
    files = {"file": (DIGIT.name, DIGIT.read_bytes())}
    return httpx.post(f"{url}/score", files=files, data={"importance_samples": str(k)}, timeout=60).json()["results"][0]


def test_tritonclient_health_and_metadata(url):
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(GENERATE) and client.is_model_ready(SCORE)
    assert not client.is_model_ready("mnist-final-cond.nothing")
    assert client.get_server_metadata()["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
    ]
    metadata = client.get_model_metadata(SCORE)
    assert metadata["inputs"][0] == {"name": "IMAGES", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    assert client.get_model_config(GENERATE)["max_batch_size"] == 0


def test_tritonclient_sampling_equals_native(url):
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    inputs = []
    for name, datatype, value in (("N", "INT32", 3), ("LABEL", "INT32", 2), ("SEED", "INT64", 21)):
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=triton_dtype(datatype)))
        inputs.append(tensor)
    result = client.infer(GENERATE, inputs, request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    images = result.as_numpy("IMAGES")
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.float32
    native = native_samples(url, 3, 2, 21)
    assert np.array_equal(to_uint8(torch.from_numpy(images.copy())), native["pixels"])
    assert np.array_equal(result.as_numpy("LATENTS"), np.asarray(native["latents"], np.float32))
    assert result.as_numpy("LABELS").tolist() == [2, 2, 2] and result.as_numpy("SEED").tolist() == [21]


def test_tritonclient_scoring_equals_native(url):
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    images = triton.InferInput("IMAGES", [1, 1, 28, 28], "FP32")
    images.set_data_from_numpy(digit_pixels())
    k = triton.InferInput("IMPORTANCE_SAMPLES", [1], "INT32")
    k.set_data_from_numpy(np.array([16], np.int32))
    outputs = [triton.InferRequestedOutput(name) for name in ("LOG_LIKELIHOOD", "PREDICTED_LABEL")]
    result = client.infer(SCORE, [images, k], outputs=outputs)
    row = native_score(url, 16)
    assert result.as_numpy("LOG_LIKELIHOOD").dtype == np.float64
    assert result.as_numpy("LOG_LIKELIHOOD").tolist() == [row["log_likelihood_nats"]]
    assert result.as_numpy("PREDICTED_LABEL").tolist() == [row["predicted_label"]] == [7]
    assert result.as_numpy("ELBO") is None  # not asked for


def test_tritonclient_sees_the_protocols_errors(url):
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    n = triton.InferInput("N", [1], "INT32")
    n.set_data_from_numpy(np.array([0], np.int32))
    with pytest.raises(InferenceServerException, match="input N: Input should be greater than or equal to 1"):
        client.infer(GENERATE, [n])
    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        client.get_model_metadata("nope.generate")


def triton_dtype(datatype: str) -> type:
    return {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32}[datatype]


async def kserve_calls(url: str) -> tuple[bool, bool, bool, dict, dict]:
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=60)) as client:
        live, ready = await client.is_server_live(url), await client.is_server_ready(url)
        model_ready = await client.is_model_ready(url, GENERATE)
        sample_inputs = [
            InferInput("N", [1], "INT32", [2]),
            InferInput("LABEL", [1], "INT32", [5]),
            InferInput("SEED", [1], "INT64", [8]),
        ]
        sampled = await client.infer(url, InferRequest(GENERATE, sample_inputs, request_id="kserve-1"), GENERATE)
        pixels = InferInput("IMAGES", [1, 1, 28, 28], "FP32")
        pixels.set_data_from_numpy(digit_pixels(), binary_data=False)
        k = InferInput("IMPORTANCE_SAMPLES", [1], "INT32", [16])
        scored = await client.infer(url, InferRequest(SCORE, [pixels, k]), SCORE)
    samples = {output.name: output.as_numpy() for output in sampled.outputs} | {"id": sampled.id}
    return live, ready, model_ready, samples, {output.name: output.as_numpy() for output in scored.outputs}


def test_kserve_client_health_sampling_and_scoring_equal_native(url):
    live, ready, model_ready, samples, scores = asyncio.run(kserve_calls(url))
    assert live and ready and model_ready
    native = native_samples(url, 2, 5, 8)
    assert samples["id"] == "kserve-1"
    assert np.array_equal(to_uint8(torch.from_numpy(samples["IMAGES"].copy())), native["pixels"])
    assert np.array_equal(samples["LATENTS"], np.asarray(native["latents"], np.float32))
    row = native_score(url, 16)
    assert scores["LOG_LIKELIHOOD"].tolist() == [row["log_likelihood_nats"]]
    assert scores["BITS_PER_DIM"].tolist() == [row["bits_per_dim"]]
