"""Does torch.compile pay for the fused fixed-step integrator? Eager against compiled, side by side in one run.

The fixed-step loop of latent_cnf/fixed_step.py (`integrate`) is wrapped in torch.compile (dynamic batch
size; on CUDA mode="reduce-overhead", which captures CUDA graphs) and timed against the eager loop for the
checkpoint's calibrated sampling and scoring solvers, at several batch sizes. Reported: the one-off compile
cost (first call per shape) and eager / compiled time per call (above 1 means compiling is faster).

    python bench/compile.py [--checkpoint mnist-final-cond] [--batch-sizes 1,64,256] [--threads 2] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # `python bench/compile.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import latent_cnf
from bench.harness import fmt, int_list, machine, render
from latent_cnf import fixed_step
from latent_cnf.device import resolve_device


def per_call(call: Callable[[], object], device: torch.device, min_time: float) -> float:
    """Seconds per call, averaged over at least `min_time` seconds after the call that was already made."""
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_time:
        call()
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / calls


def first_call(call: Callable[[], object], device: torch.device) -> float:
    started = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="mnist-final-cond")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 64, 256])
    parser.add_argument("--importance-samples", type=int, default=64, help="K of the scored images")
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument(
        "--backend", default="inductor", help="torch.compile backend (eager: dynamo's tracing alone, for a smoke run)"
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = latent_cnf.load(args.checkpoint, device)
    eager = fixed_step.integrate
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    compiled = torch.compile(
        eager, dynamic=True, mode=mode if args.backend == "inductor" else None, backend=args.backend
    )
    images = (torch.rand(max(args.batch_sizes), 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    calls = {
        f"sample ({model.sample_solver.method} x {model.sample_solver.steps})": lambda n: (
            lambda: model.sample(n, seed=0)
        ),
        f"score K={args.importance_samples} ({model.score_solver.method} x {model.score_solver.steps})": lambda n: (
            lambda: model.score(images[:n], k=args.importance_samples)
        ),
    }
    rows = []
    with torch.inference_mode():
        for name, make in calls.items():
            for n in args.batch_sizes if name.startswith("sample") else [b for b in args.batch_sizes if b <= 16]:
                call = make(n)
                fixed_step.integrate = eager
                first_call(call, device)
                eager_s = per_call(call, device, args.min_time)
                fixed_step.integrate = compiled
                compile_s = first_call(call, device)
                compiled_s = per_call(call, device, args.min_time)
                fixed_step.integrate = eager
                rows.append(
                    [
                        name,
                        n,
                        fmt(compile_s, 1),
                        fmt(eager_s * 1e3, 2),
                        fmt(compiled_s * 1e3, 2),
                        fmt(eager_s / compiled_s, 2),
                    ]
                )
    print(f"{args.checkpoint} on {device}, backend={args.backend}, mode={mode}, {machine()}")
    columns = ["call", "batch", "compile s (first call)", "eager ms", "compiled ms", "eager / compiled"]
    print(render("torch.compile of the fixed-step loop", columns, rows, args.markdown))


if __name__ == "__main__":
    main()
