"""Cost-aware scheduling: what a request costs, that a request cut into parts gets what it gets whole, that a
request over the budget is refused by name, and that cheap requests pass a heavy one on a real server."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import latent_cnf
from bench.harness import metric, running_service
from latent_cnf.config import SolverConfig
from latent_cnf.data import load_split
from service.app import create_app
from service.cost import (
    DECODER_EVALUATIONS,
    EVALUATION_OVERHEAD_ROWS,
    WorkShape,
    measured_dopri5_nfe,
    row_evaluation_units,
    solve_evaluations,
)
from service.settings import Settings

from .service_helpers import ONE_THREAD, png, wait_ready
from .test_service_concurrency import pixels


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize(("steps", "frames"), [(4, 2), (7, 2), (7, 4), (32, 11)])
def test_the_fixed_step_cost_counts_the_evaluations_the_solve_makes(method: str, steps: int, frames: int) -> None:
    model = latent_cnf.load("mnist-final-cond", "cpu")
    solver = SolverConfig(method, steps=steps)
    path = model.trajectory(2, steps=frames, seed=0, solver=solver)
    assert solve_evaluations(solver, frames, dopri5_nfe=0) == path.nfe


def test_the_dopri5_estimate_starts_from_the_cards_measurement_and_grows_with_tighter_tolerances() -> None:
    serving = latent_cnf.model_folder.read_serving("mnist-final-cond")
    measured = measured_dopri5_nfe(serving, "sampling")
    assert measured == next(
        e["nfe"] for e in serving["solvers"]["calibration"]["sampling"] if e["solver"] == "dopri5 1e-05"
    )
    assert measured_dopri5_nfe({}, "scoring") > measured_dopri5_nfe({}, "sampling")  # a card without calibration
    nfe = [solve_evaluations(SolverConfig("dopri5", rtol=tol, atol=tol), 2, measured) for tol in (1e-3, 1e-5, 1e-8)]
    assert nfe[0] < nfe[1] == measured < nfe[2]


def test_parts_cover_every_unit_once_in_order_within_the_budget() -> None:
    shape = WorkShape(rows=10, nfe=4, decoded=10)  # marginal: 40 + 640 = 680 per unit; overhead 4 x 1024
    assert shape.marginal == 10 * 4 + 10 * DECODER_EVALUATIONS
    budget = 4 * EVALUATION_OVERHEAD_ROWS + 2 * shape.marginal  # room for two units next to the overhead
    slices = shape.parts(units=23, call_budget=budget, most_units=16)
    assert [(s.start, s.stop) for s in slices] == [(i, min(i + 2, 23)) for i in range(0, 23, 2)]
    assert all(shape.cost(s.stop - s.start) <= budget for s in slices)
    assert shape.parts(units=5, call_budget=budget - 1, most_units=16) == [slice(i, i + 1) for i in range(5)]
    assert shape.parts(units=40, call_budget=10**9, most_units=16)[0] == slice(0, 16)  # the memory cap
    # the overhead alone passes the budget: cutting rows would repeat it, so the request stays whole
    assert shape.parts(units=12, call_budget=1_000, most_units=16) == [slice(0, 12)]


@pytest.fixture(scope="module")
def split_client():
    """A service whose every sample and every scored image is a part of its own (the memory caps)."""
    app = create_app(Settings(models=["mnist-final-cond"], max_batch=1, max_score_rows=1, warmup=False))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_a_request_cut_into_parts_gets_what_it_gets_whole(client, split_client, data_dir) -> None:
    body = {"n": 6, "seed": 11, "label": 4}
    whole, split = client.post("/generate", json=body).json(), split_client.post("/generate", json=body).json()
    np.testing.assert_allclose(split["latents"], whole["latents"], atol=1e-5)
    assert split["labels"] == whole["labels"] and np.abs(pixels(split) - pixels(whole)).max() <= 1

    query = "/trajectory?format=json&n=3&steps=5&seed=2"
    whole, split = client.get(query).json(), split_client.get(query).json()
    for a, b in zip(whole["trajectory"], split["trajectory"], strict=True):
        np.testing.assert_allclose(b["latents"], a["latents"], atol=1e-5)

    digits = load_split("mnist", "test", data_dir, download=False).images[:3]
    files = [("file", (f"{i}.png", png(d.numpy()))) for i, d in enumerate(digits)]
    form = {"importance_samples": "8"}
    before = split_client.get("/metrics").text
    whole = client.post("/score", files=files, data=form).json()["results"]
    split = split_client.post("/score", files=files, data=form).json()["results"]
    after = split_client.get("/metrics").text
    calls = metric(after, "latent_cnf_batch_requests_count", kind="score") - metric(
        before, "latent_cnf_batch_requests_count", kind="score"
    )
    assert calls >= 3  # one call per image (the shared registry may count the other app's call too)
    for a, b in zip(whole, split, strict=True):
        assert b["log_likelihood_nats"] == pytest.approx(a["log_likelihood_nats"], abs=1e-4)
        assert b["predicted_label"] == a["predicted_label"]


def test_a_request_over_the_budget_is_refused_naming_the_limit() -> None:
    app = create_app(Settings(models=["mnist-final-cond"], max_request_cost=1_000_000, warmup=False))
    with TestClient(app) as client:
        wait_ready(client)
        refused = client.post("/generate", json={"n": 256, "solver": {"method": "rk4", "steps": 1000}})
        image = png(np.zeros((28, 28), dtype=np.uint8))
        heavy_score = client.post("/score", files={"file": ("x.png", image)}, data={"importance_samples": "1024"})
        served = client.post("/generate", json={"n": 4})
    for response in (refused, heavy_score):
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "request_too_costly"
        assert "1,000,000" in error["message"] and "LATENT_CNF_MAX_REQUEST_COST" in error["message"]
    assert served.status_code == 200


def test_cheap_requests_are_served_while_a_heavy_one_runs_in_parts(data_dir) -> None:
    """The heaviest /score (16 images, K = 1024) takes seconds here; /generate n = 1 requests sent while it
    runs come back before it does, each waiting for about one of its parts, not for all of it."""
    digits = load_split("mnist", "test", data_dir, download=False).images[:16]
    files = [("file", (f"{i}.png", png(d.numpy()))) for i, d in enumerate(digits)]
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_MAX_FILES": "16"}

    async def scenario(url: str) -> list[str]:
        events: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:

            async def heavy() -> None:
                response = await client.post("/score", files=files, data={"importance_samples": "1024"})
                assert response.status_code == 200
                events.append("heavy")

            task = asyncio.create_task(heavy())
            await asyncio.sleep(0.3)  # the heavy request is running its parts
            for _ in range(3):
                response = await client.post("/generate", json={"n": 1})
                assert response.status_code == 200
                events.append("cheap")
            await task
        return events

    with running_service(ONE_THREAD | env, timeout_s=120) as server:
        url = server.url
        assert asyncio.run(scenario(url)) == ["cheap", "cheap", "cheap", "heavy"]


def test_scoring_seeds_follow_the_image_index_in_the_request() -> None:
    """Parts carry each image's own seed (its index), so cutting cannot change an image's proposals."""
    model = latent_cnf.load("mnist-final-cond", "cpu")
    x = (torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    whole = model.score(x, k=4, seed=torch.arange(4))
    tail = model.score(x[2:], k=4, seed=torch.arange(2, 4))
    torch.testing.assert_close(tail.log_likelihood, whole.log_likelihood[2:], atol=1e-4, rtol=0)


def test_an_adaptive_solve_pays_for_its_per_row_hypernetwork(client) -> None:
    """dopri5 computes every row's parameters itself: the big hypernetwork of mnist-large makes a request that
    a fixed-step solve would pass cost tens of times more, so it is refused before it runs."""
    assert row_evaluation_units(SolverConfig("rk4"), 811_328) == 1
    assert row_evaluation_units(SolverConfig("dopri5"), 27_856) < row_evaluation_units(SolverConfig("dopri5"), 811_328)
    body = {"model": "mnist-large", "n": 256, "solver": {"method": "dopri5", "rtol": 1e-8, "atol": 1e-8}}
    refused = client.post("/generate", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "request_too_costly"
    assert client.post("/generate", json=body | {"solver": {"method": "rk4", "steps": 64}}).status_code == 200
