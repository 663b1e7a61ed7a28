"""Measures the constants of the service's cost model (service/cost.py) on this machine.

The service prices a call before it runs, in units of one latent row through one function evaluation:

    cost = nfe x (rows x row_units + EVALUATION_OVERHEAD_ROWS) + decoded x DECODER_EVALUATIONS

This times real model calls (sample and score, fixed-step solvers, over batch sizes and step counts) and
reads the constants off them (see `fit`): what one unit takes, the overhead rows of an evaluation, the units
of decoding a row. Then, with the fitted unit, it measures what an adaptive (dopri5) row-evaluation costs,
the constant behind HYPERNETWORK_PARAMETERS_PER_UNIT.
Printed: the fitted and the configured constants side by side, and per call the configured model's units
against the measured time (a good model keeps microseconds per unit flat across calls).

    python bench/cost_model.py [--models mnist-final-cond,mnist-large] [--batch-sizes 1,16,64,256,1024]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # `python bench/cost_model.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch

import latent_cnf
from bench.harness import fmt, int_list, machine, render, str_list
from latent_cnf import SolverConfig
from latent_cnf.device import resolve_device
from latent_cnf.model import LatentCNF
from service.cost import (
    DECODER_EVALUATIONS,
    EVALUATION_OVERHEAD_ROWS,
    HYPERNETWORK_PARAMETERS_PER_UNIT,
    WorkShape,
    row_evaluation_units,
)
from train.cli import parse

SCORE_SOLVER = SolverConfig("rk4", steps=8)  # fixed steps for the fit, whatever a model's calibrated scorer is


def seconds_per_call(call: Callable[[], int], min_time: float) -> tuple[float, int]:
    """Median seconds of a call after one warm-up, over at least `min_time` seconds (and 3 calls); its NFE."""
    nfe = call()
    times = []
    while sum(times) < min_time or len(times) < 3:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), nfe


def hypernetwork_parameters(model: LatentCNF) -> int:
    return sum(p.numel() for p in model.prior.parameters())


def measure(model: LatentCNF, kind: str, units: int, solver: SolverConfig, k: int, min_time: float) -> dict:
    """One timed call and its work shape as the service charges it: `units` samples, or `units` images scored
    with K = k."""
    row_units = row_evaluation_units(solver, hypernetwork_parameters(model))
    if kind == "sample":
        seconds, nfe = seconds_per_call(lambda: model.sample(units, seed=0, solver=solver).nfe, min_time)
        shape = WorkShape(rows=1, nfe=nfe, decoded=1, row_units=row_units)
    else:
        images = (torch.rand(units, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
        seconds, nfe = seconds_per_call(lambda: model.score(images, k=k, solver=solver).nfe, min_time)
        rows = k * model.config.score_classes  # + 1 row below: the density at the posterior mean
        shape = WorkShape(rows=rows + 1, nfe=nfe, decoded=rows, row_units=row_units)
    return {"kind": kind, "units": units, "solver": str(solver), "seconds": seconds, "shape": shape}


def fit(points: list[dict]) -> dict[str, float]:
    """The constants from sampling calls at two step counts per batch size n. The difference of their times is
    (nfe' - nfe) x (n + overhead) units, with no decoding in it: a straight line in n gives the unit (slope)
    and the overhead (intercept / slope). Decoding is then what a call's time leaves over its solve, per row
    (the median over calls)."""
    samples = [p for p in points if p["kind"] == "sample"]
    by_size: dict[int, list[dict]] = {}
    for p in samples:
        by_size.setdefault(p["units"], []).append(p)
    sizes, per_evaluation = [], []
    for n, pair in sorted(by_size.items()):
        low, high = sorted(pair, key=lambda p: p["shape"].nfe)[:: len(pair) - 1]
        sizes.append(n)
        per_evaluation.append((high["seconds"] - low["seconds"]) / (high["shape"].nfe - low["shape"].nfe))
    slope, intercept = np.polyfit(sizes, per_evaluation, 1)
    overhead = intercept / slope
    decoder = statistics.median(
        (p["seconds"] / slope - p["shape"].nfe * (p["units"] + overhead)) / p["units"] for p in samples
    )
    return {"unit_us": slope * 1e6, "overhead_rows": overhead, "decoder_units": decoder}


def adaptive_row_units(model: LatentCNF, fitted: dict[str, float], units: int, min_time: float) -> dict:
    """What one row through one dopri5 evaluation costs in fitted units (it computes every row's parameters)."""
    point = measure(model, "sample", units, SolverConfig("dopri5"), 0, min_time)
    shape, unit_s = point["shape"], fitted["unit_us"] / 1e6
    flow_units = point["seconds"] / unit_s - shape.nfe * fitted["overhead_rows"] - units * fitted["decoder_units"]
    return point | {"measured_row_units": flow_units / (units * shape.nfe)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=str_list, default=["mnist-final-cond"], help="comma-separated checkpoints")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 16, 64, 256, 1024], help="samples per call")
    parser.add_argument("--steps", type=int_list, default=[4, 16], help="two rk4 step counts")
    parser.add_argument("--score-images", type=int_list, default=[1, 4], help="images per scoring call")
    parser.add_argument("--importance-samples", type=int_list, default=[4, 64], help="K of the scoring calls")
    parser.add_argument("--adaptive-batch", type=int, default=256, help="samples per dopri5 call")
    parser.add_argument("--min-time", type=float, default=0.5, help="timed seconds per call shape")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for docs/)")
    args = parse(parser, argv)
    device = resolve_device(args.device)
    fitted_rows, point_rows, adaptive_rows, result = [], [], [], {"machine": machine(), "models": {}}
    with torch.inference_mode():
        for name in args.models:
            model = latent_cnf.load(name, device)
            points = [
                measure(model, "sample", n, SolverConfig("rk4", steps=steps), 0, args.min_time)
                for steps in args.steps
                for n in args.batch_sizes
            ] + [
                measure(model, "score", n, SCORE_SOLVER, k, args.min_time)
                for k in args.importance_samples
                for n in args.score_images
            ]
            fitted = fit(points)
            adaptive = adaptive_row_units(model, fitted, args.adaptive_batch, args.min_time)
            configured = row_evaluation_units(SolverConfig("dopri5"), hypernetwork_parameters(model))
            fitted_rows.append(
                [name, fmt(fitted["unit_us"], 4), fmt(fitted["overhead_rows"], 0), fmt(fitted["decoder_units"], 1)]
            )
            adaptive_rows.append(
                [name, hypernetwork_parameters(model), adaptive["shape"].nfe, fmt(adaptive["measured_row_units"], 1)]
                + [configured]
            )
            for p in points:
                units = p["shape"].cost(p["units"])
                point_rows.append([name, p["kind"], p["units"], p["solver"], units, fmt(p["seconds"] * 1e3, 2)])
                point_rows[-1].append(fmt(p["seconds"] * 1e6 / units, 4))
            result["models"][name] = {
                "fit": fitted,
                "adaptive_row_units": adaptive["measured_row_units"],
                "configured_adaptive_row_units": configured,
                "points": [p | {"shape": vars(p["shape"])} for p in points],
            }
    configured_row = ["service/cost.py", "-", EVALUATION_OVERHEAD_ROWS, DECODER_EVALUATIONS]
    print(f"{device}, {torch.get_num_threads()} torch threads, {machine()}\n")
    columns = ["model", "us per unit", "overhead rows per evaluation", "decoder units per row"]
    print(render("Fitted cost constants (fixed-step calls)", columns, [*fitted_rows, configured_row], args.markdown))
    columns = ["model", "hypernetwork parameters", "dopri5 NFE", "measured units", "charged units"]
    title = f"A dopri5 row-evaluation in fitted units (charged 1 + parameters / {HYPERNETWORK_PARAMETERS_PER_UNIT:,})"
    print(render(title, columns, adaptive_rows, args.markdown))
    columns = ["model", "call", "units", "solver", "charged units", "ms", "us per charged unit"]
    print(render("Each call: the service's charge against its time", columns, point_rows, args.markdown))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
