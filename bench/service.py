"""Load test of the service on loopback, against two references measured in the same run.

Starts the real service (`python -m service`, as deployed, access log off like every server here), the naive
server of bench/naive_server.py and the LitServe peer of bench/litserve_peer.py on free 127.0.0.1 ports. The
throughput mode drives them with wrk (C, one thread, bench/wrk_report.lua: fresh seeds, multipart uploads): at
each concurrency C, C
connections send their next request as soon as the last one is answered, for a fixed time after a warm-up
run. Reported per scenario: successful requests/s, samples (or scored images)/s, p50/p95/p99 latency (wrk's,
of all responses), errors by kind, and the CPU share of wrk and of the server, which shows whether the load
generator was the limit. The overload, soak and chaos modes keep the closed-loop asyncio client: they check
every response's status and headers, mix scenarios per request, or hang up on purpose.

References, each as requests/s of POST /generate with n = 1 on the same machine in the same run:
  (a) GET /healthz of the same app: the HTTP stack's own ceiling (uvicorn + FastAPI);
  (b) the naive server: one model call per request from a `def` endpoint, no batching;
  (c) the peers: LitServe's dynamic batching around the same checkpoint and sampler (bench/litserve_peer.py),
      and KServe's Python model server with a custom kserve.Model, one sample() per request (bench/kserve_peer.py).

    python bench/service.py [--duration 10] [--concurrency 1,8,32,128] [--json out.json] [--markdown]
    python bench/service.py --overload [--burst-seconds 5] [--queue 8]   # concurrency 512 on a small queue
    python bench/service.py --soak 10                                      # 10 minutes of mixed traffic
    python bench/service.py --chaos 60     # normal traffic beside the heaviest valid requests and hang-ups
    python bench/service.py --combine run1.json run2.json run3.json       # the targets over runs, with intervals

Every loop ends by itself (fixed durations, a client timeout), and all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import random
import ssl
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # `python bench/service.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import httpx
import numpy as np
from PIL import Image

from bench import wrk_load
from bench.harness import (
    BENCH,
    MIB,
    MemorySampler,
    cpu_seconds,
    fmt,
    int_list,
    machine,
    metric,
    parse_env,
    paused,
    peak_rss_bytes,
    process_tree,
    render,
    rss_bytes,
    running_script,
    running_server,
    running_service,
    str_list,
    wait_idle,
)
from train.cli import add_flags, flag, options_from
from train.metrics.intervals import t_interval

NAIVE_APP = "naive_server:app"
PEER_SCRIPTS = {"peer": BENCH / "litserve_peer.py", "kserve": BENCH / "kserve_peer.py"}
# The references /generate n=1 is compared with, in the tables' order: (name, scenario)
REFERENCES = (("naive", "naive-generate-1"), ("peer", "peer-generate-1"), ("kserve", "kserve-generate-1"))
REFERENCES += (("healthz", "healthz"), ("baseline", "baseline-generate-1"))
REFERENCE_NAMES = {
    "naive": "naive",
    "peer": "LitServe",
    "kserve": "KServe",
    "healthz": "/healthz",
    "baseline": "baseline",
}
# Issue #29's targets: (concurrency, reference, least ratio of ours to it)
TARGETS = ((32, "healthz", 0.6), (32, "peer", 2.0), (32, "kserve", 2.0), (1, "naive", 1.0))
TAIL_TARGET = 2.0  # p99 / p50 at concurrency 1
MERGED_CALL_TARGET = 1.5  # a merged call's time in the server over the same call alone
CHAOS_P99_S = 2.0  # the normal traffic's p99 next to hostile clients


@dataclass(frozen=True)
class Scenario:
    name: str
    target: str  # "service", "baseline" (the service of --baseline), "naive", "peer" (LitServe) or "kserve"
    method: str
    path: str
    items: int  # samples (or scored images) per request; 0 for the health check
    body: dict | None = None  # JSON body, or the form fields of an upload
    upload: bool = False  # multipart with `items` copies of one MNIST test digit as `file`


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("healthz", "service", "GET", "/healthz", 0),
        Scenario("generate-1", "service", "POST", "/generate", 1, {"n": 1}),
        Scenario("baseline-healthz", "baseline", "GET", "/healthz", 0),
        Scenario("baseline-generate-1", "baseline", "POST", "/generate", 1, {"n": 1}),
        Scenario("naive-generate-1", "naive", "POST", "/generate", 1, {"n": 1}),
        Scenario("peer-generate-1", "peer", "POST", "/predict", 1, {"n": 1}),
        Scenario("kserve-generate-1", "kserve", "POST", "/v1/models/{model}:predict", 1, {"n": 1}),
        Scenario("generate-64", "service", "POST", "/generate", 64, {"n": 64}),
        Scenario("generate-64-grid", "service", "POST", "/generate?format=png", 64, {"n": 64}),
        Scenario("score", "service", "POST", "/score", 1, {"importance_samples": "64"}, upload=True),
        Scenario("trajectory", "service", "GET", "/trajectory?steps=11", 1),
        Scenario("score-heaviest", "service", "POST", "/score", 16, {"importance_samples": "1024"}, upload=True),
    )
}


@dataclass(frozen=True)
class LoadOptions:
    """How each mode drives the servers (the command line's flags, typed)."""

    duration: float = flag(10.0, help="measured seconds per scenario and concurrency")
    warmup: float = flag(1.0, help="unmeasured seconds before each measurement")
    concurrency: Sequence[int] = flag((1, 8, 32, 128), help="comma-separated list", type=int_list, nargs=None)
    scenarios: Sequence[str] = flag(tuple(SCENARIOS), help=",".join(SCENARIOS), type=str_list, nargs=None)
    timeout: float = flag(60.0, help="client timeout per request, seconds")
    burst_seconds: float = flag(5.0, help="length of the overload burst")
    burst_concurrency: int = flag(512, help="closed-loop clients of the overload burst")
    burst_scenario: str = flag(
        "generate-64", help="what the burst sends", choices=[s for s, v in SCENARIOS.items() if v.target == "service"]
    )
    queue: int = flag(8, help="LATENT_CNF_MAX_QUEUE of the overload run")
    soak: float | None = flag(None, help="run mixed traffic for this long instead", metavar="MINUTES")
    soak_concurrency: int = flag(32, help="closed-loop clients of --soak")
    chaos: float | None = flag(None, help="run normal next to hostile traffic instead", metavar="SECONDS")
    chaos_normal: int = flag(4, help="closed-loop /generate n=1 clients of --chaos")
    chaos_heavy: int = flag(4, help="closed-loop heaviest /score clients of --chaos")
    baseline: Path | None = flag(
        None,
        help="another checkout (git worktree add DIR COMMIT) whose `python -m service` the baseline-* scenarios "
        "measure in the same run as this one's: a change's effect side by side",
        type=Path,
        metavar="DIR",
    )


# Histograms of the service's merged model calls: the batcher's view of a scenario.
MODEL_METRICS = ("latent_cnf_batch_requests", "latent_cnf_nfe", "latent_cnf_inference_seconds")
MODEL_METRICS += ("latent_cnf_call_round_trip_seconds",)
SOAK_MIX = {"generate-1": 4, "generate-64": 2, "score": 2, "trajectory": 1, "healthz": 1}
# A client that gives up: the heaviest /generate, abandoned after HANG_UP_S.
HANG_UP_BODY, HANG_UP_S = {"n": 256, "solver": {"method": "rk4", "steps": 1000}}, 0.2


@dataclass
class Outcome:
    scenario: str
    finished: float  # time.perf_counter()
    latency: float
    status: int | str  # HTTP status, or the client error's class name
    retry_after: bool


@dataclass
class Load:
    """Everything one closed-loop drive needs: where each target lives and the upload to send."""

    urls: dict[str, str]
    digit: bytes
    timeout_s: float = 60.0
    outcomes: list[Outcome] = field(default_factory=list)

    async def send(self, client: httpx.AsyncClient, scenario: Scenario) -> None:
        url = self.urls[scenario.target] + scenario.path
        started = time.perf_counter()
        try:
            if scenario.upload:
                files = [("file", (f"digit{i}.png", self.digit, "image/png")) for i in range(scenario.items)]
                response = await client.post(url, files=files, data=scenario.body)
            else:
                response = await client.request(scenario.method, url, json=scenario.body)
            status, retry_after = response.status_code, "retry-after" in response.headers
        except httpx.HTTPError as error:
            status, retry_after = type(error).__name__, False
        done = time.perf_counter()
        self.outcomes.append(Outcome(scenario.name, done, done - started, status, retry_after))

    async def drive(
        self, pick: Callable[[random.Random], Scenario], concurrency: int, seconds: float, keep_alive: bool = True
    ) -> float:
        """`concurrency` clients, each sending its next request when the last is answered, for `seconds`;
        returns when they started.

        Each client has its own httpx client and connection: with one shared pool of many connections, httpx
        spends per request a time that grows with their number, and the load generator would be measured.
        """
        tls = ssl.create_default_context()  # never used on http://, but built once rather than per client
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1 if keep_alive else 0)
        clients = [httpx.AsyncClient(timeout=self.timeout_s, limits=limits, verify=tls) for _ in range(concurrency)]
        started = time.perf_counter()
        end = started + seconds

        async def one_client(client: httpx.AsyncClient, index: int) -> None:
            rng = random.Random(index)
            while time.perf_counter() < end:
                await self.send(client, pick(rng))

        try:
            await asyncio.gather(*(one_client(client, i) for i, client in enumerate(clients)))
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))
        return started


