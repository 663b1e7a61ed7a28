import dataclasses
import json

import pytest
import torch

from latent_cnf import LatentCNF, SolverConfig
from latent_cnf.model import base_draws
from train.presets import PRESETS

FAST = SolverConfig(method="rk4", steps=4)


def model(preset: str = "final-cond", **overrides) -> LatentCNF:
    torch.manual_seed(0)
    m = LatentCNF(dataclasses.replace(PRESETS[preset].model, **overrides)).eval()
    m.sample_solver = FAST
    return m


def images(n: int = 6) -> torch.Tensor:
    return (torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(3)) > 0.7).float()


@torch.no_grad()
def test_sample_shapes_and_seed():
    m = model()
    a, b = m.sample(5, seed=11), m.sample(5, seed=11)
    assert a.images.shape == (5, 1, 28, 28) and a.latents.shape == (5, 8)
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert torch.equal(a.images, b.images) and a.nfe == 16
    assert not torch.equal(a.latents, m.sample(5, seed=12).latents)


@torch.no_grad()
def test_conditional_sample_uses_label():
    m = model()
    threes, fives = m.sample(4, label=3, seed=1), m.sample(4, label=5, seed=1)
    assert threes.labels.tolist() == [3] * 4
    assert not torch.allclose(threes.latents, fives.latents)
    unconditional = m.sample(64, seed=2)
    assert len(set(unconditional.labels.tolist())) > 5  # drawn from the uniform class prior


@torch.no_grad()
def test_conditional_log_prob_depends_on_label():
    m = model()
    z = torch.randn(4, 8) * 0.3
    three, five = m.log_prob(z, 3, FAST).log_prob, m.log_prob(z, 5, FAST).log_prob
    assert not torch.allclose(three, five)
    per_label = torch.stack([m.log_prob(z, y, FAST).log_prob for y in range(10)])
    marginal = m.log_prob(z, None, FAST).log_prob
    torch.testing.assert_close(marginal, torch.logsumexp(per_label, 0) - torch.log(torch.tensor(10.0)))


@torch.no_grad()
def test_temperature_scales_the_base_noise():
    m = model()
    z1, labels1 = m.draw_base(6, label=2, seed=5)
    z_half, labels_half = m.draw_base(6, label=2, seed=5, temperature=0.5)
    torch.testing.assert_close(z_half, 0.5 * z1)
    assert torch.equal(labels1, labels_half)
    cold = m.sample(6, label=2, seed=5, temperature=0.5)
    torch.testing.assert_close(cold.latents, m.sample_from(0.5 * z1, labels1).latents[-1])
    for bad in (0.0, -1.0, 2.5):
        with pytest.raises(ValueError, match="temperature"):
            m.draw_base(1, temperature=bad)


@torch.no_grad()
@pytest.mark.parametrize(
    ("preset", "label"),
    [("final-cond", None), ("final-cond", 4), ("final-cond", torch.arange(16) % 10), ("vae-cnf-prior", None)],
    ids=["drawn-labels", "one-label", "labels-per-row", "unconditional"],
)
def test_a_seed_names_samples_whatever_their_number(preset, label):
    """Sample i of a seeded call depends on (seed, i, label, temperature) only: the first rows of a larger call
    are a smaller call's, whatever n (torch.randn's blocks of 16 once made n = 1 and n = 16 differ)."""
    m = model(preset)
    row_labels = label[:1] if torch.is_tensor(label) else label
    one, many = m.sample(1, row_labels, seed=3), m.sample(16, label, seed=3)
    torch.testing.assert_close(one.images[0], many.images[0], atol=1e-5, rtol=0)  # the batch's own rounding only
    for n in (1, 2, 3, 5, 15, 17):
        z, labels = m.draw_base(n, None if torch.is_tensor(label) else label, seed=3, temperature=0.7)
        z_big, labels_big = m.draw_base(40, None if torch.is_tensor(label) else label, seed=3, temperature=0.7)
        assert torch.equal(z, z_big[:n])
        assert labels is None or torch.equal(labels, labels_big[:n])
    assert not torch.equal(m.draw_base(4, seed=3)[0], m.draw_base(4, seed=4)[0])


