"""python -m train.figures: the figures of docs/, drawn from results recorded in the repo, so that a figure can be
redrawn without measuring again and always shows the numbers of the table beside it.

    python -m train.figures serving        # docs/benchmarks.md: throughput and p99 against concurrency
    python -m train.figures solvers        # docs/results.md: score error and FID against NFE, per model
    python -m train.figures temperature    # docs/results.md: label accuracy and FID against temperature
    python -m train.figures all
    python -m train.figures collect runs/eval/seeds/*.json --command '...' --json docs/results/sample-quality-seeds.json

`collect` turns train.evaluate's JSONs (one per checkpoint, solver and seed) into the means and 95 % t-intervals
over seeds that `solvers` and `temperature` draw. Reading and drawing are separate functions: the tests draw
from small fixtures and read the real records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator, ScalarFormatter

from latent_cnf import model_folder

from .metrics.intervals import Interval
from .plotting import COLOURS, error_bars, new_figure, save, styled

SERVING_RUNS = tuple(Path(f"docs/results/bench/service-2026-12-07-issue29-run{i}.json") for i in range(1, 9))
SAMPLE_QUALITY = Path("docs/results/sample-quality-seeds.json")
# bench/service.py's scenarios of POST /generate with n = 1, one per server, as docs/benchmarks.md names them
SERVERS = {
    "generate-1": "ours (python -m service)",
    "peer-generate-1": "LitServe peer",
    "kserve-generate-1": "KServe peer",
    "naive-generate-1": "naive server",
}
SOLVER_MODELS = ("mnist-final-cond", "mnist-fm-cond")  # the pair of priors (ML, flow matching) on one autoencoder
MARKERS = {"euler": "v", "midpoint": "s", "rk4": "o", "dopri5": "*"}
LABEL_ACCURACY_BAR = 0.97  # issue 19's target for samples drawn for a label

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Point:
    """One point of a curve: its x and the interval of its y over runs or seeds."""

    x: float
    y: Interval


Curves = Mapping[K, Sequence[Point]]


# Reading -------------------------------------------------------------------------------------------------------


def read_serving(paths: Sequence[Path]) -> tuple[dict[str, list[Point]], dict[str, list[Point]]]:
    """Per server: requests/s and p99 latency (ms) against concurrency, each over the runs that measured it."""
    measured: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for path in paths:
        for row in json.loads(path.read_text())["result"]["rows"]:
            if row["scenario"] in SERVERS:
                measured[(SERVERS[row["scenario"]], row["concurrency"])].append(row)
    throughput: dict[str, list[Point]] = defaultdict(list)
    p99: dict[str, list[Point]] = defaultdict(list)
    order = list(SERVERS.values())
    for (server, concurrency), rows in sorted(measured.items(), key=lambda item: (order.index(item[0][0]), item[0][1])):
        throughput[server].append(Point(concurrency, Interval.of([r["ok_per_s"] for r in rows])))
        p99[server].append(Point(concurrency, Interval.of([r["p99_ms"] for r in rows])))
    return dict(throughput), dict(p99)


def method_of(solver: str) -> str:
    """'rk4 x 2' -> 'rk4', 'dopri5 1e-05' -> 'dopri5': the series a solver's point belongs to."""
    return solver.split()[0]


def read_score_errors(checkpoints: Sequence[str]) -> dict[tuple[str, str], list[Point]]:
    """Per (model, method): the mean absolute error of the IWAE score against dopri5 at 1e-7 (nats) against NFE,
    from the calibration in each model folder's serving.json (one run: its points have no interval)."""
    curves: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for checkpoint in checkpoints:
        for row in model_folder.read_serving(checkpoint)["solvers"]["calibration"]["scoring"]:
            curves[(checkpoint, method_of(row["solver"]))].append(
                Point(row["nfe"], Interval.of([row["mean_error_nats"]]))
            )
    return dict(curves)


@dataclass(frozen=True)
class Quality:
    """Sample quality of one checkpoint, solver and temperature over evaluation seeds."""

    checkpoint: str
    solver: str
    temperature: float
    nfe: float
    fid: Interval
    label_accuracy: Interval


def read_sample_quality(path: Path) -> list[Quality]:
    """The rows of a `collect`ed JSON."""
    return [
        Quality(
            r["checkpoint"],
            r["solver"],
            r["temperature"],
            r["nfe_mean"],
            Interval.from_record(r["fid"]),
            Interval.from_record(r["label_accuracy"]),
        )
        for r in json.loads(path.read_text())["rows"]
    ]


