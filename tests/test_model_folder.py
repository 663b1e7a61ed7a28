"""Model folders (latent_cnf/model_folder.py): round trips, the shipped models and judges, the old-format
converter, and the errors a broken folder gives."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

import latent_cnf
from latent_cnf import LatentCNF, ModelFolderError, SolverConfig, data, judges, model_folder, outlier
from latent_cnf.config import DEFAULT_SOLVER
from train.legacy_checkpoint import convert, main
from train.presets import PRESETS

GOLDEN = json.loads((Path(__file__).parent / "data" / "shipped_golden.json").read_text())
FAST = SolverConfig(method="rk4", steps=4)
REFERENCE = {
    "images": 3,
    "importance_samples": 2,
    "binarization": "threshold 0.5",
    "log_likelihood_quantiles": [-9, -1],
}
EVALUATION = {
    "dataset": "mnist",
    "test_nll_nats": 90.5,
    "fid": 30.25,
    "importance_samples": 16,
    "test_images": 1000,
    "num_samples": 10000,
    "sample_solver": {"method": "rk4", "steps": 2},
    "command": "python -m train.evaluate --checkpoint ck --record-in-folder",
    "date": "2026-12-01",
}


def tiny() -> LatentCNF:
    torch.manual_seed(0)
    m = LatentCNF(dataclasses.replace(PRESETS["final-cond"].model, cnf_width=8, cnf_hidden=8)).eval()
    m.sample_solver = FAST
    return m


def old_format_draws(model: LatentCNF, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base noise and labels `model.sample(n, seed=seed)` drew when the goldens were recorded (torch's
    generator, labels first), so that the goldens still pin the weights."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(model.config.num_classes, (n,), generator=generator) if model.prior.uses_labels else None
    return model.prior.base_sample(n, generator), labels


def front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / model_folder.CARD_FILE).read_text().split("---\n")[1])


@torch.no_grad()
def test_round_trip(tmp_path: Path) -> None:
    m = tiny()
    serving = {"solvers": {"sample": {"method": "euler", "steps": 3, "rtol": 1e-5, "atol": 1e-5}}}
    folder = model_folder.save_pretrained(m, tmp_path / "ck", {"dataset": "mnist"}, serving)
    loaded = model_folder.load(folder)
    assert loaded.config == m.config and not loaded.training
    assert loaded.sample_solver == SolverConfig(method="euler", steps=3)
    assert model_folder.read_training(folder) == {"dataset": "mnist"}
    torch.testing.assert_close(loaded.sample(4, seed=3, solver=FAST).images, m.sample(4, seed=3).images)
    assert front_matter(folder)["license"] == "mit"


@torch.no_grad()
def test_the_class_reads_and_writes_its_folder(tmp_path: Path) -> None:
    """LatentCNF.save_pretrained / from_pretrained are the folder's writer and reader, as in diffusers."""
    m = tiny()
    folder = m.save_pretrained(tmp_path / "ck", {"dataset": "mnist"})
    assert folder == tmp_path / "ck" and model_folder.read_training(folder) == {"dataset": "mnist"}
    loaded = LatentCNF.from_pretrained(folder)
    assert isinstance(loaded, LatentCNF) and loaded.config == m.config and not loaded.training
    for name, tensor in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    shipped = LatentCNF.from_pretrained("mnist-final-cond")
    assert shipped.sample_solver == latent_cnf.load("mnist-final-cond").sample_solver != DEFAULT_SOLVER


def test_solvers_are_serving_data_not_config(tmp_path: Path) -> None:
    """config.json holds what building the network needs; a folder without calibrated solvers loads with
    DEFAULT_SOLVER, whatever solver the saved model object had."""
    m = tiny()
    folder = model_folder.save_pretrained(m, tmp_path / "ck")
    assert "sample_solver" not in json.loads((folder / model_folder.CONFIG_FILE).read_text())
    assert model_folder.read_training(folder) == {}
    loaded = model_folder.load(folder)
    assert m.sample_solver == FAST and loaded.sample_solver == loaded.score_solver == DEFAULT_SOLVER


