"""The batcher on its own: merging by key within a capacity counted in each part's cost, heavy jobs run a
part at a time with cheap ones in between, and a job nobody waits for is dropped between its parts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from service.batching import Batcher, Part

T = TypeVar("T")


def parts(*costs: int, tag: object = None) -> list[Part]:
    return [Part(cost, (tag, i)) for i, cost in enumerate(costs)]


async def then_stop(batcher: Batcher, work: Awaitable[T]) -> T:
    """`work`, then the batcher stopped, on the loop its worker runs on, whatever happened."""
    try:
        return await work
    finally:
        await batcher.stop(5)


def abandoned() -> float:
    return REGISTRY.get_sample_value("latent_cnf_abandoned_total") or 0.0


def test_merged_calls_stay_within_the_capacity_of_their_kind() -> None:
    calls: list[tuple[str, list[int]]] = []
    gate = asyncio.Event()

    async def run_batch(key, payloads):
        await gate.wait()  # hold the worker so the whole queue is waiting when it looks for company
        calls.append((key, [cost for _, cost in payloads]))
        return [tag for tag, _ in payloads]

    capacity = {"sample": 4, "score": 100}.__getitem__
    batcher = Batcher(run_batch, "cpu", capacity, max_wait_s=0.05, max_queue=64)

    async def main() -> list:
        jobs = [("sample", 1)] * 6 + [("score", 40)] * 5 + [("score", 250)]
        tasks = [
            asyncio.create_task(batcher.submit(key, [Part(cost, (i, cost))], timeout_s=10))
            for i, (key, cost) in enumerate(jobs)
        ]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(then_stop(batcher, main())) == [[i] for i in range(12)]  # every waiter gets its own result back
    sizes = {key: [sum(costs) for k, costs in calls if k == key] for key in ("sample", "score")}
    assert sum(sizes["sample"]) == 6 and max(sizes["sample"]) <= 4
    assert sum(sizes["score"]) == 450 and [s for s in sizes["score"] if s > 100] == [250]  # oversize runs alone
    assert any(len(costs) > 1 for _, costs in calls)  # and merging did happen


def test_a_failing_merged_call_runs_each_job_alone_so_only_the_bad_one_fails() -> None:
    gate = asyncio.Event()
    calls: list[list[str]] = []

    async def run_batch(key, payloads):
        await gate.wait()
        calls.append(list(payloads))
        if "stiff" in calls[-1]:
            raise ValueError("too stiff")
        return [payload.upper() for payload in calls[-1]]

    batcher = Batcher(run_batch, "cpu", lambda key: 10, max_wait_s=0.05, max_queue=64)

    async def main() -> list:
        tasks = [asyncio.create_task(batcher.submit("k", [Part(1, p)], timeout_s=10)) for p in ["a", "stiff", "b"]]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    first, bad, last = asyncio.run(then_stop(batcher, main()))
    assert (first, last) == (["A"], ["B"]) and isinstance(bad, ValueError)
    assert calls[0] == ["a", "stiff", "b"] and sorted(map(tuple, calls[1:])) == [("a",), ("b",), ("stiff",)]


def test_a_heavy_job_runs_a_part_at_a_time_and_cheap_jobs_take_turns_with_it() -> None:
    """Two heavy jobs of four parts and three cheap jobs, all queued while the worker is held: every call
    holds one capacity's worth at most, a cheap job never waits behind more than one heavy part, and each
    heavy job gets its results in part order."""
    gate = asyncio.Event()
    calls: list[list[tuple[str, int]]] = []

    async def run_batch(key, payloads):
        await gate.wait()
        calls.append(list(payloads))
        return [f"{tag}{i}" for tag, i in payloads]

    batcher = Batcher(run_batch, "cpu", lambda key: 10, max_wait_s=0, max_queue=64)

    async def main() -> list:
        heavy = [asyncio.create_task(batcher.submit(k, parts(10, 10, 10, 10, tag=k), 10)) for k in ("H", "G")]
        await asyncio.sleep(0.05)
        cheap = [asyncio.create_task(batcher.submit(k, parts(10, tag=k), 10)) for k in ("a", "b", "c")]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*heavy, *cheap)

    results = asyncio.run(then_stop(batcher, main()))
    assert results == [["H0", "H1", "H2", "H3"], ["G0", "G1", "G2", "G3"], ["a0"], ["b0"], ["c0"]]
    assert all(len(call) == 1 for call in calls)  # capacity 10: nothing merges with a full part
    order = [tag for ((tag, _),) in calls]
    assert order[:7] == ["H", "a", "G", "b", "H", "c", "G"]  # taking turns; the worker was held on H's first
    assert order.count("H") == order.count("G") == 4


@pytest.mark.parametrize("cancel", ["between parts", "while queued"])
def test_a_job_whose_caller_gave_up_is_dropped_before_its_next_part(cancel: str) -> None:
    tokens = asyncio.Semaphore(0)  # each call waits for one: the test decides when the worker moves on
    calls: list[list[tuple[str, int]]] = []

    async def run_batch(key, payloads):
        await tokens.acquire()
        calls.append(list(payloads))
        return [None for _ in payloads]

    batcher = Batcher(run_batch, "cpu", lambda key: 10, max_wait_s=0, max_queue=64)
    before = abandoned()

    async def main() -> None:
        first = asyncio.create_task(batcher.submit("k", parts(10, tag="first"), 10))
        await asyncio.sleep(0.05)  # the worker holds the first job
        heavy = asyncio.create_task(batcher.submit("k", parts(10, 10, 10, tag="heavy"), 10))
        await asyncio.sleep(0.05)
        if cancel == "between parts":
            tokens.release()  # the first job's call
            tokens.release()  # and the heavy job's first part; its second is taken and waits for a token
            while len(calls) < 2:
                await asyncio.sleep(0.01)
        heavy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await heavy
        for _ in range(4):
            tokens.release()  # whatever was taken or is still queued may run now
        await first
        await asyncio.sleep(0.1)

    asyncio.run(then_stop(batcher, main()))
    ran = [tag for call in calls for tag, _ in call]
    # the part in progress when the caller gave up finishes; nothing after it starts
    assert ran.count("heavy") == (2 if cancel == "between parts" else 0), ran
    assert abandoned() - before == 1