def fid_by_nfe(rows: Sequence[Quality]) -> dict[tuple[str, str], list[Point]]:
    """Per (model, method): FID against NFE, at temperature 1."""
    curves: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for row in rows:
        if row.temperature == 1.0:
            curves[(row.checkpoint, method_of(row.solver))].append(Point(row.nfe, row.fid))
    return dict(curves)


def by_temperature(
    rows: Sequence[Quality], solver: str = "dopri5"
) -> tuple[dict[str, list[Point]], dict[str, list[Point]]]:
    """Per model: label accuracy and FID against the sampling temperature, with `solver`."""
    accuracy: dict[str, list[Point]] = defaultdict(list)
    fid: dict[str, list[Point]] = defaultdict(list)
    for row in rows:
        if row.solver == solver:
            accuracy[row.checkpoint].append(Point(row.temperature, row.label_accuracy))
            fid[row.checkpoint].append(Point(row.temperature, row.fid))
    return dict(accuracy), dict(fid)


def solver_name(record: dict) -> str:
    """train.evaluate's sample_solver as the calibration names solvers: 'rk4 x 2', or 'dopri5' (the protocol's)."""
    return "dopri5" if record["method"] == "dopri5" else f"{record['method']} x {record['steps']}"


def collect(results: Sequence[dict], command: str) -> dict:
    """train.evaluate results (one per checkpoint, solver and seed) as means and intervals over seeds, per
    checkpoint, solver and temperature (temperature 1 and each of --temperatures)."""
    groups: dict[tuple[str, str, float], list[tuple[int, dict]]] = defaultdict(list)
    for result in results:
        key = (model_folder.display_name(result["checkpoint"]), solver_name(result["sample_solver"]))
        groups[(*key, 1.0)].append((result["seed"], result))
        for temperature, quality in result["by_temperature"].items():
            groups[(*key, float(temperature))].append((result["seed"], quality))
    rows = []
    for (checkpoint, solver, temperature), runs in sorted(groups.items()):
        runs.sort(key=lambda run: run[0])
        row = {"checkpoint": checkpoint, "solver": solver, "temperature": temperature, "seeds": [s for s, _ in runs]}
        row["nfe_mean"] = Interval.of([q["sample_nfe_mean"] for _, q in runs]).mean
        for name in ("fid", "label_accuracy"):
            values = [q[name] for _, q in runs]
            row[name] = Interval.of(values).record(values)
        rows.append(row)
    return {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "rows": rows,
    }


# Drawing -------------------------------------------------------------------------------------------------------


def plot_curves(ax: Axes, curves: Curves[K], style: Callable[[K], dict]) -> None:
    """Each curve as its means joined by a line, with its intervals as error bars (none where a point has one run)."""
    for key, points in curves.items():
        ordered = sorted(points, key=lambda p: p.x)
        ys = [p.y for p in ordered]
        ax.errorbar([p.x for p in ordered], [y.mean for y in ys], yerr=error_bars(ys), capsize=3, **style(key))


