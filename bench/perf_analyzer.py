"""Triton's perf_analyzer against the service's v2 sampling model, as Triton users measure Triton.

Starts the real service (`python -m service`, one worker, as deployed, access log off) with one model on a
free 127.0.0.1 port and runs perf_analyzer over HTTP (binary tensors, synchronous calls, its own
stabilisation over time windows) at each concurrency, with N = 1 and a seed and label per request drawn from
a list of 16, then prints its numbers as a table.

perf_analyzer is a C++ binary. The PyPI package `perf-analyzer` is an empty placeholder (0.1.0, no binary),
so this takes the binary from the last tritonclient wheels that shipped it (2.41.0, `tritonclient.data/bin`)
with its two shared libraries: libb64 (Debian's libb64-0d, by `apt-get download`) and libcudart (PyPI's
nvidia-cuda-runtime-cu12; loaded, not used: no GPU is needed). They go to a cache folder, once.

    python bench/perf_analyzer.py [--concurrency 1,2,4,8,16,32] [--model mnist-final-cond] [--markdown]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

if not __package__:  # `python bench/perf_analyzer.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.harness import int_list, parse_env, render, running_service

TRITONCLIENT = "tritonclient==2.41.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latent-cnf" / "perf_analyzer"
SERVICE_ENV = {"LATENT_CNF_MAX_WAIT_MS": "2", "LATENT_CNF_MAX_QUEUE": "1024"}  # as bench/service.py


def install(cache: Path) -> Path:
    """The perf_analyzer binary and its libraries in `cache` (downloaded on first use); returns the binary."""
    binary = cache / "bin" / "perf_analyzer"
    if binary.exists():
        return binary
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", downloads]
    subprocess.run([*pip, TRITONCLIENT, "nvidia-cuda-runtime-cu12"], check=True)
    subprocess.run(["apt-get", "download", "libb64-0d"], cwd=downloads, check=True)
    (cache / "bin").mkdir(exist_ok=True)
    (cache / "lib").mkdir(exist_ok=True)
    for wheel in downloads.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith("/bin/perf_analyzer"):
                    binary.write_bytes(archive.read(name))
                elif name.endswith("/libcudart.so.12"):
                    (cache / "lib" / "libcudart.so.12").write_bytes(archive.read(name))
    deb = next(downloads.glob("libb64-0d_*.deb"))
    with tempfile.TemporaryDirectory() as unpacked:
        subprocess.run(["dpkg", "-x", deb, unpacked], check=True)
        library = next(Path(unpacked).rglob("libb64.so.0d"))
        (cache / "lib" / library.name).write_bytes(library.read_bytes())
    binary.chmod(0o755)
    return binary


def input_data(path: Path, requests: int = 16) -> Path:
    """perf_analyzer's --input-data: one sample per request, each with its own seed and label."""
    steps = [{"N": [1], "LABEL": [i % 10], "SEED": [i], "TEMPERATURE": [1.0]} for i in range(requests)]
    path.write_text(json.dumps({"data": steps}))
    return path


def measure(
    binary: Path, url: str, model: str, concurrency: int, data: Path, folder: Path, stability: float
) -> dict[str, str]:
    """One perf_analyzer run at `concurrency`: its CSV row (throughput, latency percentiles in usec)."""
    out = folder / f"c{concurrency}.csv"
    command = [
        binary, "-m", model, "-u", url.removeprefix("http://"), "-i", "http",
        "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", data,
        "--measurement-interval", "3000", "--stability-percentage", str(stability), "-f", out,
    ]  # fmt: skip
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent.parent / "lib")}
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
    with out.open() as rows:
        return next(csv.DictReader(rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--model", default="mnist-final-cond", help="served checkpoint; its .generate is measured")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="a service setting")
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the binary is kept (default: %(default)s)")
    parser.add_argument(
        "--stability-percentage",
        type=float,
        default=10.0,
        help="perf_analyzer's: the spread of the last three windows it accepts as a measurement (default: "
        "%(default)s, its own; the tests' smoke run on a busy machine takes any)",
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    binary = install(args.cache)
    env = {"LATENT_CNF_MODELS": args.model, **SERVICE_ENV, **parse_env(args.env)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, running_service(env, ["--log-level", "warning"]) as server:
        data = input_data(Path(tmp) / "input.json")
        for concurrency in args.concurrency:
            row = measure(
                binary, server.url, f"{args.model}.generate", concurrency, data, Path(tmp), args.stability_percentage
            )
            ms = [float(row[f"p{p} latency"]) / 1000 for p in (50, 90, 95, 99)]
            rows.append([concurrency, f"{float(row['Inferences/Second']):,.1f}", *(f"{v:,.1f}" for v in ms)])
    columns = ["concurrency", "infer/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms"]
    print(render(f"perf_analyzer, {args.model}.generate, N = 1, HTTP", columns, rows, args.markdown))


if __name__ == "__main__":
    main()