def summarize(outcomes: Sequence[Outcome], start: float, end: float, items: int) -> dict:
    """Rates over [start, end] from the requests that finished inside it; latencies of the successful ones."""
    inside = [o for o in outcomes if start <= o.finished <= end]
    ok = np.array([o.latency for o in inside if o.status == 200]) * 1000
    seconds = end - start
    p50, p95, p99 = np.percentile(ok, [50, 95, 99]).tolist() if len(ok) else (None, None, None)
    return {
        "requests": len(inside),
        "ok": len(ok),
        "ok_per_s": len(ok) / seconds,
        "items_per_s": len(ok) * items / seconds if items else None,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "errors": dict(Counter(str(o.status) for o in inside if o.status != 200)),
    }


def model_calls(url: str) -> Counter:
    """Sums and counts of the service's model-call histograms, over all models and kinds."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return Counter(
        {f"{name}{part}": metric(text, f"{name}{part}") for name in MODEL_METRICS for part in ("_sum", "_count")}
    )


def batching(before: Counter, after: Counter, seconds: float) -> dict:
    """Requests merged per model call, NFE per call, and the share of the time a model call was running."""
    delta = {key: after[key] - before[key] for key in after}
    calls = delta.get("latent_cnf_batch_requests_count", 0)
    if not calls:
        return {"requests_per_call": None, "nfe_per_call": None, "inference_busy": None, "call_ms": None}
    return {
        "requests_per_call": delta["latent_cnf_batch_requests_sum"] / calls,
        "nfe_per_call": delta["latent_cnf_nfe_sum"] / calls,
        "inference_busy": delta["latent_cnf_inference_seconds_sum"] / seconds,
        "call_ms": delta["latent_cnf_inference_seconds_sum"] / calls * 1000,
        "round_trip_ms": delta["latent_cnf_call_round_trip_seconds_sum"] / calls * 1000,
    }


def call_alone_ms(scenario: Scenario, model_name: str, requests: int, threads: int, min_time: float = 2.0) -> float:
    """Median time of the merged call a scenario's rows made in the server, run here alone through
    service.model_calls.forward, as the model process runs it (`requests` chunks, each request's seeds, the served
    solver, a JSON answer's PNGs), on as many torch threads as the model process has."""
    import torch

    import latent_cnf
    from latent_cnf.data import load_split
    from latent_cnf.images import binarize_at_threshold
    from service.model_calls import BatchKey, SampleChunk, SampleJob, ScoreChunk, forward

    torch.set_num_threads(threads)
    model = latent_cnf.load(model_name)
    chunks: list[SampleChunk] | list[ScoreChunk]
    if scenario.upload:
        k = int(scenario.body["importance_samples"]) if scenario.body else 64
        key = BatchKey(kind="score", model=model_name, version=1, solver=model.score_solver, importance_samples=k)
        digit = binarize_at_threshold(load_split("mnist", "test", None, download=False).images[:1])
        images = digit.expand(scenario.items, 28, 28)
        chunks = [ScoreChunk(images, torch.arange(scenario.items)) for _ in range(requests)]
    else:
        key = BatchKey(kind="generate", model=model_name, version=1, solver=model.sample_solver, pngs=True)
        chunks = [
            SampleChunk(slice(0, scenario.items), SampleJob(scenario.items, None, seed)) for seed in range(requests)
        ]
    forward(model, key, chunks)  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while time.perf_counter() < deadline or len(times) < 5:
        started = time.perf_counter()
        forward(model, key, chunks)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def merged_calls(rows: list[dict], env: dict[str, str]) -> list[dict]:
    """Each /generate and /score row's mean model call in the server against the same merged call alone (issue 29:
    at most 1.5x)."""
    threads = int(env.get("LATENT_CNF_THREADS") or max(1, (os.cpu_count() or 1) - 1))  # the model process's
    out = []
    for row in rows:
        scenario = SCENARIOS[row["scenario"]]
        if scenario.target != "service" or scenario.path not in ("/generate", "/score") or not row.get("call_ms"):
            continue  # (the PNG grid's calls have no PNGs in them: not the call timed here)
        requests = max(1, round(row["requests_per_call"]))
        alone = call_alone_ms(scenario, env["LATENT_CNF_DEFAULT_MODEL"], requests, threads)
        alone_per_s = requests * scenario.items / alone * 1000
        out.append(
            row
            | {"merged_requests": requests, "alone_ms": alone, "ratio": row["call_ms"] / alone}
            | {"alone_items_per_s": alone_per_s, "vs_alone": row["items_per_s"] / alone_per_s}
        )
    return out


def mnist_digit(folder: Path | None) -> bytes:
    """The first MNIST test digit as a PNG (read locally, never downloaded)."""
    from latent_cnf import data

    image = data.load_split("mnist", "test", folder, download=False).images[0]
    buffer = io.BytesIO()
    Image.fromarray(image.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def request_body(scenario: Scenario, digit: bytes) -> wrk_load.Body | None:
    """What wrk sends: httpx's own multipart encoding of an upload, or the JSON body with a fresh seed each."""
    if scenario.upload:
        files = [("file", (f"digit{i}.png", digit, "image/png")) for i in range(scenario.items)]
        request = httpx.Request("POST", "http://bench", files=files, data=scenario.body)
        return wrk_load.Body(request.headers["content-type"], request.read())
    if scenario.body is None:
        return None
    text = json.dumps(scenario.body | {"seed": "SEED"}).replace('"SEED"', wrk_load.SEED)
    return wrk_load.Body("application/json", text.encode())


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def throughput(options: LoadOptions, env: dict[str, str], digit: bytes) -> dict:
    """Every scenario at every concurrency, driven by wrk; scenarios interleaved per concurrency so drift hits
    all alike. The naive server and the peers start only if a chosen scenario needs them, and every server but
    the one measured is paused while it is."""
    results: list[dict] = []
    targets = {SCENARIOS[name].target for name in options.scenarios}
    with contextlib.ExitStack() as stack:
        servers = {"service": stack.enter_context(running_service(env))}
        if "baseline" in targets:
            if options.baseline is None:
                raise SystemExit("the baseline-* scenarios need --baseline DIR, a checkout of the commit to compare")
            servers["baseline"] = stack.enter_context(running_service(env, checkout=options.baseline))
        if "naive" in targets:
            servers["naive"] = stack.enter_context(running_server(NAIVE_APP, env, app_dir=BENCH))
        model = env["LATENT_CNF_DEFAULT_MODEL"]
        ready = {"peer": "/health", "kserve": f"/v1/models/{model}"}
        for peer in targets & set(PEER_SCRIPTS):
            servers[peer] = stack.enter_context(running_script(PEER_SCRIPTS[peer], env, ready_path=ready[peer]))
        service = servers["service"]
        for concurrency in options.concurrency:
            for name in options.scenarios:
                scenario = SCENARIOS[name]
                server, body = servers[scenario.target], request_body(scenario, digit)
                url = server.url + scenario.path.format(model=model)
                drive = functools.partial(
                    wrk_load.run, url, scenario.method, body, concurrency, timeout_s=options.timeout
                )
                before = model_calls(service.url)
                started = time.perf_counter()
                with paused(other for target, other in servers.items() if target != scenario.target):
                    if options.warmup > 0:
                        drive(options.warmup)
                    cpu_before, measured = tree_cpu_seconds(server.pid), time.perf_counter()
                    row = {"scenario": name, "concurrency": concurrency} | drive(options.duration)
                    server_cpu = tree_cpu_seconds(server.pid) - cpu_before
                    row["server_core_share"] = server_cpu / (time.perf_counter() - measured)
                row["items_per_s"] = row["ok_per_s"] * scenario.items if scenario.items else None
                if scenario.target == "service":  # over the whole drive, warm-up included
                    row.update(batching(before, model_calls(service.url), time.perf_counter() - started))
                row["settle_seconds"] = wait_idle(server.pid)
                results.append(row)
                log(
                    f"{name:>18s} c={concurrency:<4d} {row['ok_per_s']:9.1f} ok/s  p50 {fmt(row['p50_ms'])} ms"
                    f"  wrk {row['wrk_core_share']:.0%} of a core, server {row['server_core_share']:.0%}"
                )
        rss = {name: sum(filter(None, map(rss_bytes, process_tree(s.pid)))) for name, s in servers.items()}
    merged = merged_calls(results, env)
    return {"rows": results, "references": references(results), "merged_calls": merged, "rss_bytes_after": rss}


def target_goals() -> list[tuple[str, float, str]]:
    """Issue 29's targets: (name, goal, "ge" for at least or "le" for at most)."""
    goals = [(f"/generate n=1 at c={c}: x {REFERENCE_NAMES[key]}", goal, "ge") for c, key, goal in TARGETS]
    return [*goals, ("/generate n=1 at c=1: p99 / p50", TAIL_TARGET, "le")]


def references(rows: list[dict]) -> dict:
    """/generate n=1 against the health check, the naive server and the peers, per concurrency; the targets."""
    by = {(r["scenario"], r["concurrency"]): r for r in rows}
    ratios = []
    for concurrency in sorted({c for _, c in by}):
        ours = by.get(("generate-1", concurrency))
        if ours is None:
            continue
        row = {"concurrency": concurrency, "ours_per_s": ours["ok_per_s"]}
        for key, scenario in REFERENCES:
            other = by.get((scenario, concurrency))
            row[f"{key}_per_s"] = other["ok_per_s"] if other else None
            row[f"vs_{key}"] = ours["ok_per_s"] / other["ok_per_s"] if other and other["ok_per_s"] else None
        ratios.append(row)
    at = {r["concurrency"]: r for r in ratios}
    single = by.get(("generate-1", 1))
    tail = single["p99_ms"] / single["p50_ms"] if single and single["p50_ms"] else None
    values = [at.get(c, {}).get(f"vs_{key}") for c, key, _ in TARGETS] + [tail]
    targets = [(name, goal, value, op) for (name, goal, op), value in zip(target_goals(), values, strict=True)]
    checks = [
        {
            "target": name,
            "goal": goal,
            "measured": value,
            "met": None if value is None else (value >= goal if op == "ge" else value <= goal),
        }
        for name, goal, value, op in targets
    ]
    return {"ratios": ratios, "targets": checks}


def combine(paths: Sequence[Path]) -> list[dict]:
    """The targets over several throughput runs (their --json files): each one's mean and 95 % t-interval, met
    only if the whole interval is on the right side of the goal."""
    runs = [json.loads(path.read_text())["result"]["references"]["targets"] for path in paths]
    ops = {name: op for name, _, op in target_goals()}
    out = []
    for checks in zip(*runs, strict=True):
        values = np.array([c["measured"] for c in checks if c["measured"] is not None], dtype=float)
        first = checks[0]
        row = {"target": first["target"], "goal": first["goal"], "runs": len(values), "values": values.tolist()}
        if len(values) >= 2:
            mean, low, high = t_interval(values)
            met = low >= first["goal"] if ops[first["target"]] == "ge" else high <= first["goal"]
            row |= {"mean": mean, "low": low, "high": high, "met": bool(met)}
        out.append(row)
    return out


def combined_report(rows: list[dict], markdown: bool) -> str:
    table = [
        [r["target"], r["goal"], r["runs"], ", ".join(fmt(v, 2) for v in r["values"])]
        + [fmt(r.get("mean"), 2), f"{fmt(r.get('low'), 2)} .. {fmt(r.get('high'), 2)}"]
        + [{True: "met", False: "NOT met", None: "-"}[r.get("met")]]
        for r in rows
    ]
    columns = ["target", "goal", "runs", "each run", "mean", "95 % interval", "result (interval)"]
    return render("Targets over runs", columns, table, markdown)


def overload(options: LoadOptions, env: dict[str, str], digit: bytes) -> dict:
    """A burst at high concurrency on a small queue: only 200 and 503 (with Retry-After), bounded memory,
    and a normal request served afterwards. Each request opens its own connection: a client this overloaded
    lags by seconds, and reusing a keep-alive connection would race uvicorn closing it as idle."""
    env = {**env, "LATENT_CNF_MAX_QUEUE": str(options.queue)}
    scenario = SCENARIOS[options.burst_scenario]
    with running_service(env) as service:
        load = Load({"service": service.url}, digit, options.timeout)
        rss_before, peak_before = rss_bytes(service.pid), peak_rss_bytes(service.pid)
        with MemorySampler(service.pid) as memory:
            started = asyncio.run(
                load.drive(lambda _: scenario, options.burst_concurrency, options.burst_seconds, keep_alive=False)
            )
            seconds = time.perf_counter() - started
        peak_after = peak_rss_bytes(service.pid)
        after = httpx.post(f"{service.url}/generate", json={"n": 1, "seed": 0}, timeout=options.timeout).status_code
        healthz = httpx.get(f"{service.url}/healthz", timeout=options.timeout).status_code
        rss_after = rss_bytes(service.pid)
    statuses = Counter(str(o.status) for o in load.outcomes)
    rejected = [o for o in load.outcomes if o.status == 503]
    return {
        "scenario": scenario.name,
        "concurrency": options.burst_concurrency,
        "queue": options.queue,
        "seconds": seconds,
        "statuses": dict(statuses),
        "only_200_and_503": set(statuses) <= {"200", "503"},
        "rejected": len(rejected),
        "rejected_with_retry_after": sum(o.retry_after for o in rejected),
        "rss_before_bytes": rss_before,
        "rss_peak_during_burst_bytes": memory.peak,
        "rss_after_bytes": rss_after,
        "vm_hwm_before_bytes": peak_before,
        "vm_hwm_after_bytes": peak_after,
        "status_after_burst": after,
        "healthz_after_burst": healthz,
    }


def soak(options: LoadOptions, env: dict[str, str], digit: bytes) -> dict:
    """Mixed traffic for options.soak minutes; per-minute rates, errors, p50 and RSS show any drift."""
    names, weights = list(SOAK_MIX), list(SOAK_MIX.values())

    def pick(rng: random.Random) -> Scenario:
        return SCENARIOS[rng.choices(names, weights)[0]]

    seconds = options.soak * 60
    with running_service(env) as service:
        load = Load({"service": service.url}, digit, options.timeout)
        with MemorySampler(service.pid, interval_s=1.0) as memory:
            start = asyncio.run(load.drive(pick, options.soak_concurrency, seconds))
        peak = peak_rss_bytes(service.pid)
    minutes = []
    for minute in range(max(1, round(seconds / 60))):
        lo, hi = start + 60 * minute, min(start + 60 * (minute + 1), start + seconds)
        inside = [o for o in load.outcomes if lo <= o.finished < hi]
        ok = [o.latency * 1000 for o in inside if o.status == 200]
        rss = [b for t, b in memory.samples if lo <= t < hi]
        minutes.append(
            {
                "minute": minute + 1,
                "requests": len(inside),
                "ok": len(ok),
                "rejected_503": sum(o.status == 503 for o in inside),
                "errors": sum(o.status not in (200, 503) for o in inside),
                "p50_ms": statistics.median(ok) if ok else None,
                "rss_bytes": max(rss) if rss else None,
            }
        )
    first, last = minutes[0], minutes[-1]
    return {
        "minutes": minutes,
        "concurrency": options.soak_concurrency,
        "mix": SOAK_MIX,
        "served": sum(m["ok"] for m in minutes),
        "errors": dict(Counter(str(o.status) for o in load.outcomes if o.status not in (200, 503))),
        "rejected_503": sum(o.status == 503 for o in load.outcomes),
        "p50_drift": last["p50_ms"] / first["p50_ms"] if first["p50_ms"] and last["p50_ms"] else None,
        "rss_drift_bytes": last["rss_bytes"] - first["rss_bytes"] if first["rss_bytes"] and last["rss_bytes"] else None,
        "vm_hwm_bytes": peak,
    }


def chaos(options: LoadOptions, env: dict[str, str], digit: bytes) -> dict:
    """Normal traffic (/generate n = 1) next to hostile but valid clients: the heaviest /score requests in a
    closed loop and clients that send the heaviest /generate and hang up. Reports the normal traffic's
    latency and errors, what the heavy clients got, and how much abandoned work the service dropped."""
    with running_service(env) as service:
        load = Load({"service": service.url}, digit, options.timeout)
        before = httpx.get(f"{service.url}/metrics").text

        async def hang_ups(seconds: float) -> int:
            sent, end = 0, time.perf_counter() + seconds
            async with httpx.AsyncClient(timeout=HANG_UP_S) as client:
                while time.perf_counter() < end:
                    with contextlib.suppress(httpx.TimeoutException):
                        await client.post(f"{service.url}/generate", json=HANG_UP_BODY)
                    sent += 1
            return sent

        async def mix() -> tuple[float, int]:
            normal = load.drive(lambda _: SCENARIOS["generate-1"], options.chaos_normal, options.chaos)
            heavy = load.drive(lambda _: SCENARIOS["score-heaviest"], options.chaos_heavy, options.chaos)
            started, _, sent = await asyncio.gather(normal, heavy, hang_ups(options.chaos))
            return started, sent

        started, hung_up = asyncio.run(mix())
        after = httpx.get(f"{service.url}/metrics").text
    ended = started + options.chaos
    normal = [o for o in load.outcomes if o.scenario == "generate-1"]
    heavy = [o for o in load.outcomes if o.scenario == "score-heaviest"]
    return {
        "seconds": options.chaos,
        "normal": summarize(normal, started, ended, 1) | {"clients": options.chaos_normal},
        "heavy": summarize(heavy, started, ended + options.timeout, 16) | {"clients": options.chaos_heavy},
        "hung_up": hung_up,
        "abandoned": metric(after, "latent_cnf_abandoned_total") - metric(before, "latent_cnf_abandoned_total"),
        "samples_generated": metric(after, "latent_cnf_samples_generated_total")
        - metric(before, "latent_cnf_samples_generated_total"),
    }


def mib(value: int | None) -> str:
    return fmt(value / MIB if value is not None else None)


def report(kind: str, result: dict, markdown: bool) -> str:
    if kind == "throughput":
        rows = [
            [
                r["scenario"],
                r["concurrency"],
                fmt(r["ok_per_s"]),
                fmt(r["items_per_s"]),
                fmt(r["p50_ms"]),
                fmt(r["p95_ms"]),
                fmt(r["p99_ms"]),
                fmt(r.get("requests_per_call")),
                fmt(r.get("nfe_per_call"), 0),
                fmt(r["inference_busy"] * 100 if r.get("inference_busy") is not None else None, 0),
                fmt(r["server_core_share"] * 100, 0),
                fmt(r["wrk_core_share"] * 100, 0),
                ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0",
            ]
            for r in result["rows"]
        ]
        columns = ["scenario", "concurrency", "ok req/s", "samples/s", "p50 ms", "p95 ms", "p99 ms"]
        columns += ["requests per model call", "NFE per call", "inference busy %", "server CPU %", "wrk CPU %"]
        columns += ["errors"]
        text = render("Throughput and latency", columns, rows, markdown)
        ratios = [
            [r["concurrency"], fmt(r["ours_per_s"])]
            + [cell for key, _ in REFERENCES for cell in (fmt(r[f"{key}_per_s"]), fmt(r[f"vs_{key}"], 2))]
            for r in result["references"]["ratios"]
        ]
        columns = ["concurrency", "ours req/s"]
        columns += [
            c for key, _ in REFERENCES for c in (f"{REFERENCE_NAMES[key]} req/s", f"ours / {REFERENCE_NAMES[key]}")
        ]
        text += "\n" + render("/generate n=1 against the references", columns, ratios, markdown)
        targets = [
            [t["target"], t["goal"], fmt(t["measured"], 2), {True: "met", False: "NOT met", None: "-"}[t["met"]]]
            for t in result["references"]["targets"]
        ]
        text += "\n" + render("Targets", ["target", "goal", "measured", "result"], targets, markdown)
        merged = [
            [r["scenario"], r["concurrency"], r["merged_requests"], fmt(r["call_ms"]), fmt(r["round_trip_ms"])]
            + [fmt(r["alone_ms"])]
            + [fmt(r["ratio"], 2), "met" if r["ratio"] <= MERGED_CALL_TARGET else "NOT met"]
            + [fmt(r["items_per_s"]), fmt(r["alone_items_per_s"]), fmt(r["vs_alone"], 2)]
            for r in result["merged_calls"]
        ]
        columns = ["scenario", "concurrency", "requests merged", "call ms in the model process", "its round trip ms"]
        columns += ["same call alone ms"]
        columns += ["ratio", f"<= {MERGED_CALL_TARGET}", "served items/s", "the call alone items/s", "served / alone"]
        return (
            text
            + "\n"
            + render("A merged model call in the server against the same call alone", columns, merged, markdown)
        )
    if kind == "overload":
        r = result
        rows = [
            ["burst", f"{r['scenario']} at concurrency {r['concurrency']}, queue {r['queue']}, {r['seconds']:.1f} s"],
            ["statuses", ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))],
            ["only 200 and 503", "yes" if r["only_200_and_503"] else "NO"],
            ["503 with Retry-After", f"{r['rejected_with_retry_after']} of {r['rejected']}"],
            [
                "RSS before / peak during / after (MiB)",
                " / ".join(mib(r[k]) for k in ("rss_before_bytes", "rss_peak_during_burst_bytes", "rss_after_bytes")),
            ],
            ["VmHWM before / after burst (MiB)", f"{mib(r['vm_hwm_before_bytes'])} / {mib(r['vm_hwm_after_bytes'])}"],
            ["after the burst: /generate, /healthz", f"{r['status_after_burst']}, {r['healthz_after_burst']}"],
        ]
        return render("Overload", ["check", "result"], rows, markdown)
    if kind == "chaos":
        rows = [
            [
                name,
                r["clients"],
                r["ok"],
                fmt(r["p50_ms"]),
                fmt(r["p99_ms"]),
                ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0",
            ]
            for name, r in (("/generate n=1 (normal)", result["normal"]), ("/score 16 x K=1024", result["heavy"]))
        ]
        columns = ["traffic", "clients", "ok", "p50 ms", "p99 ms", "errors"]
        text = render(f"Chaos for {result['seconds']:g} s", columns, rows, markdown)
        summary = [
            ["normal p99 within 2 s, no errors", "yes" if chaos_met(result) else "NO"],
            ["heaviest /generate sent and hung up", result["hung_up"]],
            ["requests dropped unrun (latent_cnf_abandoned_total)", fmt(result["abandoned"], 0)],
            ["samples generated (normal traffic and hang-ups that ran)", fmt(result["samples_generated"], 0)],
        ]
        return text + "\n" + render("Chaos summary", ["measure", "value"], summary, markdown)
    rows = [
        [m["minute"], m["requests"], m["ok"], m["rejected_503"], m["errors"], fmt(m["p50_ms"]), mib(m["rss_bytes"])]
        for m in result["minutes"]
    ]
    columns = ["minute", "requests", "ok", "503", "errors", "p50 ms", "RSS MiB"]
    text = render(f"Soak at concurrency {result['concurrency']}", columns, rows, markdown)
    summary = [
        ["requests served", result["served"]],
        ["errors (not 200, not 503)", ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "0"],
        ["intended 503s", result["rejected_503"]],
        ["p50 last minute / first minute", fmt(result["p50_drift"], 2)],
        ["RSS last minute - first minute (MiB)", mib(result["rss_drift_bytes"])],
        ["VmHWM (MiB)", mib(result["vm_hwm_bytes"])],
    ]
    return text + "\n" + render("Soak summary", ["measure", "value"], summary, markdown)


