"""Dynamic batching with cost-aware scheduling: a bounded queue in front of one worker task per device.

A request arrives as a job of one or more parts, each a piece of work whose cost (in the units of
service/cost.py) fits one model call. The worker takes a head part, merges the next parts of other jobs with
the same key (model, kind, solver settings) that arrive within `max_wait_s`, or are already waiting, while the
call's total cost stays within `capacity(key)`, runs them, and puts jobs with parts left at the back of the
queue. So a heavy request runs a part at a time between others' work: no call holds the thread longer than
one capacity's worth, and a cheap request waits for at most the call in progress and one heavy part, because
cheap and heavy heads take turns whenever both wait.

The worker is a task on the event loop, not a thread: it awaits each merged call (in the model process, or in
a thread of its own, service/model_process.py), so nothing else in this process competes for the GIL with the
loop that answers the requests (a thread here had every torch op on the loop wait for the GIL to come back).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import metrics
from .failures import QueueFull, QueueTimeout, ShuttingDown

Key = TypeVar("Key", bound=Hashable)  # what parts merge by (the service's: model, kind, solver settings)


@dataclass(frozen=True)
class Part:
    """One model call's worth of a request, or less: merged with other requests' parts of the same key."""

    cost: int
    payload: Any


@dataclass(eq=False)
class Job(Generic[Key]):
    key: Key
    parts: Sequence[Part]
    future: asyncio.Future[list[Any]]  # the results, one per part
    heavy: bool  # costs more than one call's budget: takes turns with cheap jobs rather than queueing with them
    results: list[Any] = field(default_factory=list)
    enqueued: float = field(default_factory=time.monotonic)  # when its next part joined the queue

    @property
    def next(self) -> Part:
        return self.parts[len(self.results)]

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.parts)


RunBatch = Callable[[Key, Sequence[Any]], Awaitable[list[Any]]]  # (key, payloads) -> one result per payload
Capacity = Callable[[Key], int]


def _resolve(future: asyncio.Future[list[Any]], outcome: list[Any] | BaseException) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Batcher(Generic[Key]):
    """Merges queued parts by key and runs them one merged call at a time, from a task on the event loop."""

    def __init__(
        self, run_batch: RunBatch[Key], device: str, capacity: Capacity[Key], max_wait_s: float, max_queue: int
    ):
        self.run_batch, self.device = run_batch, device
        self.capacity, self.max_wait_s, self.max_queue = capacity, max_wait_s, max_queue
        self._jobs: deque[Job[Key]] = deque()
        self._arrived = asyncio.Event()  # set when a job is queued (or the batcher stops)
        self._stopping = False
        self._last_head_heavy = False
        self._worker: asyncio.Task[None] | None = None  # started by the first job, on the loop that serves

    def _set_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(device=self.device).set(len(self._jobs))

    async def submit(self, key: Key, parts: Sequence[Part], timeout_s: float, heavy: bool = False) -> list[Any]:
        """Run every part (in order, possibly merged with other requests' parts); one result per part. A
        heavy job (more than a call's worth of work, in one part or many) takes turns with cheap ones."""
        if not parts:
            raise ValueError("a job needs at least one part")
        if self._stopping:
            raise ShuttingDown("the service is shutting down")
        if len(self._jobs) >= self.max_queue:
            raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"inference-{self.device}")
        job = Job(key, parts, asyncio.get_running_loop().create_future(), heavy or len(parts) > 1)
        self._jobs.append(job)
        self._set_depth()
        self._arrived.set()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except asyncio.TimeoutError:
            self._withdraw(job)
            raise QueueTimeout(f"the request waited more than {timeout_s:g} s") from None
        except asyncio.CancelledError:  # the caller gave up (its client went away): the job must not run on
            self._withdraw(job)
            raise

    def _withdraw(self, job: Job[Key]) -> None:
        """Take a job that nobody waits for out of the queue. One the worker holds is dropped by the worker
        before its next part (its future is done), so it is counted there."""
        if job not in self._jobs:
            return
        self._jobs.remove(job)
        self._set_depth()
        metrics.ABANDONED.inc()

    def _pick_head(self) -> Job[Key]:
        """The oldest cheap job or the oldest heavy one: they take turns while both kinds wait."""
        cheap = next((job for job in self._jobs if not job.heavy), None)
        heavy = next((job for job in self._jobs if job.heavy), None)
        if heavy is not None and (cheap is None or not self._last_head_heavy):
            head = heavy
        else:
            assert cheap is not None  # called with jobs queued: when none is heavy, one is cheap
            head = cheap
        self._last_head_heavy = head.heavy
        return head

    async def _take_batch(self) -> list[Job[Key]] | None:
        """Wait for a head job, then gather the next parts of same-key jobs until full or the wait runs out."""
        while not self._jobs:
            if self._stopping:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        head = self._pick_head()
        self._jobs.remove(head)
        batch, total, capacity = [head], head.next.cost, self.capacity(head.key)
        deadline = time.monotonic() + self.max_wait_s
        while total < capacity:
            for job in list(self._jobs):
                if job.key == head.key and total + job.next.cost <= capacity:
                    self._jobs.remove(job)
                    batch.append(job)
                    total += job.next.cost
            remaining = deadline - time.monotonic()
            if total >= capacity or remaining <= 0 or self._stopping:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        self._set_depth()
        return batch

    async def _work(self) -> None:
        wait = metrics.QUEUE_WAIT_SECONDS.labels(device=self.device)
        while (batch := await self._take_batch()) is not None:
            live = [job for job in batch if not job.future.done()]
            metrics.ABANDONED.inc(len(batch) - len(live))
            if not live:
                continue
            now = time.monotonic()
            for job in live:
                wait.observe(now - job.enqueued)
            unfinished = []
            for job, result, error in await self._run(live):
                if error is not None:
                    _resolve(job.future, error)
                    continue
                job.results.append(result)
                if job.finished:
                    _resolve(job.future, job.results)
                elif job.future.done():  # its caller gave up during this call: the rest never runs
                    metrics.ABANDONED.inc()
                else:
                    unfinished.append(job)
            for job in unfinished:  # parts left: to the back of the queue, behind what arrived meanwhile
                job.enqueued = time.monotonic()
                self._jobs.append(job)
            self._set_depth()

    async def _run(self, batch: list[Job[Key]]) -> list[tuple[Job[Key], Any, BaseException | None]]:
        """(job, result of its next part, error) for every job. If a merged call fails (say one request's solve
        is too stiff), each part runs again alone, so a request never fails for what its batch-mates asked."""
        try:
            results = await self.run_batch(batch[0].key, [job.next.payload for job in batch])
            return [(job, result, None) for job, result in zip(batch, results, strict=True)]
        except Exception as error:  # handed to the waiter; the hub tells what it means
            if len(batch) == 1:
                return [(batch[0], None, error)]
        return [outcome for job in batch for outcome in await self._run([job])]

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs, then end the worker."""
        self._stopping = True
        self._arrived.set()
        if self._worker is not None:
            await asyncio.wait({self._worker}, timeout=timeout_s)
