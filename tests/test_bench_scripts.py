"""Every benchmark script runs end to end, as users run it (`python bench/NAME.py`), on tiny settings: a tidy
commit that breaks one fails here. Each run starts what the real run starts (the service, the naive server,
the LitServe peer, wrk, perf_analyzer) and prints its tables; the figures themselves are not judged.

Runs that need a tool from outside PyPI (wrk) skip without it, unless LATENT_CNF_BENCH_TOOLS=required (as
.ci/run sets, after installing them), when they fail instead."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
REQUIRED = os.environ.get("LATENT_CNF_BENCH_TOOLS") == "required"

# Modules the scripts import or start, not scripts of their own: each is run by the script named.
RUN_BY = {
    "__init__.py": None,
    "harness.py": "every script",
    "wrk_load.py": "service.py",
    "naive_server.py": "service.py",
    "litserve_peer.py": "service.py",
    "kserve_peer.py": "service.py",
}

# script -> (arguments, words its output must contain)
RUNS = {
    "model": (
        "--batch-sizes 1,4 --solvers 'calibrated,rk4 4 steps' --importance-samples 2 --min-time 0.01 --fid 20"
        " --fid-batch-size 10 --reference-images 50",
        ["sample(): samples/s by batch size", "PNGs only", "score(): images/s", "Quality: FID of 20 samples"],
    ),
    "completion": ("--images 3 --importance-samples 2 --k 2 --threads 1", ["mean_ess_mixture", "label_accuracy"]),
    "compile": ("--batch-sizes 1 --importance-samples 2 --min-time 0.01 --backend eager", ["eager / compiled"]),
    "cost_model": (
        "--batch-sizes 1,16 --steps 4,8 --score-images 1 --importance-samples 2 --adaptive-batch 2 --min-time 0",
        ["Fitted cost constants", "A dopri5 row-evaluation", "us per charged unit"],
    ),
    "memory": ("--bursts png-many --importance-samples 2 --settle 0", ["png-many", "200x16"]),
    "prior_step": ("--steps 1 --threads 1", ["ml_over_fm"]),
    "slow_clients": ("--connections 6 --processes 1 --hold 1 --probe-every 0.5", ["/healthz every 0.5 s"]),
    "train_step": ("--checkpoint mnist-final-cond --batch-size 4 --steps 1", ["without discriminator"]),
    "perf_analyzer": ("--concurrency 1 --stability-percentage 10000", ["infer/s"]),
    "service": (
        "--scenarios healthz,generate-1,naive-generate-1,peer-generate-1,kserve-generate-1,baseline-generate-1 "
        "--concurrency 1 --duration 0.5 --warmup 0.1 --timeout 20 --baseline .",  # this checkout as its own baseline
        [
            "/generate n=1 against the references",
            "peer-generate-1",
            "ours / KServe",
            "ours / baseline",
            "same call alone ms",
        ],
    ),
    "service --overload": ("--burst-seconds 1 --burst-concurrency 16 --queue 2 --timeout 20", ["Overload"]),
    "service --soak": ("0.05 --soak-concurrency 2 --timeout 20", ["Soak summary"]),
    "service --chaos": ("2 --chaos-normal 1 --chaos-heavy 1 --timeout 20", ["Chaos"]),
    "service --combine": (  # the runs behind docs/benchmarks.md's issue-29 table
        " ".join(f"docs/results/bench/service-2026-12-07-issue29-run{i}.json" for i in (1, 2, 3)),
        ["Targets over runs", "95 % interval"],
    ),
}
NEEDS = {"service": "wrk"}  # a tool from outside PyPI each needs (.ci/run installs it from Debian)


def run_script(name: str, data_dir: Path) -> str:
    script, *mode = name.split()
    arguments, _ = RUNS[name]
    command = [sys.executable, str(BENCH / f"{script}.py"), *mode, *shlex.split(arguments)]
    if script in ("model", "prior_step", "train_step", "completion"):
        command += ["--data-dir", str(data_dir)]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"LATENT_CNF_DATA": str(data_dir)},
    )
    assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_script_in_bench_has_a_smoke_run():
    """A new script gets a row in RUNS (or in RUN_BY, naming the script that runs it)."""
    scripts = {path.name for path in BENCH.glob("*.py")}
    covered = {f"{name.split()[0]}.py" for name in RUNS} | set(RUN_BY)
    assert scripts == covered, f"bench scripts without a smoke run: {sorted(scripts - covered)}"


@pytest.mark.parametrize("name", list(RUNS))
def test_bench_script_runs_end_to_end_on_tiny_settings(name, data_dir):
    tool = NEEDS.get(name.split()[0])
    if tool and not shutil.which(tool):
        if REQUIRED:
            pytest.fail(f"{name} needs {tool} (LATENT_CNF_BENCH_TOOLS=required): apt-get install {tool}")
        pytest.skip(f"{name} needs {tool}: apt-get install {tool}")
    stdout = run_script(name, data_dir)
    for words in RUNS[name][1]:
        assert words in stdout, f"{name}: {words!r} not in its output:\n{stdout[-3000:]}"


def test_gpu_script_is_valid_bash_and_its_commands_parse():
    """bench/gpu.sh runs only where a GPU is lent: here its syntax and its scripts' flags are checked."""
    text = (BENCH / "gpu.sh").read_text()
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    from bench import model, service

    parsers = {"model": model.parse_args, "service": service.parse_args}
    joined = text.replace("\\\n", " ")
    calls = re.findall(r"python3 bench/(\w+)\.py ([^|\n]*)", joined)
    assert {script for script, _ in calls} >= set(parsers)
    for script, arguments in calls:
        if script in parsers:
            args = shlex.split(arguments.split("2>&1")[0].replace('"$out/', '"out/'))
            parsers[script](args)
