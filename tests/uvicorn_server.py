"""Run the real service as it ships (`python -m service`) on a free loopback port, for concurrency and load tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from bench.harness import running_service_cli


@contextlib.contextmanager
def running_service(env: dict[str, str], timeout_s: float = 120) -> Iterator[str]:
    """Yields the base URL once /readyz answers 200; stops the server afterwards (bench's harness does both)."""
    with running_service_cli({"LATENT_CNF_THREADS": "1", **env}, timeout_s=timeout_s) as server:
        yield server.url  # one inference thread: the test process needs the other core
