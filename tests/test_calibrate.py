"""python -m train.calibrate on a small model, and the calibrated solvers every shipped model carries."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import latent_cnf
from latent_cnf import LatentCNF, SolverConfig, data, model_folder, save_pretrained
from train import calibrate
from train.evaluate import TEST_STREAM, binarized, seeds
from train.presets import PRESETS

from .conftest import shipped_models

TINY = ["--samples", "40", "--reference-images", "64", "--score-images", "4", "--importance-samples", "2"]
TINY += ["--heldout-samples", "60", "--heldout-score-images", "6"]


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
    """Candidate rows named as str(SolverConfig) names them ("rk4 x 4", "dopri5 1e-05"), one error "a"."""
    return [{"solver": n, "nfe": nfe, "a": a, "spec": spec(n)} for n, nfe, a in specs]


def spec(name: str) -> dict:
    method, setting = name.split(" ", 1)
    if method == "dopri5":
        return {"method": method, "rtol": float(setting), "atol": float(setting)}
    return {"method": method, "steps": int(setting.removeprefix("x "))}


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


def test_a_candidate_that_fails_the_held_out_draw_gives_way_to_the_next_within_budget():
    candidates = rows(("euler x 2", 2, 0.5), ("midpoint x 4", 8, 0.1), ("rk4 x 4", 16, 0.01), ("rk4 x 8", 32, 0.001))
    heldout = {"midpoint x 4": 0.3, "rk4 x 4": 0.15, "rk4 x 8": 0.002}

    def measure(solver: SolverConfig) -> dict:
        return {"solver": str(solver), "nfe": 0, "a": heldout[str(solver)], "spec": {}}

    choice, tried = calibrate.confirmed(candidates, {"a": 0.2}, measure)
    assert choice["solver"] == "rk4 x 4"  # midpoint x 4 was within budget on the choice draw only
    assert [row["solver"] for row in tried] == ["midpoint x 4", "rk4 x 4"]
    with pytest.raises(SystemExit, match="held-out draw"):
        calibrate.confirmed(candidates, {"a": 0.001}, measure)  # rk4 x 8 is within it on the choice draw only


def test_the_held_out_draw_has_its_own_seed_and_the_next_test_images():
    choice, heldout = calibrate.draws(calibrate.CalibrateOptions(checkpoint="x"))
    assert (choice.seed, heldout.seed) == (calibrate.CHOICE_SEED, calibrate.HELDOUT_SEED)
    assert {choice.seed, heldout.seed}.isdisjoint({0, 1, 2, 3})  # training's seed, train.evaluate's
    assert heldout.first_image == choice.end_image and heldout.samples >= choice.samples
    with pytest.raises(SystemExit, match="must differ"):
        calibrate.draws(calibrate.CalibrateOptions(checkpoint="x", heldout_seed=calibrate.CHOICE_SEED))


def test_calibration_writes_solvers_the_loaded_model_uses(small_checkpoint, tiny_dataset, capsys):
    calibrate.main(["--checkpoint", str(small_checkpoint), "--data-dir", str(tiny_dataset), *TINY])
    solvers = model_folder.read_serving(small_checkpoint)["solvers"]
    sample, score = solvers["sample"], solvers["score"]
    assert sample["max_pixel_error"] <= 0.05 and sample["fid_change"] <= 0.005
    assert score["max_error_nats"] <= 0.02 and score["mean_error_nats"] <= score["max_error_nats"]
    assert sample["heldout"]["max_pixel_error"] <= 0.05 and sample["heldout"]["fid_change"] <= 0.005
    assert score["heldout"]["max_error_nats"] <= 0.02
    calibration = solvers["calibration"]
    assert calibration["choice"] == {"seed": 1000, "samples": 40, "test_images": [0, 4]}
    assert calibration["heldout"]["test_images"] == [4, 10] and calibration["heldout"]["samples"] == 60
    assert calibration["heldout_sampling"][-1]["solver"] == str(SolverConfig(sample["method"], steps=sample["steps"]))
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


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_checkpoint_holds_its_budgets_on_a_held_out_draw(name):
    solvers = model_folder.read_serving(name)["solvers"]
    budgets, calibration = solvers["calibration"]["budgets"], solvers["calibration"]
    sample_heldout, score_heldout = solvers["sample"]["heldout"], solvers["score"]["heldout"]
    assert sample_heldout["max_pixel_error"] <= budgets["max_pixel_error"]
    assert sample_heldout["fid_change"] <= budgets["fid_change"]
    assert score_heldout["max_error_nats"] <= budgets["max_score_error_nats"]
    choice, heldout = calibration["choice"], calibration["heldout"]
    assert heldout["seed"] != choice["seed"] and {heldout["seed"], choice["seed"]}.isdisjoint({0, 1, 2, 3})
    assert heldout["test_images"][0] >= choice["test_images"][1]  # other test images
    assert heldout["samples"] >= 10_000


FRESH_SEED = 1002  # neither calibration's draws (1000, 1001) nor training's (0) nor train.evaluate's (1, 2, 3)


@pytest.mark.parametrize("name", shipped_models(slow=("mnist-large",)))  # its reference solves are stiff, per sample
def test_the_calibrated_solvers_stay_within_budget_on_a_fresh_draw(name, data_dir):
    """Neither draw of the calibration: 64 samples of another seed, and 4 test images after the held-out ones (few:
    the reference solves per sample, in float64). The held-out rule (no error over budget in 10,000 samples and
    500 images) leaves room for these."""
    model = latent_cnf.load(name)
    solvers = model_folder.read_serving(name)["solvers"]
    budgets, heldout = solvers["calibration"]["budgets"], solvers["calibration"]["heldout"]
    z0, labels = model.draw_base(64, seed=FRESH_SEED)
    calibrated, reference = (
        model.sample_from(z0, labels, s).images[-1] for s in (model.sample_solver, calibrate.REFERENCE)
    )
    assert float((calibrated - reference).abs().max()) <= budgets["max_pixel_error"]
    first = heldout["test_images"][1]
    test = data.load_split(model_folder.read_training(name)["dataset"], "test", data_dir, download=False)
    x = binarized(test.images[first : first + 4])
    image_seeds = seeds(FRESH_SEED, TEST_STREAM, len(x))
    calibrated, reference = (
        model.score(x, k=16, solver=s, seed=image_seeds).log_likelihood
        for s in (model.score_solver, calibrate.REFERENCE)
    )
    assert float((calibrated - reference).abs().max()) <= budgets["max_score_error_nats"]
