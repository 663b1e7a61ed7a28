"""The likelihood pieces against their textbook forms."""

import math

import pytest
import torch
from torch.nn import functional as F

from latent_cnf.likelihood import bernoulli_log_likelihood, gaussian_log_density, iwae_bound


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
