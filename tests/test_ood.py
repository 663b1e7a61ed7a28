"""Out-of-distribution flags: the rule of latent_cnf/ood.py, its calibration command, the generated non-digits,
and /score's in_distribution on blank images and on a real digit."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from latent_cnf import PRESETS, LatentCNF, checkpoints, data, ood
from train import ood_calibrate, ood_set

from .service_helpers import png

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
    bounds = ood.bounds(calibration, false_rejection=0.05)  # 5 bounds: 1 % of the images each
    assert set(bounds) == set(ood.SIGNALS) and bounds["ink_pixels"]["max"] == pytest.approx(989.01)
    assert all(b["min"] == pytest.approx(9.99) for b in bounds.values())
    assert ood.accepted(calibration, bounds).sum() == 1000 - 5 * 10


@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = LatentCNF(dataclasses.replace(PRESETS["final-cond"].model, encoder_hidden=(32,), decoder_hidden=(32,)))
    return checkpoints.save(model, tmp_path / "small", {"dataset": "mnist"})


def test_calibration_writes_the_bounds_and_rates_to_the_card(small_checkpoint, tiny_dataset, capsys):
    ood_calibrate.main(["--checkpoint", str(small_checkpoint), "--data-dir", str(tiny_dataset), *TINY])
    reference = checkpoints.read_card(small_checkpoint)["ood_reference"]
    bounds = ood.card_bounds({"ood_reference": reference})
    assert set(bounds) == set(ood.SIGNALS) and bounds["ink_pixels"]["min"] <= bounds["ink_pixels"]["max"]
    validation = data.load_split("mnist", "val", tiny_dataset)
    assert reference["calibration_images"] == min(16, len(validation)) and reference["test_images"] == 8
    assert set(reference["ood_false_acceptance"]) == {*ood_set.CATEGORIES, "all"}
    assert reference["ood_false_acceptance"]["blank"] == 0
    assert all(0 <= share <= 1 for share in [reference["test_acceptance"], *reference["ood_false_acceptance"].values()])
    assert reference["command"].startswith("python -m train.ood_calibrate --checkpoint")
    assert "wrote ood_reference" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["mnist-final-cond", "mnist-final", "fashion-mnist-final-cond"])
def test_shipped_cards_carry_bounds_meeting_the_acceptance_target(name):
    reference = checkpoints.read_card(name)["ood_reference"]
    assert reference["test_acceptance"] >= 0.97 and reference["ood_false_acceptance"]["blank"] == 0


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
