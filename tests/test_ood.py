"""Out-of-distribution flags: the rule of latent_cnf/ood.py, its calibration command, the generated non-digits,
and /score's in_distribution on blank images and on a real digit."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

import latent_cnf
from latent_cnf import LatentCNF, data, model_folder, ood, outlier, save_pretrained
from train import ood_calibrate, ood_set
from train.presets import PRESETS

from .service_helpers import png

ALL_NON_DIGITS_ACCEPTED = 0.05  # issue #14: at least 95 % of the generated non-digits flagged
TINY = ["--calibration-images", "16", "--test-images", "8", "--ood-per-category", "2", "--importance-samples", "2"]


def rgba_png(rgba: tuple[int, int, int, int], size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), rgba).save(buffer, format="PNG")
    return buffer.getvalue()


BLANKS = {
    "black.png": png(np.zeros((28, 28))),
    "white.png": png(np.full((28, 28), 255)),
    "grey.png": png(np.full((40, 30), 128)),
    "one-pixel.png": png(np.full((1, 1), 255)),
    "transparent.png": rgba_png((255, 255, 255, 0)),
}


def test_the_generated_non_digits_are_the_same_for_a_seed():
    first, again, other = (list(ood_set.generate(3, seed)) for seed in (0, 0, 1))
    assert first == again and first != other
    assert [c for c, _ in first] == [c for c in ood_set.CATEGORIES for _ in range(3)]
    assert not set("".join(ood_set.GLYPHS)) & ood_set.DIGIT_LIKE


def test_generated_blanks_have_no_ink_the_way_the_service_sees_them():
    blanks = [p for c, p in ood_set.generate(12) if c == "blank"]
    assert all(ood_calibrate.served_image(p).sum() == 0 for p in blanks)
    shapes = [p for c, p in ood_set.generate(2) if c not in ("blank", "noise")]
    assert all(ood_calibrate.served_image(p).sum() > 0 for p in shapes)


def values(**changes: float) -> dict[str, float]:
    return {"complexity_corrected_nats": 500.0, "reconstruction_nats": -60.0, "latent_log_density": -5.0} | {
        "ink_pixels": 100.0,
        **changes,
    }


def test_verdict_rejects_no_ink_always_and_any_signal_outside_its_bounds():
    limits = {"reconstruction_nats": {"min": -100.0}, "ink_pixels": {"min": 30.0, "max": 250.0}}
    assert ood.verdict(values(ink_pixels=0.0), None) == (False, ood.NO_INK)
    assert ood.verdict(values(), None) == (None, None)
    assert ood.verdict(values(), limits) == (True, None)
    assert ood.verdict(values(reconstruction_nats=-120.0), limits) == (False, "reconstruction_nats below -100")
    assert ood.verdict(values(ink_pixels=300.0), limits) == (False, "ink_pixels above 250")


def test_bounds_split_the_false_rejections_over_every_bound():
    index = torch.arange(1000, dtype=torch.float64)  # each signal's tails lie on other images: no overlap
    calibration = {name: (index - 100 * j) % 1000 for j, name in enumerate(ood.SIGNALS)}
    bounds = ood.bounds(calibration, false_rejection=0.06)  # 6 bounds: 1 % of the images each
    assert set(bounds) == set(ood.SIGNALS) and bounds["ink_pixels"]["max"] == pytest.approx(989.01)
    assert all(b["min"] == pytest.approx(9.99) for b in bounds.values())
    assert ood.accepted(calibration, bounds).sum() == 1000 - 6 * 10
    without_judge = {name: v for name, v in calibration.items() if name != "digit_logit"}
    assert ood.accepted(without_judge, bounds).sum() == 1000 - 5 * 10  # a missing signal's bound is skipped
    assert set(ood.bounds(without_judge, false_rejection=0.05)) == set(ood.SIGNALS) - {"digit_logit"}


def served_circle() -> torch.Tensor:
    return ood_calibrate.served_image(ood_set.png(ood_set.circles(np.random.default_rng(0), 0)))


def test_the_shipped_outlier_judge_tells_a_digit_from_a_blank_and_a_circle(data_dir):
    loaded = outlier.load()
    digits = data.load_split("mnist", "test", data_dir).images[:3]
    x = torch.stack([*(ood_calibrate.served_image(p) for p in ood_calibrate.digit_pngs(digits)), served_circle()])
    digit_logits, circle = outlier.digit_logit(loaded.judge, x).split([3, 1])
    blank = outlier.digit_logit(loaded.judge, torch.zeros(1, 28, 28))
    assert digit_logits.min() > 0 > max(blank.item(), circle.item())  # p(digit) above and below 1/2


def test_the_judge_is_used_only_with_the_weights_the_bounds_were_calibrated_with(monkeypatch):
    serving = model_folder.read_serving("mnist-final-cond")
    assert ood.serving_outlier_judge(serving) is outlier.shipped().judge
    assert ood.serving_outlier_judge({"ood_reference": {"outlier_judge": {"sha256": "0" * 64}}}) is None
    assert ood.serving_outlier_judge(model_folder.read_serving("fashion-mnist-final-cond")) is None
    monkeypatch.setattr(outlier, "shipped", lambda: None)  # the weights file missing
    assert ood.serving_outlier_judge(serving) is None


def test_assess_judges_scored_images_by_the_serving_bounds_and_judge(data_dir):
    """One call from a score to the verdicts: a digit in, a blank out (no ink) and a circle out (a bound), with
    the signals each was judged on; without calibrated bounds, only the blank gets a verdict."""
    model = latent_cnf.load("mnist-final-cond")
    digit = ood_calibrate.served_image(
        ood_calibrate.digit_pngs(data.load_split("mnist", "test", data_dir).images[:1])[0]
    )
    x = torch.stack([digit, torch.zeros(28, 28), served_circle()])
    scored = model.score(x, k=4)
    serving = model_folder.read_serving("mnist-final-cond")
    verdicts = ood.assess(serving, x, scored)
    assert [(a.in_distribution, a.reason == ood.NO_INK) for a in verdicts] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert verdicts[2].reason.split()[0] in ood.SIGNALS and set(verdicts[0].signals) == set(ood.SIGNALS)
    assert verdicts[1].signals["ink_pixels"] == 0 and verdicts[0].signals["ink_pixels"] == float(digit.sum())
    unbounded = ood.assess({}, x, scored)
    assert [a.in_distribution for a in unbounded] == [None, False, None] and "digit_logit" not in unbounded[0].signals


@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LatentCNF(dataclasses.replace(PRESETS["final-cond"].model, encoder_hidden=(32,), decoder_hidden=(32,)))
    return save_pretrained(model, tmp_path / "small", {"dataset": "mnist"})


def test_calibration_writes_the_bounds_and_rates_to_serving_json(small_checkpoint, tiny_dataset, capsys):
    ood_calibrate.main(["--checkpoint", str(small_checkpoint), "--data-dir", str(tiny_dataset), *TINY])
    reference = model_folder.read_serving(small_checkpoint)["ood_reference"]
    bounds = ood.serving_bounds({"ood_reference": reference})
    assert set(bounds) == set(ood.SIGNALS) and bounds["ink_pixels"]["min"] <= bounds["ink_pixels"]["max"]
    assert reference["outlier_judge"]["sha256"] == outlier.load().sha256
    validation = data.load_split("mnist", "val", tiny_dataset)
    assert reference["calibration_images"] == min(16, len(validation)) and reference["test_images"] == 8
    assert set(reference["ood_false_acceptance"]) == {*ood_set.CATEGORIES, "all"}
    assert reference["ood_false_acceptance"]["blank"] == 0
    assert all(0 <= share <= 1 for share in [reference["test_acceptance"], *reference["ood_false_acceptance"].values()])
    assert reference["command"].startswith("python -m train.ood_calibrate --checkpoint")
    assert "wrote ood_reference" in capsys.readouterr().out


@pytest.mark.parametrize(
    "name", ["mnist-final-cond", "mnist-final", "mnist-fm-cond", "fashion-mnist-final-cond", "fashion-mnist-fm-cond"]
)
def test_shipped_models_carry_bounds_meeting_the_acceptance_target(name):
    reference = model_folder.read_serving(name)["ood_reference"]
    assert reference["test_acceptance"] >= 0.97 and reference["ood_false_acceptance"]["blank"] == 0


@pytest.mark.parametrize("name", ["mnist-final-cond", "mnist-final"])
def test_mnist_models_flag_the_generated_non_digits_with_the_shipped_judge(name):
    reference = model_folder.read_serving(name)["ood_reference"]
    assert reference["outlier_judge"]["sha256"] == outlier.load().sha256 and reference["ood_seed"] == 0
    assert reference["ood_false_acceptance"]["all"] <= ALL_NON_DIGITS_ACCEPTED


def score(client, files: dict[str, bytes], model: str = "mnist-final-cond") -> list[dict]:
    response = client.post(
        "/score", files=[("file", (n, b)) for n, b in files.items()], data={"model": model, "importance_samples": 8}
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_blank_images_are_never_in_distribution_and_still_scored(client):
    for model in ("mnist-final-cond", "uncond"):  # calibrated, and a card without bounds
        for name in list(BLANKS)[:4], list(BLANKS)[4:]:
            for result in score(client, {n: BLANKS[n] for n in name}, model):
                assert result["in_distribution"] is False and result["ood_reason"] == "no_ink", result
                assert np.isfinite(result["log_likelihood_nats"]) and np.isfinite(result["complexity_corrected_nats"])


def test_a_test_digit_is_in_distribution_and_unknown_without_bounds(client, data_dir):
    digit = png(data.load_split("mnist", "test", data_dir).images[0].numpy())
    [result] = score(client, {"digit.png": digit})
    assert result["in_distribution"] is True and result["ood_reason"] is None
    [unknown] = score(client, {"digit.png": digit}, model="uncond")
    assert unknown["in_distribution"] is None and unknown["ood_reason"] is None


def test_the_judge_flags_a_circle_the_likelihood_bounds_pass_and_is_skipped_without_its_file(
    client, data_dir, monkeypatch
):
    files = {
        "digit.png": png(data.load_split("mnist", "test", data_dir).images[0].numpy()),
        "circle.png": ood_set.png(ood_set.circles(np.random.default_rng(0), 0)),  # clears them by > 2 nats
    }
    digit, circle = score(client, files)
    assert digit["in_distribution"] is True
    assert circle["in_distribution"] is False and circle["ood_reason"].startswith("digit_logit below")
    monkeypatch.setattr(outlier, "shipped", lambda: None)  # the weights file missing: /score still answers
    digit, circle = score(client, files)
    assert digit["in_distribution"] is True and circle["in_distribution"] is True
