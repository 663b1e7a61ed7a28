"""Completion maths (latent_cnf/completion.py): the acceptance measurement on 100 test digits, the weights, the
masks, and an image's completions alone or in a batch."""

from __future__ import annotations

import pytest
import torch

import latent_cnf
from bench.completion import Measurement, measure
from latent_cnf import data
from latent_cnf.completion import MASKS, check_mask, complete, named_mask
from latent_cnf.images import binarize_at_threshold

MODEL = "mnist-final-cond"


@pytest.fixture(scope="module")
def model() -> latent_cnf.LatentCNF:
    return latent_cnf.load(MODEL)


@pytest.fixture(scope="module")
def digits(data_dir) -> data.Split:
    return data.load_split("mnist", "test", data_dir, download=False).subset(torch.arange(100))


@pytest.fixture(scope="module")
def measured(model, digits) -> Measurement:
    """The top half of 100 test digits observed, K = 16 per label, 8 completions each (a few seconds)."""
    return measure(model, digits, "top", importance_samples=16, k=8)


def test_completions_predict_the_hidden_half_better_than_unconditional_samples(measured):
    """Measured (bench/completion.py): -0.26 nats per hidden pixel against -0.76, better for 98 of 100 digits."""
    summary = measured.summary()
    assert summary["images"] == 100
    gain = summary["completed_nats_per_hidden_pixel"] - summary["unconditional_nats_per_hidden_pixel"]
    assert gain > 0.25, summary
    assert summary["completions_better"] >= 0.9, summary


def test_the_mixture_proposal_is_worth_more_samples_than_the_prior_alone(measured):
    """ESS 3.6 against 1.1 of 160 proposals (measured): the imputed encoder's proposals carry weight."""
    proposals = 10 * measured.importance_samples
    for ess in (*measured.ess_mixture, *measured.ess_prior):
        assert 1 - 1e-4 <= ess <= proposals + 1e-4
    summary = measured.summary()
    assert summary["mean_ess_mixture"] > 2 * summary["mean_ess_prior"], summary


def test_the_observed_half_tells_the_label(measured):
    assert measured.label_accuracy is not None and measured.label_accuracy >= 0.85  # measured 0.93


def test_weights_sum_to_one_and_completions_keep_the_observed_pixels(model, digits):
    images = binarize_at_threshold(data.to_float(digits.images[:3])).reshape(3, 28, 28)
    mask = named_mask("left")
    done = complete(model, images, mask.expand(3, -1, -1), [1, 4, 7], 8, torch.tensor([5, 6, 7]))
    for image, completion, k in zip(images, done, [1, 4, 7], strict=True):
        assert completion.images.shape == (k, 1, 28, 28) and completion.latents.shape == (k, 8)
        assert float(completion.weights.sum()) == pytest.approx(1, abs=1e-5)
        assert bool((completion.weights[:-1] >= completion.weights[1:]).all())  # heaviest first
        assert 0 < completion.mass <= 1 + 1e-6
        assert completion.label_probabilities is not None
        assert float(completion.label_probabilities.sum()) == pytest.approx(1, abs=1e-5)
        assert torch.equal(completion.images[:, 0][:, mask], image[mask].expand(k, -1))
        assert completion.labels is not None and completion.labels.shape == (k,)


def test_an_image_completes_the_same_alone_and_in_a_batch(model, digits):
    images = binarize_at_threshold(data.to_float(digits.images[:4])).reshape(4, 28, 28)
    masks = torch.stack([named_mask(name) for name in MASKS])
    seeds = torch.tensor([11, 12, 13, 14])
    together = complete(model, images, masks, 5, 8, seeds)
    for i in range(4):
        (alone,) = complete(model, images[i : i + 1], masks[i : i + 1], 5, 8, seeds[i : i + 1])
        torch.testing.assert_close(alone.latents, together[i].latents, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(alone.weights, together[i].weights, atol=1e-4, rtol=1e-4)
        assert alone.effective_sample_size == pytest.approx(together[i].effective_sample_size, rel=1e-3)


def test_named_masks_observe_one_half():
    top, bottom, left, right = (named_mask(name) for name in MASKS)
    assert int(top.sum()) == int(left.sum()) == 392
    assert torch.equal(top, ~bottom) and torch.equal(left, ~right)
    assert bool(top[:14].all()) and not bool(top[14:].any()) and bool(left[:, :14].all())
    with pytest.raises(ValueError, match="no mask named 'middle'"):
        named_mask("middle")


@pytest.mark.parametrize("observed, message", [(False, "observes no pixel"), (True, "observes every pixel")])
def test_a_mask_must_leave_something_to_see_and_to_complete(observed, message):
    with pytest.raises(ValueError, match=message):
        check_mask(torch.full((28, 28), observed))
