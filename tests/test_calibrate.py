"""python -m train.calibrate on a small model, and the calibrated solvers every shipped model carries."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import latent_cnf
from latent_cnf import LatentCNF, SolverConfig, model_folder, save_pretrained
from train import calibrate
from train.presets import PRESETS

TINY = ["--samples", "40", "--reference-images", "64", "--score-images", "4", "--importance-samples", "2"]


@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LatentCNF(dataclasses.replace(PRESETS["final-cond"].model, encoder_hidden=(32,), decoder_hidden=(32,)))
    return save_pretrained(model, tmp_path / "small", {"dataset": "mnist"})


def test_candidates_cover_every_fixed_step_method_and_fall_back_to_dopri5():
    solvers = calibrate.candidates()
    assert {s.method for s in solvers} == {"euler", "midpoint", "rk4", "dopri5"}
    assert {s.steps for s in solvers if s.method == "rk4"} == set(calibrate.STEPS)
    assert [s.rtol for s in solvers if s.method == "dopri5"] == [1e-3, 1e-5]
    assert str(solvers[-1]) == "dopri5 1e-05"


def rows(*specs: tuple[str, int, float]) -> list[dict]:
    return [{"solver": n, "nfe": nfe, "a": a, "spec": {"method": n.split()[0]}} for n, nfe, a in specs]


def test_cheapest_takes_the_fewest_evaluations_within_budget_then_the_smallest_error():
    candidates = rows(("euler x 2", 2, 0.5), ("rk4 x 2", 8, 0.3), ("midpoint x 4", 8, 0.1), ("rk4 x 4", 16, 0.01))
    assert calibrate.cheapest(candidates, {"a": 0.2})["solver"] == "midpoint x 4"
    assert calibrate.cheapest(candidates, {"a": 0.4})["solver"] == "midpoint x 4"  # equal cost: the smaller error
    assert calibrate.cheapest(candidates, {"a": 0.05})["solver"] == "rk4 x 4"
    with pytest.raises(SystemExit, match="no candidate"):
        calibrate.cheapest(candidates, {"a": 0.001})


def test_dopri5_only_when_no_fixed_step_solver_is_within_budget():
    candidates = rows(("dopri5 1e-05", 40, 0.001), ("rk4 x 16", 64, 0.01), ("rk4 x 32", 128, 0.002))
    assert calibrate.cheapest(candidates, {"a": 0.02})["solver"] == "rk4 x 16"
    assert calibrate.cheapest(candidates, {"a": 0.0015})["solver"] == "dopri5 1e-05"


def test_calibration_writes_solvers_the_loaded_model_uses(small_checkpoint, tiny_dataset, capsys):
    calibrate.main(["--checkpoint", str(small_checkpoint), "--data-dir", str(tiny_dataset), *TINY])
    solvers = model_folder.read_serving(small_checkpoint)["solvers"]
    sample, score = solvers["sample"], solvers["score"]
    assert sample["max_pixel_error"] <= 0.05 and sample["fid_change"] <= 0.005
    assert score["max_error_nats"] <= 0.02 and score["mean_error_nats"] <= score["max_error_nats"]
    assert sample["method"] in ("euler", "midpoint", "rk4")  # a smooth, untrained flow
    within = [
        row
        for row in solvers["calibration"]["sampling"]
        if row["max_pixel_error"] <= 0.05 and row["fid_change"] <= 0.005
    ]
    assert sample["nfe"] == min(row["nfe"] for row in within)  # the cheapest within the budgets
    assert solvers["calibration"]["command"].startswith("python -m train.calibrate --checkpoint")
    assert len(solvers["calibration"]["scoring"]) == len(calibrate.candidates())
    assert "calibrated sample solver" in (small_checkpoint / model_folder.CARD_FILE).read_text()
    model = latent_cnf.load(small_checkpoint)
    assert model.sample_solver == SolverConfig(sample["method"], steps=sample["steps"])
    assert model.score_solver == SolverConfig(score["method"], steps=score["steps"])
    assert model.sample(3, seed=0).nfe == sample["nfe"]
    assert "wrote solvers to" in capsys.readouterr().out


def test_dry_run_leaves_the_folder_alone(small_checkpoint, tiny_dataset):
    before = model_folder.read_serving(small_checkpoint)
    calibrate.main(["--checkpoint", str(small_checkpoint), "--data-dir", str(tiny_dataset), *TINY, "--dry-run"])
    assert model_folder.read_serving(small_checkpoint) == before
    assert latent_cnf.load(small_checkpoint).score_solver == SolverConfig()  # uncalibrated: exact dopri5


@pytest.mark.parametrize("name", latent_cnf.available())
def test_every_shipped_checkpoint_is_calibrated_within_the_budgets(name):
    solvers = model_folder.read_serving(name)["solvers"]
    budgets = solvers["calibration"]["budgets"]
    assert solvers["sample"]["max_pixel_error"] <= budgets["max_pixel_error"] <= 0.05
    assert solvers["sample"]["fid_change"] <= budgets["fid_change"] <= 0.01
    assert solvers["score"]["max_error_nats"] <= budgets["max_score_error_nats"] <= 0.05
    model = latent_cnf.load(name)
    for use in ("sample", "score"):
        spec = {k: solvers[use][k] for k in ("method", "steps", "rtol", "atol")}
        assert getattr(model, f"{use}_solver") == SolverConfig(**spec)