def test_solver_names() -> None:
    assert str(SolverConfig("rk4", steps=4)) == "rk4 x 4"
    assert str(DEFAULT_SOLVER) == "dopri5 1e-05"


def test_card_of_a_folder_alone(tmp_path: Path) -> None:
    """A folder outside the package: the snippet loads it by path, no dataset is made up, and the test
    metrics and provenance come from its own JSON files."""
    training = {"command": "python -m train --out x", "git_commit": "abc", "wall_time_s": 12.5, "device": "cpu"}
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", training)
    card = (folder / model_folder.CARD_FILE).read_text()
    assert 'latent_cnf.load("<path>")' in card and "dataset" not in card
    assert front_matter(folder)["training"] == training
    assert "model-index" not in front_matter(folder)
    model_folder.record_evaluation(folder, EVALUATION)
    results = front_matter(folder)["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["test"]
    assert {m["type"]: m["value"] for m in results[0]["metrics"]} == {"test_nll_nats": 90.5, "fid": 30.25}
    card = (folder / model_folder.CARD_FILE).read_text()
    assert "K = 16 importance samples, M = 1000 test images, N = 10000 generated samples, sampled by rk4 x 2" in card
    assert "- command: `python -m train.evaluate --checkpoint ck --record-in-folder`" in card
    model_folder.save_pretrained(tiny(), folder, training)  # new weights: the old numbers are not theirs
    assert not (folder / model_folder.EVALUATION_FILE).exists()
    assert "## Evaluation" not in (folder / model_folder.CARD_FILE).read_text()


@pytest.mark.parametrize(
    "fields",
    [
        {"solvers": {"sample": {"method": "heun", "steps": 2}}},
        {"solvers": {"score": {"method": "rk4", "steps": 0}}},
        {"solvers": ["rk4"]},
        {"score_reference": {"images": 3}},
    ],
)
def test_malformed_serving_fields_leave_the_folder_as_it_was(tmp_path: Path, fields: dict) -> None:
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", {"dataset": "mnist"}, {"score_reference": REFERENCE})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ModelFolderError):
        model_folder.update_serving(folder, fields)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_update_serving_merges_and_rewrites_the_card(tmp_path: Path) -> None:
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", {"dataset": "mnist"})
    assert model_folder.read_serving(folder) == {}
    weights = (folder / model_folder.WEIGHTS_FILE).read_bytes()
    model_folder.update_serving(folder, {"score_reference": REFERENCE})
    model_folder.update_serving(folder, {"ood_reference": {"bounds": {}}})
    assert model_folder.read_serving(folder) == {"score_reference": REFERENCE, "ood_reference": {"bounds": {}}}
    assert (folder / model_folder.WEIGHTS_FILE).read_bytes() == weights
    assert "the first 3 images of mnist test, K = 2 (threshold 0.5)" in (folder / model_folder.CARD_FILE).read_text()


def test_mismatched_config_is_refused(tmp_path: Path) -> None:
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", {})
    config = json.loads((folder / model_folder.CONFIG_FILE).read_text())
    (folder / model_folder.CONFIG_FILE).write_text(json.dumps(config | {"latent_dim": 4}))
    with pytest.raises(ModelFolderError, match="do not match the config"):
        model_folder.load(folder)


def test_bad_json_is_refused(tmp_path: Path) -> None:
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", {})
    (folder / model_folder.SERVING_FILE).write_text('{"solvers": ')
    with pytest.raises(ModelFolderError, match="serving.json: not a readable JSON file"):
        model_folder.load(folder)
    (folder / model_folder.CONFIG_FILE).write_text("[]")
    with pytest.raises(ModelFolderError, match="config.json: not a JSON object"):
        model_folder.load(folder)


def test_pickles_are_not_weights(tmp_path: Path) -> None:
    folder = model_folder.save_pretrained(tiny(), tmp_path / "ck", {})

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Payload()}, folder / model_folder.WEIGHTS_FILE)
    with pytest.raises(ModelFolderError, match="cannot read model.safetensors as safetensors"):
        model_folder.load(folder)


