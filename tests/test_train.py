import dataclasses
import json

import pytest
import torch

from latent_cnf import LatentCNF, SolverConfig, model_folder
from latent_cnf.images import BINARIZE_THRESHOLD, binarize_at_threshold
from train.__main__ import main
from train.loop import RunOptions, Trainer
from train.objectives import OBJECTIVES
from train.presets import PRESETS
from train.resume_state import LEGACY_STATE_FILE, STATE_FILE

from .conftest import run_offline


def options(tiny_dataset, out, preset="final-cond", run=None, **train_overrides) -> RunOptions:
    """Small run options; `run` overrides RunOptions fields, the keywords TrainConfig fields."""
    base = PRESETS[preset]
    train = dataclasses.replace(
        base.train, batch_size=16, epochs=2, train_solver=SolverConfig(method="rk4", steps=2), **train_overrides
    )
    small = dataclasses.replace(base, train=train)
    small_run = {
        "val_images": 8,
        "val_importance_samples": 2,
        "reference_images": 8,
        "reference_importance_samples": 2,
        "eval_solver": SolverConfig(method="rk4", steps=2),
    }
    return RunOptions(preset=small, data_dir=tiny_dataset, out=out, **(small_run | (run or {})))


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains(tiny_dataset, tmp_path, preset):
    disc = {"disc_channels": 4} if PRESETS[preset].train.adversarial else {}
    opts = options(tiny_dataset, tmp_path / preset, preset, run={"max_steps": 3}, **disc)
    metrics = Trainer(opts).run()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    training = model_folder.read_training(tmp_path / preset / "checkpoint")
    reference = model_folder.read_serving(tmp_path / preset / "checkpoint")["score_reference"]
    assert training["steps"] == 3 and training["preset"] == preset
    assert len(reference["log_likelihood_quantiles"]) == 101 and (reference["split"], reference["images"]) == (
        "mnist test",
        8,
    )
    loaded = model_folder.load(tmp_path / preset / "checkpoint")
    assert loaded.config == PRESETS[preset].model


def test_an_epoch_export_is_servable_as_is(tiny_dataset, tmp_path, monkeypatch):
    """A run stopped before its final export leaves a folder with a score reference: its validation bounds, of
    the validation images binarized as /score binarizes them."""
    trainer = Trainer(options(tiny_dataset, tmp_path / "run", run={"max_steps": 4}))

    def stopped() -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "test_score_reference", stopped)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    folder = tmp_path / "run" / "checkpoint"
    reference = model_folder.read_serving(folder)["score_reference"]
    assert (reference["split"], reference["images"]) == ("mnist val", len(trainer.val_x))
    assert reference["importance_samples"] == trainer.options.val_importance_samples
    assert reference["binarization"] == f"threshold {BINARIZE_THRESHOLD:g}"
    served, _, _ = trainer.score_rows(binarize_at_threshold(trainer.val_grey), trainer.options.val_importance_samples)
    assert reference["log_likelihood_quantiles"][0] == round(served.min().item(), 3)
    assert len(reference["log_likelihood_quantiles"]) == 101
    assert model_folder.load(folder).config == trainer.model.config


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = options(tiny_dataset, tmp_path / "straight", disc_channels=4)
    Trainer(straight).run()
    first = options(tiny_dataset, tmp_path / "split", run={"max_steps": 4}, disc_channels=4)  # one epoch of 64 at 16
    Trainer(first).run()
    second = options(tiny_dataset, tmp_path / "split", run={"resume": True}, disc_channels=4)
    Trainer(second).run()
    assert len(losses(tmp_path / "straight")) == 2
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")
    sessions = model_folder.read_training(tmp_path / "split" / "checkpoint")["sessions"]
    assert [s["from_step"] for s in sessions] == [0, 4]  # training.json records every invocation of a resumed run


def test_resume_refuses_a_state_of_the_old_format(tiny_dataset, tmp_path):
    """A run begun before the safetensors state is not restarted at step 0 over its export: it is refused by name."""
    (tmp_path / LEGACY_STATE_FILE).write_bytes(b"a pickle")
    with pytest.raises(SystemExit, match=f"{LEGACY_STATE_FILE}.*old format.*new run.*commit"):
        Trainer(options(tiny_dataset, tmp_path, run={"resume": True})).run()
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "metrics.jsonl").exists()


def test_resume_with_other_networks_names_the_flags(tiny_dataset, tmp_path):
    Trainer(options(tiny_dataset, tmp_path, run={"max_steps": 1})).run()
    second = options(tiny_dataset, tmp_path, run={"resume": True})
    second = dataclasses.replace(
        second,
        preset=dataclasses.replace(
            second.preset, model=dataclasses.replace(second.preset.model, decoder_hidden=(16, 16))
        ),
    )
    with pytest.raises(SystemExit, match="--model-set"):
        Trainer(second).run()