def chaos_met(result: dict) -> bool:
    normal = result["normal"]
    return not normal["errors"] and normal["p99_ms"] is not None and normal["p99_ms"] <= CHAOS_P99_S * 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mnist-final-cond", help="checkpoint both servers load")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="service setting (repeat)")
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX folder (else $LATENT_CNF_DATA)")
    parser.add_argument("--overload", action="store_true", help="run the overload burst instead")
    add_flags(parser, LoadOptions, threads=False)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for docs/benchmarks.md)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", metavar="JSON", help="no run: the targets over these runs' --json files"
    )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.combine:
        print(combined_report(combine(args.combine), args.markdown))
        return
    # The shipped settings, and a queue that holds the offered load (the overload run shrinks it).
    env = {
        "LATENT_CNF_MODELS": args.model,
        "LATENT_CNF_DEFAULT_MODEL": args.model,
        "LATENT_CNF_MAX_QUEUE": "1024",
        "LATENT_CNF_ACCESS_LOG": "false",  # as for every server here: a log line a request costs them all alike
        **parse_env(args.env),
    }
    digit = mnist_digit(args.data_dir)
    kind = "overload" if args.overload else "soak" if args.soak else "chaos" if args.chaos else "throughput"
    run = {"throughput": throughput, "overload": overload, "soak": soak, "chaos": chaos}[kind]
    result = run(options_from(args, LoadOptions), env, digit)
    header = {"kind": kind, "machine": machine(), "settings": env, "args": vars(args) | {"json": str(args.json)}}
    print(f"{kind} on {machine()}\n")
    print(report(kind, result, args.markdown))
    if args.json:
        args.json.write_text(json.dumps(header | {"result": result}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
