"""Idle and slow clients against the service (issue #14): while N connections send nothing, drip header bytes
or never finish a body, /healthz is timed; the report says how many connections the server closed and when,
and the server's open files, memory and log size.

    # the documented run: starts `python -m service` (one small model) and holds 20,000 connections
    python bench/slow_clients.py --connections 20000 --processes 4
    # against a server started elsewhere (give --pid to also see its open files and memory)
    python bench/slow_clients.py --url http://127.0.0.1:8000 --connections 2000

The client processes split the connections, so no process passes its own open-file limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

if not __package__:  # `python bench/slow_clients.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.harness import MIB, fmt, open_files, render, rss_bytes, running_service
from train.cli import add_flags, flag, options_from

MODES = ("idle", "drip-headers", "drip-body")
# A body that announces more than it sends, under the upload limit so it is not refused at once.
BODY_HEADERS = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
BODY_HEADERS += b"Content-Length: 1000000\r\n\r\n--b\r\n"


@dataclass(frozen=True)
class HoldOptions:
    """What the run holds open and how it probes (the command line's flags, typed)."""

    connections: int = flag(20_000, help="connections held open")
    processes: int = flag(4, help="client processes sharing the connections")
    modes: str = flag(",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    hold: float = flag(60, help="seconds each client keeps its connection")
    drip: float = flag(1.0, help="seconds between dripped bytes")
    probe_every: float = flag(0.5, help="seconds between /healthz probes")
    markdown: bool = flag(False, help="print Markdown tables")


@dataclass(frozen=True)
class Outcome:
    mode: str
    opened: bool
    opened_at_s: float | None  # from the run's start (one monotonic clock for all processes on Linux)
    closed_after_s: float | None  # when the server closed it, from the connection's start; None: still open
    status: str | None  # the status line the server sent first, if any


async def _client(
    host: str, port: int, mode: str, t0: float, hold_s: float, drip_s: float, gate: asyncio.Semaphore
) -> Outcome:
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, asyncio.TimeoutError):
            return Outcome(mode, False, None, None, None)
    started = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4096  # never ends: no blank line follows

    async def drip() -> None:
        if mode == "drip-body":
            writer.write(BODY_HEADERS)
        for i in range(len(head) if mode == "drip-headers" else 10**6 if mode == "drip-body" else 0):
            await asyncio.sleep(drip_s)
            writer.write(head[i : i + 1] if mode == "drip-headers" else b"b")
            await writer.drain()

    first_line: list[str] = []

    async def read_until_closed() -> None:
        while data := await reader.read(65536):
            first_line[:] = first_line or [data.split(b"\r\n", 1)[0].decode(errors="replace")]

    dripper = asyncio.create_task(drip())
    closed = None
    try:
        await asyncio.wait_for(read_until_closed(), hold_s)
        closed = time.monotonic() - started
    except asyncio.TimeoutError:  # before OSError, its base class since Python 3.11: still open at the end
        pass
    except OSError:
        closed = time.monotonic() - started  # a reset is a close too
    finally:
        dripper.cancel()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await dripper
        writer.close()
    return Outcome(mode, True, started - t0, closed, first_line[0] if first_line else None)


def _client_process(args: tuple[str, int, list[str], float, float, float]) -> list[Outcome]:
    host, port, modes, t0, hold_s, drip_s = args

    async def run() -> list[Outcome]:
        gate = asyncio.Semaphore(256)  # connects in flight: a burst larger than the listen backlog only retries
        return list(await asyncio.gather(*(_client(host, port, m, t0, hold_s, drip_s, gate) for m in modes)))

    return asyncio.run(run())


def probe(url: str, until: float, every_s: float, pid: int | None) -> tuple[list[tuple], list[tuple]]:
    """(when, seconds) of /healthz on a fresh connection every `every_s` (None: no 200 in 5 s); server samples."""
    latencies, samples = [], []
    while time.monotonic() < until:
        begun = time.perf_counter()
        try:
            response = httpx.get(f"{url}/healthz", timeout=5, headers={"connection": "close"})
            latencies.append((time.monotonic(), time.perf_counter() - begun if response.status_code == 200 else None))
        except httpx.HTTPError:
            latencies.append((time.monotonic(), None))
        if pid is not None:
            samples.append((time.monotonic(), open_files(pid), rss_bytes(pid)))
        time.sleep(max(0.0, every_s - (time.perf_counter() - begun)))
    return latencies, samples


def run(url: str, pid: int | None, log: Path | None, options: HoldOptions) -> str:
    parts = urlsplit(url)
    modes = options.modes.split(",")
    plan = [modes[i % len(modes)] for i in range(options.connections)]
    started = time.monotonic()
    chunks = [
        (parts.hostname, parts.port, plan[i :: options.processes], started, options.hold, options.drip)
        for i in range(options.processes)
    ]
    probed: dict[str, tuple] = {}
    prober = threading.Thread(
        target=lambda: probed.setdefault("r", probe(url, started + options.hold, options.probe_every, pid)), daemon=True
    )
    prober.start()
    with multiprocessing.get_context("spawn").Pool(options.processes) as pool:
        outcomes = [o for chunk in pool.map(_client_process, chunks) for o in chunk]
    prober.join()
    latencies, samples = probed["r"]
    all_open = max((o.opened_at_s for o in outcomes if o.opened_at_s is not None), default=0) + started
    rows = []
    for mode in dict.fromkeys(plan):
        mine = [o for o in outcomes if o.mode == mode]
        closed = sorted(o.closed_after_s for o in mine if o.closed_after_s is not None)
        statuses = Counter(o.status.split(" ", 2)[1] for o in mine if o.status and " " in o.status)
        rows.append(
            [
                mode,
                len(mine),
                sum(o.opened for o in mine),
                fmt(max((o.opened_at_s for o in mine if o.opened_at_s is not None), default=None)),
                len(closed),
                fmt(closed[len(closed) // 2] if closed else None),
                fmt(closed[-1] if closed else None),
                " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-",
            ]
        )
    report = render(
        f"{options.connections} slow connections for {options.hold:g} s ({options.drip:g} s between dripped bytes)",
        ["mode", "tried", "opened", "last opened at s", "closed by server", "closed p50 s", "last closed s", "answers"],
        rows,
        options.markdown,
    )
    fds = [s[1] for s in samples if s[1] is not None]
    rss = [s[2] for s in samples if s[2] is not None]
    probe_rows = []
    for phase, chosen in (
        ("while connecting", [x for t, x in latencies if t <= all_open]),
        ("all open", [x for t, x in latencies if t > all_open]),
    ):
        answered = [x for x in chosen if x is not None]
        probe_rows.append(
            [
                phase,
                len(chosen),
                len(answered),
                fmt(statistics.median(answered) * 1000 if answered else None),
                fmt(max(answered) * 1000 if answered else None),
                sum(x > 1 for x in answered),
            ]
        )
    probe_rows[0] += [
        max(fds, default="-"),
        fmt(max(rss) / MIB if rss else None, 0),
        fmt(log.stat().st_size / 1024 if log else None, 0),
    ]
    probe_rows[1] += ["", "", ""]
    timeline = [f"{t - started:.0f}s:{n}" for t, n, _ in samples[:: max(1, round(5 / options.probe_every))] if n]
    report += f"\nserver open files every 5 s: {' '.join(timeline) or '-'}\n"
    slow = [f"{t - started:.0f}s:" + ("none" if x is None else f"{x:.1f}s") for t, x in latencies if x is None or x > 1]
    report += f"/healthz probes over 1 s or unanswered, by start: {' '.join(slow) or '-'}\n"
    report += "\n" + render(
        f"/healthz every {options.probe_every:g} s meanwhile (a probe waits at most 5 s)",
        [
            "phase",
            "probes",
            "200 answers",
            "p50 ms",
            "max ms",
            "over 1 s",
            "server max open files",
            "server max RSS MiB",
            "log KiB",
        ],
        probe_rows,
        options.markdown,
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; default: start `python -m service` on a free port")
    parser.add_argument("--pid", type=int, help="the running server's pid, for its open files and memory")
    add_flags(parser, HoldOptions, threads=False)
    parser.add_argument("server_args", nargs="*", help="after --: more `python -m service` options")
    args = parser.parse_args()
    options = options_from(args, HoldOptions)
    if args.url:
        print(run(args.url, args.pid, None, options))
        return
    env = {"LATENT_CNF_MODELS": "mnist-final-cond", "LATENT_CNF_WARMUP": "false"}
    with running_service(env, args.server_args) as server:
        print(run(server.url, server.pid, server.log, options))


if __name__ == "__main__":
    main()
