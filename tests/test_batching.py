"""The batcher on its own: merging by key within a capacity counted in each job's own cost units."""

from __future__ import annotations

import asyncio
import threading

from service.batching import Batcher


def test_merged_calls_stay_within_the_capacity_of_their_kind() -> None:
    calls: list[tuple[str, list[int]]] = []
    gate = threading.Event()

    def run_batch(key, jobs):
        gate.wait(5)  # hold the worker so the whole queue is waiting when it looks for company
        calls.append((key, [job.size for job in jobs]))
        return [job.payload for job in jobs]

    capacity = {"sample": 4, "score": 100}.__getitem__
    batcher = Batcher(run_batch, "cpu", capacity, max_wait_s=0.05, max_queue=64)

    async def main() -> list:
        jobs = [("sample", 1)] * 6 + [("score", 40)] * 5 + [("score", 250)]
        tasks = [asyncio.create_task(batcher.submit(key, size, i, timeout_s=10)) for i, (key, size) in enumerate(jobs)]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks)

    try:
        assert asyncio.run(main()) == list(range(12))  # every waiter gets its own result back
    finally:
        batcher.stop()
    sizes = {key: [sum(sizes) for k, sizes in calls if k == key] for key in ("sample", "score")}
    assert sum(sizes["sample"]) == 6 and max(sizes["sample"]) <= 4
    assert sum(sizes["score"]) == 450 and [s for s in sizes["score"] if s > 100] == [250]  # oversize runs alone
    assert any(len(job_sizes) > 1 for _, job_sizes in calls)  # and merging did happen


def test_a_failing_merged_call_runs_each_job_alone_so_only_the_bad_one_fails() -> None:
    gate = threading.Event()
    calls: list[list[str]] = []

    def run_batch(key, jobs):
        gate.wait(5)
        calls.append([job.payload for job in jobs])
        if "stiff" in calls[-1]:
            raise ValueError("too stiff")
        return [payload.upper() for payload in calls[-1]]

    batcher = Batcher(run_batch, "cpu", lambda key: 10, max_wait_s=0.05, max_queue=64)

    async def main() -> list:
        payloads = ["a", "stiff", "b"]
        tasks = [asyncio.create_task(batcher.submit("k", 1, p, timeout_s=10)) for p in payloads]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        first, bad, last = asyncio.run(main())
    finally:
        batcher.stop()
    assert (first, last) == ("A", "B") and isinstance(bad, ValueError)
    assert calls[0] == ["a", "stiff", "b"] and sorted(map(tuple, calls[1:])) == [("a",), ("b",), ("stiff",)]
