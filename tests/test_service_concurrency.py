"""A real uvicorn on loopback: dynamic batching keeps per-request seeds, overload gets 503/504, not 500."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from .service_helpers import decode_png
from .uvicorn_server import running_service


def pixels(body: dict) -> np.ndarray:
    return np.stack([np.asarray(decode_png(image), dtype=int) for image in body["images"]])


def metric(text: str, prefix: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


async def post_many(url: str, bodies: list[dict], timeout: float = 120) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        return await asyncio.gather(*(client.post("/generate", json=body) for body in bodies))


@pytest.mark.parametrize(
    "solver, tolerance, grey_levels",
    # dopri5 shares adaptive step sizes across a merged batch; rk4 (the default) does not adapt
    [({"method": "dopri5"}, 1e-2, 4), (None, 1e-5, 1)],
)
def test_batched_requests_get_the_images_they_get_alone(solver, tolerance, grey_levels):
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_MAX_WAIT_MS": "200", "LATENT_CNF_MAX_BATCH": "64"}
    with running_service(env) as url:
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
        assert np.abs(pixels(body) - pixels(solo)).max() <= grey_levels
        np.testing.assert_allclose(body["latents"], solo["latents"], atol=tolerance, rtol=tolerance)


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
        "LATENT_CNF_TIMEOUT_S": "1",
    }
    heavy = {"n": 256, "solver": {"method": "rk4", "steps": 400}}
    with running_service(env) as url:
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
        assert metric(text, 'latent_cnf_rejected_total{reason="queue_full"}') >= 1
        assert metric(text, 'latent_cnf_rejected_total{reason="timeout"}') >= 1