def test_cosine_schedule_runs_from_lr_to_lr_final(tiny_dataset, tmp_path):
    trainer = Trainer(options(tiny_dataset, tmp_path, "large", lr=1e-3, lr_final=1e-5))
    total = trainer.cfg.epochs * trainer.steps_per_epoch
    assert trainer.learning_rate(0) == pytest.approx(1e-3)
    assert trainer.learning_rate(total // 2) == pytest.approx((1e-3 + 1e-5) / 2)
    assert trainer.learning_rate(total) == pytest.approx(1e-5)
    trainer.total_steps = 3
    trainer.run()
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["lr"]
    assert logged == pytest.approx(trainer.learning_rate(2))


def test_training_solver_refines_while_it_is_far_from_the_exact_density(tiny_dataset, tmp_path):
    exact = SolverConfig(method="dopri5", rtol=1e-7, atol=1e-7)
    run = {"eval_solver": exact, "max_steps": 4}  # one epoch: one validation, one refinement
    trainer = Trainer(options(tiny_dataset, tmp_path, "vae-cnf-prior", run=run, max_solver_gap_nats=1e-9))
    metrics = trainer.run()
    assert metrics["val_solver_gap_nats"] > 0 and metrics["train_solver_steps"] == 2
    assert trainer.train_solver_steps == 4 and trainer.cfg.train_solver.steps == 2  # the config stays as given
    training = model_folder.read_training(tmp_path / "checkpoint")
    assert training["train_config"]["train_solver"]["steps"] == 2  # training.json records it as given too
    resumed = options(
        tiny_dataset, tmp_path, "vae-cnf-prior", run={"resume": True, "max_steps": 5}, max_solver_gap_nats=1e-9
    )
    again = Trainer(resumed)
    again.load_state(tmp_path / STATE_FILE)
    assert again.train_solver_steps == 4  # the refined solver survives a resume
    loose = Trainer(options(tiny_dataset, tmp_path / "loose", "vae-cnf-prior", max_solver_gap_nats=1e3))
    loose.adapt_train_solver(*loose.solver_gaps())
    assert loose.train_solver_steps == 2  # the floor (8 steps) is above half of 2


def test_training_solver_coarsens_when_half_the_steps_stay_close(tiny_dataset, tmp_path):
    run = {"eval_solver": SolverConfig(method="dopri5", rtol=1e-7, atol=1e-7)}
    trainer = Trainer(
        options(tiny_dataset, tmp_path, "vae-cnf-prior", run=run, max_solver_gap_nats=1.0, min_train_steps_per_solve=1)
    )
    gap, half_gap = trainer.solver_gaps()
    assert 0 < gap < half_gap  # coarser steps are further from the exact density
    trainer.adapt_train_solver(gap=0.9, half_gap=0.3)  # within the limit, but half is not within a quarter
    assert trainer.train_solver_steps == 2
    trainer.adapt_train_solver(gap=0.1, half_gap=0.2)
    assert trainer.train_solver_steps == 1
    trainer.adapt_train_solver(gap=1.5, half_gap=None)
    assert trainer.train_solver_steps == 2


def test_cli_lists_presets(capsys):
    main(["--list-presets"])
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_cli_set_overrides(tiny_dataset, tmp_path):
    main(
        [
            "--preset", "vae-cnf-prior", "--data-dir", str(tiny_dataset), "--out", str(tmp_path / "run"),
            "--max-steps", "2", "--batch-size", "16", "--set", "kl_warmup_steps=5", "--val-images", "4",
            "--model-set", "decoder_hidden=[48,24]", "--model-set", "cnf_width=16",
        ]
    )  # fmt: skip
    training = model_folder.read_training(tmp_path / "run" / "checkpoint")
    config = model_folder.read_config(tmp_path / "run" / "checkpoint")
    assert training["train_config"]["kl_warmup_steps"] == 5 and training["train_config"]["batch_size"] == 16
    assert config["decoder_hidden"] == [48, 24] and config["cnf_width"] == 16
    assert "--set kl_warmup_steps=5" in training["command"]
    model = model_folder.load(tmp_path / "run" / "checkpoint")
    assert model.config.decoder_hidden == (48, 24) and model.decoder.net[0].out_features == 48


def test_cli_rejects_unknown_override_fields(tiny_dataset, tmp_path):
    with pytest.raises(SystemExit, match="--model-set 'hidden=3'"):
        main(["--data-dir", str(tiny_dataset), "--out", str(tmp_path), "--model-set", "hidden=3"])


def test_kinetic_term_adds_the_weighted_energy_and_logs_it():
    torch.manual_seed(0)
    preset = PRESETS["vae-cnf-prior"]
    model = LatentCNF(preset.model)
    x, labels = torch.rand(6, 784), torch.arange(6)
    losses, logged = [], []
    for weight in (0.0, 0.5):
        cfg = dataclasses.replace(preset.train, kinetic_weight=weight, train_solver=SolverConfig("rk4", steps=4))
        torch.manual_seed(1)
        out = OBJECTIVES[cfg.objective](model, x, labels, cfg, cfg.train_solver, step=0)
        losses.append(out.loss.item())
        logged.append(out.terms.get("kinetic"))
    assert logged[0] is None and logged[1] > 0
    assert losses[1] == pytest.approx(losses[0] + 0.5 * logged[1], rel=1e-5)


def test_cli_says_where_the_run_goes(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "--preset", "vae-cnf-prior", "--data-dir", str(tiny_dataset), "--out", str(out), "--max-steps", "1",
            "--batch-size", "16", "--val-images", "4", "--reference-images", "4",
        ]
    )  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"run folder: {out.resolve()}"
    assert lines[-1] == f"run folder: {out.resolve()}, checkpoint: {(out / 'checkpoint').resolve()}"
    assert (out / "metrics.jsonl").exists() and (out / "checkpoint" / model_folder.WEIGHTS_FILE).exists()


def test_cli_missing_data_is_one_line_without_traceback(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    result = run_offline("train", "--preset", "final", "--data-dir", str(empty), "--out", str(tmp_path / "run"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: mnist/train-images-idx3-ubyte is missing") and str(empty / "mnist") in line
    assert not (empty / "mnist").exists() and not (tmp_path / "run").exists()
