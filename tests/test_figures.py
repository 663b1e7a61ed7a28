"""python -m train.figures: each figure drawn from a small fixture shows exactly its input (curves, intervals,
legend, axes); the readers give the recorded numbers (the eight serving runs of docs/benchmarks.md, the
calibration of the shipped models, a collected set of train.evaluate results); PNGs redraw to the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_cnf import model_folder
from train import figures
from train.metrics.intervals import Interval
from train.plotting import save

from .conftest import REPO


def curves_of(ax) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """What each errorbar call drew: its label -> (x, y, the lengths of its error bars)."""
    drawn = {}
    for container in ax.containers:
        line, _, bars = container.lines
        spans = [float(np.ptp(segment[:, 1])) for segment in bars[0].get_segments()] if bars else []
        drawn[container.get_label()] = (list(line.get_xdata()), list(line.get_ydata()), spans)
    return drawn


def test_the_serving_figure_shows_each_server_with_its_intervals(tmp_path: Path) -> None:
    ours = [figures.Point(1, Interval(300.0, 290.0, 320.0, 8)), figures.Point(32, Interval(2000.0, 1900.0, 2100.0, 8))]
    peer = [figures.Point(32, Interval(600.0, 600.0, 600.0, 1))]
    throughput = {"ours": ours, "peer": peer}
    p99 = {
        "ours": [figures.Point(1, Interval(4.0, 3.0, 5.0, 8))],
        "peer": [figures.Point(32, Interval(90, 80, 100, 8))],
    }
    figure = figures.draw_serving(throughput, p99, runs=8)
    left, right = figure.axes
    assert curves_of(left) == {"ours": ([1, 32], [300.0, 2000.0], [30.0, 200.0]), "peer": ([32], [600.0], [0.0])}
    assert curves_of(right)["peer"] == ([32], [90], [20])
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["ours", "peer"]
    assert left.get_ylabel().startswith("requests / s") and "ms" in right.get_ylabel()
    assert left.get_xlabel() == "concurrent connections" and right.get_yscale() == "log"
    assert "mean of 8 runs, 95 % t-intervals" in figure.get_suptitle()
    first, second = save(figure, tmp_path / "a.png"), save(figure, tmp_path / "b.png")
    with Image.open(first) as png:
        assert png.format == "PNG" and png.size == (1100, 440)
    assert first.read_bytes() == second.read_bytes()  # no date or version in the file


def test_the_eight_serving_runs_read_as_docs_benchmarks_reports_them() -> None:
    throughput, p99 = figures.read_serving([REPO / path for path in figures.SERVING_RUNS])
    assert list(throughput) == list(figures.SERVERS.values())  # ours first, then the peers, as in the docs
    ours = {p.x: p.y for p in throughput["ours (python -m service)"]}
    assert sorted(ours) == [1, 32] and ours[32].n == 8
    values = [
        json.loads((REPO / path).read_text())["result"]["rows"] for path in figures.SERVING_RUNS
    ]  # the same numbers, read independently
    at_32 = [r["ok_per_s"] for rows in values for r in rows if (r["scenario"], r["concurrency"]) == ("generate-1", 32)]
    assert ours[32].mean == pytest.approx(sum(at_32) / 8)
    assert ours[32].low < ours[32].mean < ours[32].high
    assert {p.x for p in p99["naive server"]} == {1, 32}


def test_the_solver_figure_shows_error_and_fid_against_nfe_per_model_and_method() -> None:
    one = Interval(0.1, 0.1, 0.1, 1)
    errors = {("a", "rk4"): [figures.Point(16, one), figures.Point(8, Interval(0.5, 0.5, 0.5, 1))]}
    fid = {("a", "rk4"): [figures.Point(8, Interval(30.0, 29.0, 31.0, 3))], ("b", "dopri5"): [figures.Point(44, one)]}
    figure = figures.draw_solvers(errors, fid)
    left, right = figure.axes
    (x, y, spans), *_ = curves_of(left).values()
    assert (x, y) == ([8, 16], [0.5, 0.1])  # sorted by NFE
    assert [c.lines[0].get_xdata().tolist() for c in right.containers] == [[8], [44]]
    assert curves_of(right)[next(iter(curves_of(right)))][2] == [2.0]
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["a", "b", "rk4", "dopri5"]
    assert (left.get_xscale(), left.get_yscale()) == ("log", "log") and "nats" in left.get_ylabel()
    assert "NFE" in right.get_xlabel() and "FID" in right.get_ylabel()


def test_score_errors_are_the_shipped_calibrations() -> None:
    curves = figures.read_score_errors(["mnist-fm-cond"])
    rk4 = {p.x: p.y.mean for p in curves[("mnist-fm-cond", "rk4")]}
    scorer = model_folder.read_serving("mnist-fm-cond")["solvers"]["score"]
    assert (scorer["method"], scorer["steps"], scorer["nfe"]) == ("rk4", 4, 32)  # its calibrated scorer
    assert rk4[32] == pytest.approx(scorer["mean_error_nats"])
    assert {method for _, method in curves} == {"euler", "midpoint", "rk4", "dopri5"}


def evaluation(seed: int, solver: dict, fid: float, accuracy: float, temperatures: dict) -> dict:
    """The fields of a train.evaluate result that `collect` reads."""
    quality = {"fid": fid, "label_accuracy": accuracy, "sample_nfe_mean": 8.0}
    return {
        "checkpoint": "mnist-fm-cond",
        "seed": seed,
        "sample_solver": solver,
        "by_temperature": temperatures,
    } | quality


def test_collected_seeds_give_the_means_and_intervals_the_figures_draw(tmp_path: Path) -> None:
    rk4, dopri5 = {"method": "rk4", "steps": 2}, {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}
    cold = {"0.5": {"fid": 40.0, "label_accuracy": 1.0, "sample_nfe_mean": 30.0}}
    results = [evaluation(s, rk4, 28.0 + s, 0.96, {}) for s in (3, 1, 2)] + [
        evaluation(s, dopri5, 27.0, 0.95 + s / 100, cold) for s in (1, 2, 3)
    ]
    record = figures.collect(results, "the loop")
    assert record["command"] == "the loop"
    keys = [(r["checkpoint"], r["solver"], r["temperature"], r["seeds"]) for r in record["rows"]]
    assert keys == [
        ("mnist-fm-cond", "dopri5", 0.5, [1, 2, 3]),
        ("mnist-fm-cond", "dopri5", 1.0, [1, 2, 3]),
        ("mnist-fm-cond", "rk4 x 2", 1.0, [1, 2, 3]),
    ]
    rk4_row = record["rows"][2]
    assert rk4_row["fid"]["values"] == [29.0, 30.0, 31.0] and rk4_row["fid"]["mean"] == pytest.approx(30.0)
    assert rk4_row["fid"]["interval_95"] == pytest.approx(
        [30 - 4.302652729911275 / 3**0.5, 30 + 4.302652729911275 / 3**0.5]
    )
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(record))
    rows = figures.read_sample_quality(path)
    assert {(p.x, p.y.mean) for p in figures.fid_by_nfe(rows)[("mnist-fm-cond", "rk4")]} == {(8.0, 30.0)}
    accuracy, fid = figures.by_temperature(rows)
    assert [(p.x, p.y.mean) for p in accuracy["mnist-fm-cond"]] == [(0.5, 1.0), (1.0, pytest.approx(0.97))]
    assert [p.y.mean for p in fid["mnist-fm-cond"]] == [40.0, 27.0]


def test_the_temperature_figure_shows_accuracy_and_fid_per_model_with_the_target() -> None:
    accuracy = {
        "m": [figures.Point(0.5, Interval(0.99, 0.98, 1.0, 3)), figures.Point(1.0, Interval(0.96, 0.95, 0.97, 3))]
    }
    fid = {"m": [figures.Point(0.5, Interval(40.0, 39.0, 41.0, 3)), figures.Point(1.0, Interval(28.0, 27.0, 29.0, 3))]}
    figure = figures.draw_temperature(accuracy, fid)
    left, right = figure.axes
    assert curves_of(left)["m"][:2] == ([0.5, 1.0], [0.99, 0.96])
    assert curves_of(left)["m"][2] == pytest.approx([0.02, 0.02])
    assert curves_of(right)["m"][:2] == ([0.5, 1.0], [40.0, 28.0])
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["target 0.97", "m"]
    assert "temperature" in left.get_xlabel() and "label accuracy" in left.get_ylabel()


def test_the_command_draws_the_serving_figure_from_the_recorded_runs(tmp_path: Path) -> None:
    figures.main(["serving", "--out", str(tmp_path), "--runs", *[str(REPO / p) for p in figures.SERVING_RUNS]])
    with Image.open(tmp_path / "figure-serving.png") as png:
        assert png.size == (1100, 440)


def test_an_interval_is_students_t_over_the_values_and_a_single_run_has_none() -> None:
    from scipy import stats

    values = [0.9638, 0.9661, 0.9643]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    interval = Interval.of(values)
    assert (interval.low, interval.high, interval.n) == (pytest.approx(low), pytest.approx(high), 3)
    assert Interval.from_record(interval.record(values)) == interval
    assert Interval.of([5.0]) == Interval(5.0, 5.0, 5.0, 1)
