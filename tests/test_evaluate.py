"""python -m train.evaluate end to end on an untrained model, and the pieces that make its numbers reproducible."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

import latent_cnf
from latent_cnf import LatentCNF, data, model_folder, save_pretrained
from latent_cnf.judges import load_classifier
from train import evaluate
from train import results as results_table
from train.metrics.features import embed
from train.presets import PRESETS

from .conftest import run_offline

TINY = ["--importance-samples", "20", "--num-samples", "50", "--test-images", "100", "--reference-images", "1000"]
TINY_OOD = ["--ood-images", "60", "--ood-importance-samples", "10"]
KEYS = {
    "test_nll_nats",
    "test_elbo_nats",
    "latent_nll_nats",
    "fid",
    "fid_reference",
    "precision",
    "recall",
    "label_accuracy",
    "reconstruction_accuracy",
    "ood_auroc",
    "sample_nfe_mean",
    "importance_samples",
    "num_samples",
    "test_images",
    "seconds",
    "checkpoint",
    "config_hash",
}


def untrained(preset: str, folder: Path, training: dict) -> LatentCNF:
    torch.manual_seed(0)
    model = LatentCNF(PRESETS[preset].model).eval()
    save_pretrained(model, folder, training)
    return model


def test_evaluate_end_to_end(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    training = {"dataset": "mnist", "preset": "final-cond", "epochs": 2.0, "wall_time_s": 150.0, "device": "cpu"}
    model = untrained("final-cond", tmp_path / "ck", training)
    out = tmp_path / "eval.json"
    argv = ["--checkpoint", str(tmp_path / "ck"), "--data-dir", str(data_dir), "--json", str(out), "--device", "cpu"]
    evaluate.main([*argv, *TINY, *TINY_OOD, "--temperatures", "0.5", "--seeds", "4", "5", "--record-in-folder"])
    results = json.loads(out.read_text())
    assert KEYS <= results.keys()
    recorded = json.loads((tmp_path / "ck" / model_folder.EVALUATION_FILE).read_text())
    assert all(recorded[key] == results[key] for key in evaluate.HEADLINE_FIELDS)
    assert recorded["command"].startswith("python -m train.evaluate --checkpoint") and recorded["date"]
    assert f"- test_nll_nats: {results['test_nll_nats']:.4f}" in (tmp_path / "ck" / model_folder.CARD_FILE).read_text()
    assert results["config_hash"] == model.config.hash()
    assert results["dataset"] == "mnist"
    sizes = ("importance_samples", "ood_importance_samples", "num_samples", "test_images", "ood_images")
    assert tuple(results[key] for key in sizes) == (20, 10, 50, 100, 60)  # K in all: 2 and 1 per label
    assert results["score_classes"] == 10 and results["seeds"] == [4, 5]
    assert (
        results["command"].startswith("python -m train.evaluate --checkpoint") and "--seeds 4 5" in results["command"]
    )
    assert results["training"] == training | {"command": None, "git_commit": None}
    for key in ("test_nll_nats", "test_elbo_nats", "latent_nll_nats", "sample_nfe_mean", "seconds"):
        assert math.isfinite(results[key])
    assert 0 < results["test_nll_nats"] <= results["test_elbo_nats"]  # the IWAE bound is tighter than the ELBO
    # log 1/C sum_y exp ELBO_y >= ELBO_true + log 1/C, image by image
    assert results["test_elbo_nats"] <= results["test_elbo_true_label_nats"]
    for key in ("test_nll_nats", "test_elbo_nats", "test_elbo_true_label_nats", "latent_nll_nats", "fid", "recall"):
        low, high = results[f"{key}_interval"]
        assert low <= results[key] <= high
    for key in ("fid", "precision", "recall", "label_accuracy", "sample_nfe_mean"):  # sample metrics: per seed
        assert len(results[f"{key}_per_seed"]) == 2
        assert results[key] == pytest.approx(sum(results[f"{key}_per_seed"]) / 2)
    assert results["fid"] >= 0 and results["fid_reference"] >= 0
    assert results["fid_reference"] < results["fid"]  # real test images beat an untrained model's samples
    assert 0 <= results["reconstruction_accuracy"] <= 1
    cold = results["by_temperature"]["0.5"]
    for key in ("precision", "recall", "label_accuracy"):
        assert 0 <= results[key] <= 1 and 0 <= cold[key] <= 1
    assert cold["fid"] != results["fid"]
    assert results["ood_auroc"].keys() == {"fashion-mnist", "noise"}
    for scores in results["ood_auroc"].values():
        assert scores.keys() == {
            "likelihood",
            "complexity_corrected",
            "likelihood_interval",
            "complexity_corrected_interval",
        }
        for name in ("likelihood", "complexity_corrected"):
            low, high = scores[f"{name}_interval"]
            assert 0 <= low <= scores[name] <= high <= 1
    assert "ood_auroc.noise.complexity_corrected" in capsys.readouterr().out
    results_table.main([str(out)])
    header, rule, line = capsys.readouterr().out.splitlines()
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|")) == rule.count("---")
    low, high = results["test_nll_nats_interval"]
    assert cells[0] == "ck" and cells[1] == f"{results['test_nll_nats']:.2f} ({low:.2f} .. {high:.2f})"
    assert cells[-3:] == ["20 (OOD 10) / 50 / 100", "4, 5", "2 ep., 2 min, cpu"]
    low, high = cold["label_accuracy_interval"]
    assert cells[7].endswith(f"; {cold['label_accuracy']:.3f} ({low:.3f} .. {high:.3f}) at T=0.5")


def test_likelihood_scores_do_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(0)
    model = LatentCNF(PRESETS["final-cond"].model).eval()
    images = (torch.rand(12, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    seeds = evaluate.seeds(0, evaluate.TEST_STREAM, len(images))
    whole = evaluate.score(model, images, 3, 12, seeds, "test")["log_likelihood"]
    chunked = evaluate.score(model, images, 3, 5, seeds, "test")["log_likelihood"]
    assert torch.allclose(whole, chunked, rtol=1e-4)


def test_conditional_samples_cover_every_label_equally() -> None:
    torch.manual_seed(0)
    model = LatentCNF(PRESETS["final-cond"].model).eval()
    images, labels, nfe = evaluate.generate(model, 20, batch_size=8, seed=0)
    assert images.shape == (20, 784)
    assert torch.bincount(labels).tolist() == [2] * 10
    assert nfe > 0


def test_unconditional_prior_has_no_labels() -> None:
    torch.manual_seed(0)
    model = LatentCNF(PRESETS["vae-cnf-prior"].model).eval()
    assert not model.prior.uses_labels
    assert evaluate.generate(model, 4, batch_size=4, seed=0)[1] is None


def test_binarization_is_fixed_and_independent_of_the_subset() -> None:
    images = torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    full = evaluate.binarized(images)
    assert torch.equal(full, evaluate.binarized(images))
    assert set(full.unique().tolist()) <= {0.0, 1.0}


def test_a_model_without_dataset_needs_the_option(tmp_path: Path) -> None:
    untrained("final-cond", tmp_path / "ck", {})
    with pytest.raises(SystemExit, match="--dataset"):
        evaluate.main(["--checkpoint", str(tmp_path / "ck"), "--device", "cpu", *TINY])


def test_reconstructions_of_a_trained_model_are_legible(data_dir: Path) -> None:
    """The judge reads the shipped model's reconstructions of test digits, and not an untrained model's."""
    test = data.load_split("mnist", "test", data_dir)
    images, labels = test.images[:200], test.labels[:200]
    judge = load_classifier("mnist")
    for model, low, high in (
        (latent_cnf.load("mnist-final-cond"), 0.8, 1.0),
        (LatentCNF(PRESETS["final-cond"].model), 0.0, 0.3),
    ):
        recon = evaluate.reconstructions(model.eval(), images, labels, batch_size=64)
        assert recon.shape == (200, 784) and 0 <= recon.min() and recon.max() <= 1
        _, predicted = embed(judge, recon, 100)
        assert low <= (predicted == labels).double().mean().item() <= high


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--checkpoint", "mnist-final"], "error: mnist/train-images-idx3-ubyte is missing"),
        (["--checkpoint", "no-such-model"], "error: no model folder 'no-such-model'"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], problem: str) -> None:
    result = run_offline("train.evaluate", *args, "--data-dir", str(tmp_path), "--json", str(tmp_path / "out.json"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(problem)
    assert not (tmp_path / "out.json").exists()


def test_the_printed_table_keeps_small_numbers_and_only_a_solvers_own_fields():
    from latent_cnf.config import DEFAULT_SOLVER, SolverConfig
    from train.evaluate import solver_record, table

    printed = table({"sample_solver": solver_record(DEFAULT_SOLVER), "nll": 94.24123, "gap": 0.00042})
    rows = dict(line.split() for line in printed.splitlines())
    assert rows["sample_solver.rtol"] == "1e-05" and "sample_solver.steps" not in rows  # dopri5 takes no steps
    assert rows["nll"] == "94.2412" and rows["gap"] == "0.00042"
    assert solver_record(SolverConfig("rk4", steps=2)) == {"method": "rk4", "steps": 2}


@pytest.mark.parametrize(
    "chosen, problem",
    [([], "one or more distinct"), ([1, 1], "one or more distinct"), ([0, 2], "[0]"), ([1234], "[1234]")],
)
def test_evaluation_seeds_are_new(chosen: list[int], problem: str) -> None:
    """No seed of the protocol's data, calibration or training, and no seed twice (it would shrink the interval)."""
    evaluate.check_seeds(evaluate.EVALUATION_SEEDS)
    with pytest.raises(SystemExit, match=re.escape(problem)):
        evaluate.check_seeds(chosen)


def test_k_counts_every_proposal_of_an_image() -> None:
    assert evaluate.per_label(160, 10) == 16 and evaluate.per_label(16, 1) == 16
    with pytest.raises(SystemExit, match="multiple of the model's 10 labels"):
        evaluate.per_label(16, 10)


def test_means_over_seeds_keep_the_values_and_a_t_interval() -> None:
    summary = evaluate.mean_over_seeds([{"fid": 1.0, "label_accuracy": None}, {"fid": 3.0, "label_accuracy": None}])
    assert summary["fid"] == 2.0 and summary["fid_per_seed"] == [1.0, 3.0] and summary["label_accuracy"] is None
    low, high = summary["fid_interval"]
    assert (low, high) == pytest.approx((2 - 12.7062047362, 2 + 12.7062047362))  # standard error 1, t(0.975, 1 df)
    assert evaluate.mean_and_interval("nll", [5.0]) == {"nll": 5.0}  # one value: no interval
