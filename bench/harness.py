"""Shared by the benchmark scripts and the tests (as `bench.harness`): a server on loopback, its Prometheus
metrics, process memory and CPU (psutil), and tables printed as plain text or as Markdown that pastes straight
into docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
MIB = 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def running_server(
    app: str, env: dict[str, str], app_dir: Path | None = None, ready_path: str = "/readyz", timeout_s: float = 600
) -> Iterator[Server]:
    """uvicorn serving `app` on a free 127.0.0.1 port, yielded once `ready_path` answers 200; stopped after.

    Access logs are off (they would cost every server the same, but cost is not what is measured) and the
    log goes to a file, not a pipe nobody reads, which would block the server once full.
    """
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if app_dir is not None:
        command += ["--app-dir", str(app_dir)]
    with running_command(command, port, env, ready_path, timeout_s) as server:
        yield server


@contextlib.contextmanager
def running_service(
    env: dict[str, str], options: Sequence[str] = (), timeout_s: float = 600, checkout: Path = REPO
) -> Iterator[Server]:
    """The service as it ships, `python -m service` with its server and connection settings, on a free port;
    from another `checkout` of the repository (a git worktree of another commit) to compare with it."""
    port = free_port()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *options]
    with running_command(command, port, env, "/readyz", timeout_s, cwd=checkout) as server:
        yield server


@contextlib.contextmanager
def running_script(script: Path, env: dict[str, str], ready_path: str, timeout_s: float = 600) -> Iterator[Server]:
    """`python SCRIPT --port P` (a server that is not a uvicorn app, such as a framework's launcher) on a free
    port, yielded once `ready_path` answers 200."""
    port = free_port()
    command = [sys.executable, str(script), "--port", str(port)]
    with running_command(command, port, env, ready_path, timeout_s) as server:
        yield server


@contextlib.contextmanager
def paused(servers: Iterable[Server]) -> Iterator[None]:
    """Servers stopped (SIGSTOP, each with its children) while another is measured, continued after: idle, a
    framework's workers still poll their queues (LitServe's, measured: they took CPU from the server under load)."""
    pids = [pid for server in servers for pid in process_tree(server.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a framework's worker processes)."""
    with contextlib.suppress(psutil.Error):
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    return [pid]


@contextlib.contextmanager
def running_command(
    command: list[str], port: int, env: dict[str, str], ready_path: str, timeout_s: float = 600, cwd: Path = REPO
) -> Iterator[Server]:
    """Runs `command` (any server listening on `port`, such as Prometheus) in `cwd`, logging to a file, and yields
    once `ready_path` answers 200; stops it and its children after."""
    app = " ".join(command[1:4])
    log = Path(tempfile.mkstemp(prefix="latent-cnf-bench-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app} was not ready after {timeout_s:g} s; log: {log}")
            time.sleep(0.2)
        yield server
    finally:
        children = process_tree(process.pid)[1:]  # a launcher's workers outlive it when it is terminated
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


# The names of the samples a metric family of each type exposes: its name with one of these endings.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_count", "_sum", "_bucket", "_created"),
    "gaugehistogram": ("_gcount", "_gsum", "_bucket"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` (e.g. latent_cnf_nfe_sum) whose labels include `labels`, in a
    Prometheus text exposition such as a /metrics body; 0 while a declared family has no such sample yet.
    A name no family declares, or a label its samples do not carry, raises: a renamed metric must fail a
    check, not read as 0."""
    families = [
        family
        for family in text_string_to_metric_families(text)
        if name in (family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    ]
    if not families:
        raise KeyError(f"no metric family exposes {name!r}")
    samples = [sample for family in families for sample in family.samples if sample.name == name]
    known = {key for sample in samples for key in sample.labels}
    if samples and not labels.keys() <= known:
        raise KeyError(f"{name} has labels {sorted(known)}, not {sorted(labels.keys() - known)}")
    return sum(sample.value for sample in samples if labels.items() <= sample.labels.items())


def rss_bytes(pid: int) -> int | None:
    """Resident set size now (None once the process is gone)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).memory_info().rss
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def open_files(pid: int) -> int | None:
    """File descriptors the process holds (sockets included; None once it is gone)."""
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).num_fds()
    return None


def wait_idle(pid: int, timeout_s: float = 600, interval_s: float = 0.5, busy_share: float = 0.05) -> float:
    """Block until the process uses under `busy_share` of a core over `interval_s`; returns the seconds waited.

    A server can go on computing after its clients stopped (a merged batch whose requests all timed out, a
    thread pool still running abandoned requests); the next measurement must not share the CPU with it.
    """
    started = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - started < timeout_s:
        time.sleep(interval_s)
        now = cpu_seconds(pid)
        if now - last < busy_share * interval_s:
            break
        last = now
    return time.monotonic() - started


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of the resident set (VmHWM), which no sampling interval can miss. Read
    from Linux's /proc: psutil has no peak resident set on Linux."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class MemorySampler:
    """Samples a process's RSS every `interval_s` on a thread: the curve for drift, the maximum for bursts."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []  # (time.perf_counter(), bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if (rss := rss_bytes(self.pid)) is not None:
                self.samples.append((time.perf_counter(), rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int | None:
        return max((rss for _, rss in self.samples), default=None)


def cpu_model() -> str:
    """The processor's name as Linux reports it (platform.processor() is often empty)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    import torch

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def int_list(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def str_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def render(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool) -> str:
    """A table with a title: aligned plain text for the terminal, or a Markdown table under a bold title."""
    cells = [[str(c) for c in row] for row in rows]
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines) + "\n"
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    line = "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(f"{v:>{w}}" for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([title, line, "-" * len(line), *body]) + "\n"


def fmt(value: float | None, digits: int = 1) -> str:
    """Thousands separators and fixed decimals; '-' where there is nothing to show."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"
