"""A burst at concurrency 512 against a real uvicorn with a small queue: the service sheds load with 503 and
Retry-After instead of queuing without bound or failing, and serves normally once the burst is over."""

from __future__ import annotations

import asyncio
import collections
import time

import httpx

from bench.harness import running_service

from .service_helpers import ONE_THREAD

CONCURRENCY = 512
BURST_S = 3.0
REQUEST = {"n": 8, "solver": {"method": "rk4", "steps": 8}}  # a few ms of model time: cheap, not instant


async def burst(url: str) -> list[httpx.Response]:
    """CONCURRENCY clients send back to back until BURST_S is over; requests in flight then are awaited.

    Each request opens its own connection: a client this overloaded lags by seconds, and reusing a
    keep-alive connection would race uvicorn closing it after its keep-alive timeout (a reset the client causes).
    """
    deadline = time.monotonic() + BURST_S
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    responses: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                responses.append(await client.post("/generate", json=REQUEST))

        await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
    return responses


def test_burst_at_512_gets_only_200_and_503_with_retry_after_then_serves():
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_MAX_QUEUE": "8", "LATENT_CNF_MAX_WAIT_MS": "2"}
    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        responses = asyncio.run(burst(url))
        statuses = collections.Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0 and statuses[200] > 0, statuses  # overloaded, yet still serving
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1"
                assert response.json()["error"]["code"] == "queue_full"
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200
        after = httpx.post(f"{url}/generate", json={"n": 1, "seed": 0}, timeout=60)
        assert after.status_code == 200 and len(after.json()["images"]) == 1
