"""wrk as the load generator of bench/service.py: a closed loop of C connections from one C thread.

A Python client on the same two cores as the server spends as much CPU per request as the server does and
becomes the limit it reports (issue 20); wrk costs a fraction of that. Each run returns wrk's own figures
(from the JSON line bench/wrk_report.lua prints) and the CPU time wrk itself used, so a report can show
that the load generator was not the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_report.lua")
SEED = "{{seed}}"  # replaced by wrk_report.lua with a fresh seed per request
MARK = "WRK_JSON "


@dataclass(frozen=True)
class Body:
    content_type: str
    data: bytes


def parse(stdout: str) -> dict:
    """The summary wrk_report.lua's done() printed: counts, errors by kind, latencies in ms, rate per second."""
    lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
    if not lines:
        raise ValueError(f"no {MARK.strip()} line in wrk's output:\n{stdout[-2000:]}")
    raw = json.loads(lines[-1].removeprefix(MARK))
    seconds = raw["duration_us"] / 1e6
    errors = {kind: raw[kind] for kind in ("connect", "read", "write", "timeout") if raw[kind]}
    if raw["status"]:
        errors["not 2xx/3xx"] = raw["status"]
    ok = raw["requests"] - raw["status"]
    return {
        "seconds": seconds,
        "requests": raw["requests"],
        "ok": ok,
        "ok_per_s": ok / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p95_ms": raw["p95_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": errors,
    }


def command(
    url: str, method: str, body_file: Path | None, content_type: str, connections: int, seconds: float, timeout_s: float
) -> list[str]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench/service.py needs wrk: apt-get install wrk (Debian, Ubuntu) or brew install wrk")
    args = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s"]
    args += ["-s", str(SCRIPT), url, "--", method]
    return args + ([content_type, str(body_file)] if body_file else [])


def run(url: str, method: str, body: Body | None, connections: int, seconds: float, timeout_s: float) -> dict:
    """One closed-loop wrk run against `url`; parse()'s figures plus wrk's CPU seconds and share of one core."""
    with tempfile.NamedTemporaryFile(prefix="latent-cnf-wrk-", suffix=".body") as file:
        if body is not None:
            file.write(body.data)
            file.flush()
        body_file, content_type = (Path(file.name), body.content_type) if body else (None, "")
        args = command(url, method, body_file, content_type, connections, seconds, timeout_s)
        started = time.perf_counter()
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        stdout = process.stdout.read()  # until wrk exits and closes it
        _, status, usage = os.wait4(process.pid, 0)  # wrk's own rusage, not the other children's
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{stdout[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return parse(stdout) | {"wrk_cpu_seconds": cpu, "wrk_core_share": cpu / wall}
