"""The likelihood pieces against their textbook forms."""

import math

import pytest
import torch
from torch.nn import functional as F

from latent_cnf.likelihood import bernoulli_log_likelihood, gaussian_log_density, iwae_bound, label_latent_elbo


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_log_likelihood_is_minus_the_cross_entropy(binary):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 784, generator=generator, dtype=torch.float64) * 30  # saturated logits too
    targets = torch.rand(50, 784, generator=generator, dtype=torch.float64)
    targets = (targets > 0.5).double() if binary else targets
    expected = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, targets), expected, rtol=1e-12, atol=1e-6)


def test_bernoulli_log_likelihood_broadcasts_one_image_over_its_proposals():
    logits = torch.randn(3, 5, 784)
    images = (torch.rand(3, 784) > 0.5).float()
    shared = bernoulli_log_likelihood(logits, images.unsqueeze(1))
    repeated = bernoulli_log_likelihood(logits.reshape(15, 784), images.repeat_interleave(5, 0))
    torch.testing.assert_close(shared.flatten(), repeated)


def test_gaussian_log_density_and_iwae_bound():
    z, mean, log_std = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    expected = -0.5 * (0.25 + 1.0) - math.log(2.0) - math.log(2 * math.pi)
    assert gaussian_log_density(z, mean, log_std).item() == pytest.approx(expected)
    log_w = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    assert iwae_bound(log_w).item() == pytest.approx(math.log(2.0))


def linear_gaussian_log_weights(shift: float, k: int = 7) -> tuple[torch.Tensor, float]:
    """A toy with an exact answer: labels y uniform over 3, z | y ~ N(mu_y, 1), x | z ~ N(z, 1/2), x = 1.2.
    (Log weights (3, k) of k proposals per label from q(z | x, y) = the exact posterior moved by `shift`, log p(x).)"""
    mu, x, noise_var = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64), 1.2, 0.5
    post_var = 1 / (1 + 1 / noise_var)
    post_mean = post_var * (mu + x / noise_var) + shift
    z = post_mean[:, None] + post_var**0.5 * torch.randn(
        3, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )

    def log_normal(value: torch.Tensor | float, mean: torch.Tensor | float, var: float) -> torch.Tensor:
        return torch.as_tensor(-0.5 * ((value - mean) ** 2 / var + math.log(2 * math.pi * var)))

    log_w = log_normal(x, z, noise_var) + log_normal(z, mu[:, None], 1.0) - log_normal(z, post_mean[:, None], post_var)
    log_px = torch.logsumexp(log_normal(x, mu, 1 + noise_var), 0) - math.log(3)  # x | y ~ N(mu_y, 3/2)
    return log_w, float(log_px)


def test_the_label_latent_elbo_is_log_px_when_the_proposals_are_the_posteriors():
    """Every weight is then p(x | y), so any k gives log p(x) itself; the all-label average stays below it."""
    log_w, log_px = linear_gaussian_log_weights(shift=0.0)
    elbo, log_r = label_latent_elbo(log_w)
    assert float(elbo) == pytest.approx(log_px, abs=1e-9)
    assert float(iwae_bound(log_w.flatten())) == pytest.approx(log_px, abs=1e-9)
    assert float(log_w.mean()) < log_px - 0.5  # the old column: wrong labels' fits charged to the image
    torch.testing.assert_close(log_r.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_the_label_latent_elbo_is_the_best_bound_over_label_posteriors_and_below_the_iwae():
    """With imperfect proposals it is max_r sum_y r(y) [ELBO_y - log C - log r(y)]: above the uniform r (the
    all-label average) and each one-hot r (one label's ELBO + log 1/C), and below the IWAE bound of the same
    draws (which is itself only below log p(x) in expectation)."""
    log_w, log_px = linear_gaussian_log_weights(shift=0.4)
    elbo, log_r = label_latent_elbo(log_w)
    label_elbo, r = log_w.mean(1), log_r.exp()
    torch.testing.assert_close(elbo, (r * (label_elbo - math.log(3) - log_r)).sum())
    assert float(log_w.mean()) < float(elbo) and (label_elbo - math.log(3) < elbo).all()
    assert float(elbo) < float(iwae_bound(log_w.flatten()))
    assert float(elbo) < log_px
