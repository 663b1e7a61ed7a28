"""A real uvicorn on loopback: dynamic batching keeps per-request seeds, overload gets 503/504, not 500."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from bench.harness import metric, running_service
from latent_cnf.data import load_split

from .service_helpers import ONE_THREAD, decode_png, png


def pixels(body: dict) -> np.ndarray:
    return np.stack([np.asarray(decode_png(image), dtype=int) for image in body["images"]])


async def post_many(url: str, bodies: list[dict], timeout: float = 120) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        return await asyncio.gather(*(client.post("/generate", json=body) for body in bodies))


@pytest.mark.parametrize("solver", [{"method": "dopri5"}, None])  # dopri5 controls each sample's steps; rk4 is fixed
def test_batched_requests_get_the_images_they_get_alone(solver):
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_MAX_WAIT_MS": "200", "LATENT_CNF_MAX_BATCH": "64"}
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        bodies = [{"n": 2, "seed": seed, "label": seed % 10, "solver": solver} for seed in range(12)]
        alone = [httpx.post(f"{url}/generate", json=body, timeout=60).json() for body in bodies]
        before = httpx.get(f"{url}/metrics").text
        together = asyncio.run(post_many(url, bodies))
        after = httpx.get(f"{url}/metrics").text
    merged_calls = metric(after, "latent_cnf_batch_requests_count") - metric(before, "latent_cnf_batch_requests_count")
    assert all(r.status_code == 200 for r in together)
    assert merged_calls < len(bodies), "concurrent requests were not merged into fewer model calls"
    for solo, batched in zip(alone, together, strict=True):
        body = batched.json()
        assert body["labels"] == solo["labels"]
        assert np.abs(pixels(body) - pixels(solo)).max() <= 1  # the decoder's float32 rounding, nothing more
        np.testing.assert_allclose(body["latents"], solo["latents"], atol=1e-5, rtol=1e-5)


async def score_many(url: str, uploads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/score", files={"file": ("x.png", data)}) for data in uploads))


@pytest.mark.parametrize("exact", ["true", "false"])
def test_a_score_is_the_same_alone_and_merged_with_15_others(data_dir, exact):
    """With dopri5 (exact scores) per-sample step control, with the calibrated rk4 its fixed steps, keep one
    upload's score free of its batch-mates'."""
    digits = load_split("mnist", "test", data_dir, download=False).images[:16]
    uploads = [png(digit.numpy()) for digit in digits]
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_MAX_WAIT_MS": "500", "LATENT_CNF_EXACT_SCORES": exact}
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        alone = httpx.post(f"{url}/score", files={"file": ("x.png", uploads[0])}, timeout=60).json()["results"][0]
        before = httpx.get(f"{url}/metrics").text
        together = asyncio.run(score_many(url, uploads))
        after = httpx.get(f"{url}/metrics").text
    calls = metric(after, "latent_cnf_batch_requests_count", kind="score") - metric(
        before, "latent_cnf_batch_requests_count", kind="score"
    )
    assert all(r.status_code == 200 for r in together)
    assert 0 < calls < len(uploads), "the uploads were not merged"
    merged = together[0].json()["results"][0]
    for field in ("log_likelihood_nats", "elbo_nats", "latent_log_density", "kl_nats", "reconstruction_nats"):
        assert merged[field] == pytest.approx(alone[field], abs=1e-4), field
    assert merged["predicted_label"] == alone["predicted_label"] == 7


def recovers(url: str, within_s: float = 60) -> bool:
    """The in-flight batch may still be running; a normal request must succeed once it is done."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if httpx.post(f"{url}/generate", json={"n": 1}, timeout=60).status_code == 200:
            return True
        time.sleep(0.5)
    return False


def test_overload_gets_503_and_504_then_recovers():
    env = {
        "LATENT_CNF_MODELS": "mnist-final-cond",
        "LATENT_CNF_MAX_QUEUE": "2",
        "LATENT_CNF_MAX_BATCH": "256",
        "LATENT_CNF_TIMEOUT_S": "0.1",
    }
    # 4,000 evaluations over 256 samples: seconds on this CPU, far above the timeout on any machine
    heavy = {"n": 256, "solver": {"method": "rk4", "steps": 1000}}
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        responses = asyncio.run(post_many(url, [dict(heavy, seed=i) for i in range(24)]))
        statuses = [r.status_code for r in responses]
        assert 503 in statuses and 504 in statuses, statuses
        assert set(statuses) <= {200, 503, 504}, statuses
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "queue_full"
            if response.status_code == 504:
                assert response.json()["error"]["code"] == "timeout"
        assert recovers(url), "the service did not serve a normal request after the burst"
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "latent_cnf_rejected_total", reason="queue_full") >= 1
        assert metric(text, "latent_cnf_rejected_total", reason="timeout") >= 1


def test_requests_whose_clients_hang_up_are_withdrawn_and_never_run():
    """Ten heavy requests whose clients give up after 0.5 s: at most the ones already taken run (each takes
    seconds here and over 0.2 s on any CPU), the rest are withdrawn, and a normal request is served next."""
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_TIMEOUT_S": "120"}
    heavy = {"n": 256, "solver": {"method": "rk4", "steps": 1000}}

    async def hang_up() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=0.5) as client:
            calls = (client.post("/generate", json=dict(heavy, seed=i)) for i in range(10))
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, httpx.TimeoutException) for r in results)

    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        before = httpx.get(f"{url}/metrics").text
        asyncio.run(hang_up())
        assert httpx.post(f"{url}/generate", json={"n": 1}, timeout=60).status_code == 200
        after = httpx.get(f"{url}/metrics").text
    samples = metric(after, "latent_cnf_samples_generated_total") - metric(before, "latent_cnf_samples_generated_total")
    abandoned = metric(after, "latent_cnf_abandoned_total") - metric(before, "latent_cnf_abandoned_total")
    assert samples <= 3 * 256 + 1 and abandoned >= 7, (samples, abandoned)


@pytest.mark.parametrize("max_wait_ms", [None, 50])
def test_a_lone_request_is_not_kept_waiting_for_company(max_wait_ms):
    """With nothing else queued a request's model call starts at once: by the server's own histograms, its mean
    queue wait is a small fraction of its model call. Only a wait set in the settings holds it back (the case
    that shows this measure catches one)."""
    env = {"LATENT_CNF_MODELS": "mnist-final-cond"}
    if max_wait_ms is not None:
        env["LATENT_CNF_MAX_WAIT_MS"] = str(max_wait_ms)
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        before = httpx.get(f"{server.url}/metrics").text
        for seed in range(20):
            assert httpx.post(f"{server.url}/generate", json={"n": 1, "seed": seed}, timeout=60).status_code == 200
        after = httpx.get(f"{server.url}/metrics").text

    def mean(name: str, **labels: str) -> float:
        total = metric(after, f"{name}_sum", **labels) - metric(before, f"{name}_sum", **labels)
        return total / (metric(after, f"{name}_count", **labels) - metric(before, f"{name}_count", **labels))

    waited, call = mean("latent_cnf_queue_wait_seconds"), mean("latent_cnf_inference_seconds", kind="generate")
    if max_wait_ms is None:
        assert waited < 0.25 * call, (waited, call)
    else:
        assert waited >= max_wait_ms / 1000, (waited, call)
