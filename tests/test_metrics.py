"""Evaluation metrics against closed forms and hand-computed cases, and the shipped judge's accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from latent_cnf import data
from latent_cnf.judges import Classifier, load_classifier
from train.metrics.features import accuracy
from train.metrics.fid import fid, frechet_distance
from train.metrics.ood import auroc, complexity_bits, complexity_corrected
from train.metrics.precision_recall import knn_radii, precision_recall


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form() -> None:
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_agrees_with_scipy_sqrtm_on_full_covariances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    sigma_a, sigma_b = a @ a.T, b @ b.T
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * linalg.sqrtm(sigma_a @ sigma_b).real)
    assert frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-8)


def test_fid_of_samples_approaches_the_gaussian_distance() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20_000, 4))
    b = rng.normal(0.5, 2.0, size=(20_000, 4))
    expected = 4 * 0.5**2 + 4 * (1.0 - 2.0) ** 2
    assert fid(a, b) == pytest.approx(expected, rel=0.05)


def test_fid_of_identical_sets_is_zero_even_when_rank_deficient() -> None:
    features = torch.relu(torch.randn(10, 32, generator=torch.Generator().manual_seed(0)))  # n < d: singular cov
    assert fid(features, features) == pytest.approx(0.0, abs=1e-8)
    assert math.isfinite(fid(features, features + 1))


def test_knn_radii_are_kth_neighbour_distances_excluding_the_point() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 4.0, 9.0]
    assert knn_radii(points, k=2).tolist() == [9.0, 4.0, 9.0, 25.0]


def test_precision_recall_sanity() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=generator)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_and_loses_recall() -> None:
    generator = torch.Generator().manual_seed(0)
    cluster_a, cluster_b = torch.randn(200, 8, generator=generator), torch.randn(200, 8, generator=generator) + 50
    fake = torch.randn(200, 8, generator=generator)  # covers cluster A only
    precision, recall = precision_recall(torch.cat([cluster_a, cluster_b]), fake, k=3)
    assert precision > 0.9
    assert 0.3 < recall <= 0.5  # cluster B is never covered; k-NN balls cover most, not all, of A
    assert precision_recall(torch.cat([cluster_a, cluster_b]), fake, k=3, batch_size=7) == (precision, recall)


def test_auroc_hand_computed_with_ties() -> None:
    # pairs (in, out): (3,2) (3,1) (2,1) (2,1) win, (2,2) (2,2) tie: (4 + 2 * 0.5) / 6
    assert auroc([3, 2, 2], [2, 1]) == pytest.approx(5 / 6)
    assert auroc([5, 6], [1, 2]) == 1.0
    assert auroc([1, 2], [5, 6]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5


def test_auroc_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, size=40), rng.integers(0, 5, size=30)  # many ties
    pairwise = ((a[:, None] > b[None]).sum() + 0.5 * (a[:, None] == b[None]).sum()) / (len(a) * len(b))
    assert auroc(a, b) == pytest.approx(pairwise)


def test_noise_compresses_worse_than_a_blank_image_and_the_correction_favours_complexity() -> None:
    generator = torch.Generator().manual_seed(0)
    blank = torch.zeros(1, 784)
    binary_noise = (torch.rand(1, 784, generator=generator) < 0.5).float()
    grey_noise = torch.rand(1, 784, generator=generator)
    bits = complexity_bits(torch.cat([blank, binary_noise, grey_noise]))
    assert bits[0] < bits[1] < bits[2]
    assert bits[1] > 784  # incompressible: at least one bit per pixel
    log_likelihood = torch.tensor([-100.0, -100.0, -100.0])
    corrected = complexity_corrected(log_likelihood, bits)
    assert torch.allclose(corrected, log_likelihood.double() + bits * math.log(2))
    assert corrected[0] < corrected[1]  # same likelihood: the simpler image is less surprising to the compressor


def test_judge_features_are_the_penultimate_layer() -> None:
    judge = Classifier().eval()
    images = torch.rand(3, 28, 28)
    assert judge.features(images).shape == (3, Classifier.feature_dim)
    assert torch.allclose(judge.head(judge.features(images)), judge(images))


@pytest.mark.parametrize(("dataset", "target"), [("mnist", 0.99), ("fashion-mnist", 0.91)])
def test_shipped_classifier_accuracy(data_dir: Path, dataset: str, target: float) -> None:
    test = data.load_split(dataset, "test", data_dir)
    judge = load_classifier(dataset)
    assert accuracy(judge, data.to_float(test.images), test.labels, batch_size=1000) >= target
