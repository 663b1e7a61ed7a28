"""Memory under a burst of large uploads: the RSS of the server before, at its peak and --settle s after.

Starts the real service (uvicorn, one worker, one model) on a free 127.0.0.1 port and sends each burst as C
concurrent POST /score requests at once, each with F images of one kind, while a thread samples the server's
RSS every 50 ms. Bursts, one server each (so one burst's high-water mark is not the next one's):

  tester     the outside tester's report: 16 requests x 16 RGBA PNGs of 4096x4096 (1.4 MB a request)
  webp-max   the worst for the bounded decoder: 16 requests x one WebP at both default pixel caps (4096x4096),
             (libwebp decodes into canvases of its own, which Pillow copies: the most bytes per pixel)
  png-many   16 requests x 16 PNGs that share the per-request budget (many decodes, each under the cap)

    python bench/memory.py [--bursts tester,webp-max,png-many] [--importance-samples 64] [--markdown]
    python bench/memory.py --env LATENT_CNF_MAX_CONCURRENT_DECODES=4   # any setting, for comparison
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # `python bench/memory.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
from PIL import Image, ImageDraw

from bench.harness import MIB, MemorySampler, fmt, machine, parse_env, peak_rss_bytes, render, rss_bytes, running_server

SERVICE_APP = "service.app:app"


@dataclass(frozen=True)
class Burst:
    name: str
    requests: int
    files: int
    side: int  # images are side x side
    fmt: str
    mode: str


BURSTS = {
    b.name: b
    for b in (
        Burst("tester", 16, 16, 4096, "PNG", "RGBA"),
        Burst("webp-max", 16, 1, 4096, "WEBP", "RGBA"),
        Burst("png-many", 16, 16, 1024, "PNG", "RGBA"),
    )
}


def digit_image(side: int, fmt: str, mode: str) -> bytes:
    """A dark ring (a zero) on a light background, `side` pixels square: compresses to little, decodes to a lot."""
    image = Image.new(mode, (side, side), "white")
    ImageDraw.Draw(image).ellipse(
        (side * 0.3, side * 0.2, side * 0.7, side * 0.8), outline="black", width=max(1, side // 14)
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buffer.getvalue()


async def send_burst(url: str, burst: Burst, data: bytes, importance_samples: int) -> tuple[float, Counter]:
    """All requests at once; the seconds until the last answer and the answers by status."""
    files = [("file", (f"big{i}.{burst.fmt.lower()}", data)) for i in range(burst.files)]
    form = {"importance_samples": str(importance_samples)}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(client.post("/score", files=files, data=form) for _ in range(burst.requests)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
    statuses = Counter(r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses)
    return elapsed, statuses


def run(burst: Burst, env: dict[str, str], importance_samples: int, settle_s: float) -> list[object]:
    data = digit_image(burst.side, burst.fmt, burst.mode)
    with running_server(SERVICE_APP, env) as server:
        before = rss_bytes(server.pid)
        with MemorySampler(server.pid) as sampler:
            elapsed, statuses = asyncio.run(send_burst(server.url, burst, data, importance_samples))
            time.sleep(settle_s)
        after = rss_bytes(server.pid)
        hwm = peak_rss_bytes(server.pid)
    return [
        burst.name,
        f"{burst.requests}x{burst.files} {burst.fmt} {burst.side}^2",
        fmt(len(data) * burst.files / MIB, 2),
        fmt(before / MIB, 0),
        fmt(sampler.peak / MIB, 0),
        fmt(hwm / MIB, 0),
        fmt(after / MIB, 0),
        fmt(elapsed, 2),
        " ".join(f"{status}x{n}" for status, n in sorted(statuses.items(), key=str)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", default=",".join(BURSTS), help=f"comma-separated, of {', '.join(BURSTS)}")
    parser.add_argument("--model", default="mnist-final-cond")
    parser.add_argument("--importance-samples", type=int, default=64, help="K of each /score request")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE service settings for every server")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help='seconds after the burst when the "after" RSS is read: glibc and Pillow give memory back lazily',
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables for docs/")
    args = parser.parse_args(argv)
    env = {
        "LATENT_CNF_MODELS": args.model,
        "LATENT_CNF_DEFAULT_MODEL": args.model,
        "LATENT_CNF_DEVICE": "cpu",
        **parse_env(args.env),
    }
    rows = [
        run(BURSTS[name], env, args.importance_samples, args.settle) for name in args.bursts.split(",") if name.strip()
    ]
    columns = [
        "burst",
        "requests x images",
        "MiB/request",
        "RSS before",
        "RSS peak",
        "VmHWM",
        f"RSS +{args.settle:g} s",
        "s",
        "answers",
    ]
    print(render(f"Server memory (MiB) under upload bursts; {machine()}", columns, rows, args.markdown))


if __name__ == "__main__":
    main()