def doubling_axis(ax: Axes) -> None:
    """A log-2 x axis labelled in plain numbers: concurrency and NFE come in doublings."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def colours_of(names: Sequence[str]) -> dict[str, str]:
    return {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(names)}


@styled
def draw_serving(throughput: Curves[str], p99: Curves[str], runs: int) -> Figure:
    """Throughput and p99 latency of POST /generate (n = 1) against concurrency, ours and the peers."""
    figure, (left, right) = new_figure(11, 4.4, columns=2)
    colour = colours_of(list(throughput))
    for ax, curves in ((left, throughput), (right, p99)):
        plot_curves(ax, curves, lambda server: {"label": server, "color": colour[server], "marker": "o"})
        doubling_axis(ax)
        ax.set_xticks(sorted({p.x for points in curves.values() for p in points}))
        ax.set_xlabel("concurrent connections")
    left.set(title="throughput", ylabel="requests / s (higher is better)")
    right.set(title="p99 latency", ylabel="p99 latency (ms, log; lower is better)", yscale="log")
    left.legend(loc="upper left")
    figure.suptitle(f"POST /generate, n = 1, 2 CPU cores: mean of {runs} runs, 95 % t-intervals")
    return figure


def solver_legend(ax: Axes, models: Sequence[str], methods: Sequence[str], colour: Mapping[str, str]) -> None:
    """One entry per model (its colour) and one per solver method (its marker)."""
    handles = [Line2D([], [], color=colour[m], label=m) for m in models]
    handles += [Line2D([], [], color="0.3", marker=MARKERS[m], linestyle="", label=m) for m in methods]
    ax.legend(handles=handles, loc="lower left")


@styled
def draw_solvers(score_errors: Curves[tuple[str, str]], fid: Curves[tuple[str, str]]) -> Figure:
    """Scoring error and FID against the function evaluations of the solver, per model and solver method."""
    figure, (left, right) = new_figure(11, 4.6, columns=2)
    models = list(dict.fromkeys(model for model, _ in [*score_errors, *fid]))
    colour = colours_of(models)

    def style(key: tuple[str, str]) -> dict:
        model, method = key
        return {"color": colour[model], "marker": MARKERS[method], "markersize": 9 if method == "dopri5" else 6}

    for ax, curves in ((left, score_errors), (right, fid)):
        plot_curves(ax, curves, style)
        doubling_axis(ax)
    left.set(yscale="log", xlabel="function evaluations per score (NFE)", title="scoring: error of the IWAE bound")
    left.set(ylabel="mean |score error| vs dopri5 1e-7 (nats)")
    right.set(xlabel="function evaluations per sample (NFE)", ylabel="FID (lower is better)")
    right.set(title="sampling: FID, N = 10,000 (temperature 1)")
    methods = [m for m in MARKERS if any(method == m for _, method in [*score_errors, *fid])]
    solver_legend(left, models, methods, colour)
    return figure


@styled
def draw_temperature(accuracy: Curves[str], fid: Curves[str], solver: str = "dopri5") -> Figure:
    """Label accuracy (and the FID it costs) against the sampling temperature, per label-conditioned model."""
    figure, (left, right) = new_figure(11, 4.4, columns=2)
    colour = colours_of(list(accuracy))

    def style(model: str) -> dict:
        return {"label": model, "color": colour[model], "marker": "o"}

    plot_curves(left, accuracy, style)
    left.axhline(LABEL_ACCURACY_BAR, color="0.4", linestyle="--", label=f"target {LABEL_ACCURACY_BAR:g}")
    left.set(
        xlabel="sampling temperature (base noise scale)", ylabel="label accuracy (judge reads the label asked for)"
    )
    left.set(title=f"label accuracy, {solver}")
    left.legend(loc="lower left")
    plot_curves(right, fid, style)
    right.set(xlabel="sampling temperature (base noise scale)", ylabel="FID (lower is better)", title="FID, N = 10,000")
    return figure


# Commands ------------------------------------------------------------------------------------------------------


def serving_figure(args: argparse.Namespace) -> Path:
    throughput, p99 = read_serving(args.runs)
    return save(draw_serving(throughput, p99, len(args.runs)), args.out / "figure-serving.png")


def solvers_figure(args: argparse.Namespace) -> Path:
    fid = fid_by_nfe(read_sample_quality(args.sample_quality))
    return save(draw_solvers(read_score_errors(SOLVER_MODELS), fid), args.out / "figure-solvers.png")


def temperature_figure(args: argparse.Namespace) -> Path:
    accuracy, fid = by_temperature(read_sample_quality(args.sample_quality))
    return save(draw_temperature(accuracy, fid), args.out / "figure-temperature.png")


FIGURES = {"serving": serving_figure, "solvers": solvers_figure, "temperature": temperature_figure}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="what", required=True)
    for name in (*FIGURES, "all"):
        figure = commands.add_parser(name, help="draw all figures" if name == "all" else f"draw the {name} figure")
        figure.add_argument("--out", type=Path, default=Path("docs/pictures"), help="folder for the PNGs (%(default)s)")
        figure.add_argument("--runs", type=Path, nargs="+", default=list(SERVING_RUNS), help="bench/service.py JSONs")
        figure.add_argument("--sample-quality", type=Path, default=SAMPLE_QUALITY, help="a `collect`ed JSON")
    gather = commands.add_parser("collect", help="train.evaluate JSONs -> means and intervals over seeds")
    gather.add_argument("files", type=Path, nargs="+", help="train.evaluate --json files")
    gather.add_argument("--command", required=True, help="the commands that made the files, recorded verbatim")
    gather.add_argument("--json", type=Path, required=True, help="output file")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.what == "collect":
        record = collect([json.loads(path.read_text()) for path in args.files], args.command)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
        return
    for name in FIGURES if args.what == "all" else [args.what]:
        print(f"wrote {FIGURES[name](args)}")


if __name__ == "__main__":
    main()