def test_seeded_draws_are_numpy_streams_that_do_not_drift():
    """The noise of seed 0 pinned: a change of stream (library or code) would silently change every seeded
    answer the docs show."""
    noise, labels = base_draws(2, 3, 10, seed=0)
    expected = torch.tensor([[2.130971, 3.445638, -0.009256], [0.629228, 0.717282, -1.283216]])
    torch.testing.assert_close(noise, expected, atol=1e-5, rtol=0)
    assert labels.tolist() == [6, 6]


def test_unconditional_model_refuses_labels():
    with pytest.raises(ValueError, match="not label-conditioned"):
        model("vae-cnf-prior").sample(2, label=1)


@torch.no_grad()
def test_trajectory_runs_t0_to_t1():
    m = model()
    path = m.trajectory(3, steps=11, label=7, seed=5)
    assert path.latents.shape == (11, 3, 8) and path.images.shape == (11, 3, 1, 28, 28)
    assert path.times[0] == 0 and path.times[-1] == 10
    torch.testing.assert_close(path.latents[-1], m.sample(3, label=7, seed=5).latents)
    z0, _ = m.draw_base(3, 7, seed=5)
    torch.testing.assert_close(path.latents[0], z0)


@torch.no_grad()
@pytest.mark.parametrize("preset", ["final-cond", "vae-cnf-prior", "ae-cnf"])
def test_score_bounds(preset):
    m = model(preset)
    x = images()
    score = m.score(x, k=16, solver=FAST)
    assert score.log_likelihood.shape == (6,) and torch.isfinite(score.log_likelihood).all()
    assert (score.log_likelihood >= score.elbo - 1e-4).all()  # log-mean-exp >= mean-log, sample by sample
    torch.testing.assert_close(score.elbo, score.reconstruction - score.kl)
    assert score.label_elbo.shape == (6, m.config.score_classes)
    assert (score.elbo >= score.label_elbo.mean(1) - 1e-4).all()  # the best label posterior beats the uniform one
    single = m.score(x, k=1, solver=FAST)
    if not m.config.uses_labels:
        torch.testing.assert_close(single.log_likelihood, single.elbo)
    assert (score.predicted_label is not None) == m.prior.uses_labels


@torch.no_grad()
def test_score_does_not_depend_on_batch():
    m = model()
    x = images()
    full = m.score(x, k=8, solver=FAST)
    part = m.score(x[2:4], k=8, solver=FAST, seed=2)
    torch.testing.assert_close(part.log_likelihood, full.log_likelihood[2:4], atol=1e-4, rtol=0)
    chunked = m.score(x, k=8, solver=FAST, max_rows=8 * 10)
    torch.testing.assert_close(chunked.log_likelihood, full.log_likelihood, atol=1e-4, rtol=0)


@torch.no_grad()
def test_gaussian_prior_matches_closed_form():
    m = model("final", prior="gaussian")
    z = torch.randn(5, 8)
    expected = torch.distributions.Normal(0, 1).log_prob(z).sum(1)
    torch.testing.assert_close(m.log_prob(z).log_prob, expected)


def test_config_json_round_trip():
    for preset in PRESETS.values():
        config = preset.model
        assert type(config).from_dict(json.loads(config.to_json())) == config


def test_inference_results_have_no_autograd_history():
    """Outside any no_grad block, as a user calls them: the results convert to numpy directly."""
    m = model()
    samples, path = m.sample(3, seed=0), m.trajectory(2, steps=3, seed=0)
    score = m.score(images(2), k=2, solver=FAST)
    for tensor in (samples.images, samples.latents, path.latents, path.images, score.log_likelihood, score.elbo):
        assert not tensor.requires_grad
        assert tensor.numpy().size > 0
    z = torch.zeros(2, 8, requires_grad=True)
    m.log_prob(z, label=1, solver=FAST).log_prob.sum().backward()  # the density stays differentiable
    assert z.grad is not None and torch.isfinite(z.grad).all()
