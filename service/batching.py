"""Dynamic batching: a bounded queue in front of one inference thread per device.

Requests with the same key (model, kind, solver settings) that arrive within `max_wait_s` of each other,
or while the worker is busy, are merged into one model call whose total `size` stays within
`capacity(key)`. A job's size is its cost in the unit the capacity counts (samples for sampling, latent
rows through the flow for scoring), so one merged call never holds the inference thread for long.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import metrics


class QueueFull(Exception):
    """The bounded queue is full: the caller should retry later (503)."""


class QueueTimeout(Exception):
    """The request waited longer than its timeout (504)."""


class BatcherStopped(Exception):
    """The service is shutting down."""


@dataclass(eq=False)
class Job:
    key: Hashable
    size: int
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)


RunBatch = Callable[[Hashable, Sequence[Job]], list[Any]]
Capacity = Callable[[Hashable], int]


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Merges queued jobs by key and runs them on a dedicated thread under torch.inference_mode()."""

    def __init__(self, run_batch: RunBatch, device: str, capacity: Capacity, max_wait_s: float, max_queue: int):
        self.run_batch, self.device = run_batch, device
        self.capacity, self.max_wait_s, self.max_queue = capacity, max_wait_s, max_queue
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"inference-{device}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def _set_depth(self) -> None:
        metrics.QUEUE_DEPTH.labels(device=self.device).set(len(self._jobs))

    async def submit(self, key: Hashable, size: int, payload: Any, timeout_s: float) -> Any:
        loop = asyncio.get_running_loop()
        job = Job(key, size, payload, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the service is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._jobs.append(job)
            self._set_depth()
            self._cond.notify()
        try:
            return await asyncio.wait_for(job.future, timeout_s)
        except asyncio.TimeoutError:
            self._withdraw(job)
            raise QueueTimeout(f"the request waited more than {timeout_s:g} s") from None
        except asyncio.CancelledError:  # the caller gave up (its client went away): the job must not run
            if self._withdraw(job):
                metrics.ABANDONED.inc()
            raise

    def _withdraw(self, job: Job) -> bool:
        """Take a job that nobody waits for out of the queue; False if the worker had taken it already (a job
        taken but not yet run is still skipped, since its future is done)."""
        with self._cond:
            if job not in self._jobs:
                return False
            self._jobs.remove(job)
            self._set_depth()
            return True

    def _take_batch(self) -> list[Job] | None:
        """Block for a head job, then gather same-key jobs until full or the wait runs out."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if not self._jobs:
                return None
            head = self._jobs.popleft()
            batch, total, capacity = [head], head.size, self.capacity(head.key)
            deadline = time.monotonic() + self.max_wait_s
            while total < capacity:
                for job in list(self._jobs):
                    if job.key == head.key and total + job.size <= capacity:
                        self._jobs.remove(job)
                        batch.append(job)
                        total += job.size
                remaining = deadline - time.monotonic()
                if total >= capacity or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._set_depth()
            return batch

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            batch = [job for job in batch if not job.future.done()]
            if not batch:
                continue
            for job, result, error in self._run(batch):
                job.loop.call_soon_threadsafe(_resolve, job.future, result, error)

    def _run(self, batch: list[Job]) -> list[tuple[Job, Any, BaseException | None]]:
        """(job, result, error) for every job. If a merged call fails (say one request's solve is too stiff),
        each job runs again alone, so a request never fails for what its batch-mates asked."""
        try:
            with torch.inference_mode():
                results = self.run_batch(batch[0].key, batch)
            return [(job, result, None) for job, result in zip(batch, results, strict=True)]
        except Exception as error:  # handed to the waiter; the route turns it into an HTTP error
            if len(batch) == 1:
                return [(batch[0], None, error)]
        return [outcome for job in batch for outcome in self._run([job])]

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the queued jobs, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