def test_unknown_name_lists_the_shipped_models() -> None:
    with pytest.raises(ModelFolderError, match=r"no model folder 'does-not-exist'.*mnist-final"):
        model_folder.load("does-not-exist")


@pytest.mark.parametrize("name", model_folder.available())
def test_shipped_models_hold_what_the_service_reads(name: str) -> None:
    quantiles = model_folder.read_serving(name)["score_reference"]["log_likelihood_quantiles"]
    assert len(quantiles) >= 2 and quantiles == sorted(quantiles)
    training = model_folder.read_training(name)
    assert training["steps"] > 0 and training["command"].startswith("python -m train")
    front = front_matter(model_folder.resolve(name))
    assert {r["dataset"]["split"] for r in front["model-index"][0]["results"]} == {"validation", "test"}
    assert front["training"]["command"] == training["command"] and front["training"]["git_commit"]
    assert f'latent_cnf.load("{name}")' in (model_folder.resolve(name) / model_folder.CARD_FILE).read_text()


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(GOLDEN["models"]))
def test_shipped_models_reproduce_their_old_format_outputs(name: str, data_dir: Path) -> None:
    """The values recorded from the old weights.pt checkpoints before conversion (tests/data), with the solvers
    they were recorded with (the calibrated defaults then: a recalibration changes the defaults, not the weights)."""
    torch.set_num_threads(1)
    golden, model = GOLDEN["models"][name], model_folder.load(name)
    sample_solver, score_solver = (SolverConfig(**golden["solvers"][use]) for use in ("sample", "score"))
    path = model.sample_from(*old_format_draws(model, 4, seed=0), solver=sample_solver)
    test = data.load_split("mnist", "test", data_dir)
    score = model.score((data.to_float(test.images[:2]) > 0.5).float(), k=4, seed=0, solver=score_solver)
    sums = path.images[-1].flatten(1).sum(1)
    torch.testing.assert_close(sums, torch.tensor(golden["sample_image_sums"]), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(path.latents[-1], torch.tensor(golden["sample_latents"]), atol=1e-4, rtol=1e-4)
    expected = torch.tensor(golden["score_log_likelihood"])
    torch.testing.assert_close(score.log_likelihood, expected, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "root"),
    [(name, model_folder.MODELS_DIR) for name in model_folder.available()]
    + [(name, model_folder.JUDGES_DIR) for name in model_folder.available(model_folder.JUDGES_DIR)],
)
def test_shipped_cards_say_what_their_json_files_hold(
    name: str, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shipped README.md is the card its JSON files give today (rewrite them with write_card)."""
    folder = model_folder.resolve(name, root)
    monkeypatch.setattr(model_folder, "MODELS_DIR", tmp_path)  # the copy stands where the shipped folders do
    copy = tmp_path / name
    copy.mkdir()
    files = (model_folder.CONFIG_FILE, model_folder.TRAINING_FILE, model_folder.SERVING_FILE)
    for file in (*files, model_folder.EVALUATION_FILE):
        if (folder / file).exists():
            (copy / file).write_text((folder / file).read_text())
    model_folder.write_card(copy)
    assert (folder / model_folder.CARD_FILE).read_text() == (copy / model_folder.CARD_FILE).read_text()


def test_shipped_judges_load() -> None:
    assert model_folder.available(model_folder.JUDGES_DIR) == [
        "fashion-mnist-classifier",
        "mnist-classifier",
        "mnist-outlier-judge",
    ]
    assert isinstance(judges.load_classifier("fashion-mnist"), judges.Classifier)
    assert outlier.load() is not None


def test_missing_classifier_names_the_training_command(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="python -m train.judge_classifier --dataset mnist"):
        judges.load_classifier("mnist", root=tmp_path)


def legacy_folder(folder: Path, model: LatentCNF) -> Path:
    """A checkpoint as the old code wrote it: a pickled state dict and one card with the old config keys."""
    folder.mkdir()
    torch.save(model.state_dict(), folder / "weights.pt")
    config = model.config.to_dict()
    config["encoder_conditional"] = config.pop("encoder_uses_labels")
    config["cnf_conditional"] = config.pop("prior_uses_labels")
    config["sample_solver"] = dataclasses.asdict(FAST)
    card = {"dataset": "mnist", "command": "python -m train", "config": config, "score_reference": REFERENCE}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@torch.no_grad()
def test_a_legacy_checkpoint_converts_to_the_same_model(tmp_path: Path) -> None:
    m = tiny()
    main([str(legacy_folder(tmp_path / "old", m)), str(tmp_path / "new")])
    loaded = model_folder.load(tmp_path / "new")
    assert loaded.config == m.config
    assert loaded.state_dict().keys() == m.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in m.state_dict().items())
    torch.testing.assert_close(loaded.sample(3, seed=1, solver=FAST).images, m.sample(3, seed=1).images, atol=0, rtol=0)
    assert model_folder.read_serving(tmp_path / "new") == {"score_reference": REFERENCE}
    training = model_folder.read_training(tmp_path / "new")
    assert training["dataset"] == "mnist" and training["converted_from"]["file"] == "weights.pt"
    assert "config" not in training and "score_reference" not in training


def test_a_legacy_judge_converts(tmp_path: Path) -> None:
    judge = judges.Classifier().eval()
    torch.save(judge.state_dict(), tmp_path / "mnist.pt")
    (tmp_path / "mnist.json").write_text(json.dumps({"dataset": "mnist", "test_accuracy": 0.5, "sha256": "x"}))
    convert(tmp_path / "mnist.pt", tmp_path / "judges" / "mnist-classifier")
    loaded = judges.load_classifier("mnist", root=tmp_path / "judges")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in judge.state_dict().items())
    training = model_folder.read_training("mnist-classifier", tmp_path / "judges")
    assert training["test_accuracy"] == 0.5 and training["converted_from"]["file"] == "mnist.pt"


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"dataset": "mnist"}, "no `config` object"),
        ({"config": {"latent_dim": 8, "colour": True}}, r"invalid config: unknown ModelConfig fields: \['colour'\]"),
        ({"config": [8, 32]}, "no `config` object"),
    ],
)
def test_converter_refuses_a_card_without_a_valid_config(tmp_path: Path, card: dict, message: str) -> None:
    folder = legacy_folder(tmp_path / "old", tiny())
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFolderError, match=message):
        convert(folder, tmp_path / "new")
    with pytest.raises(SystemExit, match=f"error: .*card.json: {message}"):
        main([str(folder), str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()


def test_converter_errors_end_with_a_message(tmp_path: Path) -> None:
    folder = legacy_folder(tmp_path / "old", tiny())
    (folder / "weights.pt").write_bytes(b"not a pickle")
    with pytest.raises(SystemExit, match="error: cannot read"):
        main([str(folder), str(tmp_path / "new")])
    with pytest.raises(SystemExit, match="neither a folder"):
        main([str(tmp_path / "card.txt"), str(tmp_path / "new")])


def test_judge_classifier_training_writes_a_loadable_judge(tiny_dataset: Path, tmp_path: Path) -> None:
    from train import judge_classifier

    out = tmp_path / "judges" / "mnist-classifier"
    judge_classifier.main(["--data-dir", str(tiny_dataset), "--epochs", "1", "--batch-size", "16", "--out", str(out)])
    judge = judges.load_classifier("mnist", root=tmp_path / "judges")
    assert isinstance(judge, judges.Classifier) and not judge.training
    training = model_folder.read_training("mnist-classifier", tmp_path / "judges")
    assert training["command"].startswith("python -m train.judge_classifier") and 0 <= training["test_accuracy"] <= 1
    assert front_matter(out)["model-index"][0]["results"][1]["metrics"][0]["type"] == "test_accuracy"
