"""A response's CPU work (PNG encoding, JSON rows): inline on the event loop when small, in a worker thread
when large. A hop to a worker thread costs the event loop a wake-up and a GIL handoff to a thread that then
competes with it, more than encoding a few 28x28 PNGs (~70 us each); a large answer inline would stall
every connection for its whole encoding."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

INLINE_IMAGES = 4  # at most this many images encoded on the event loop (about 0.3 ms)

P = ParamSpec("P")
T = TypeVar("T")


async def encode(images: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work(*args, **kwargs)`, which encodes `images` images: here if few, else in a worker thread."""
    if images <= INLINE_IMAGES:
        return work(*args, **kwargs)
    return await run_in_threadpool(work, *args, **kwargs)
