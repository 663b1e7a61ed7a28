"""The flow-matching prior: the objective learns the optimal-transport velocity, the trained flow keeps an exact
log-density, and the shipped mnist-fm-cond is served."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import latent_cnf
from latent_cnf import SolverConfig, data, model_folder
from latent_cnf.cnf import LatentFlow
from latent_cnf.config import ModelConfig
from train.flow_matching import flow_matching_loss, ot_pairing, velocity
from train.loop import Trainer

from .service_helpers import decode_png, png
from .test_train import options

# Toy problem: label y's latents are N(MEANS[y], STD^2 I); the base is the flow's N(0, 0.1 I) at t0 = 0 and the
# latents are at t1 = 10, as in the shipped models (so the time scaling of the velocity is exercised).
MEANS = torch.tensor([[1.0, -0.5], [-1.0, 0.5]])
STD = 0.5
TOY = ModelConfig(latent_dim=2, cnf_width=16, cnf_hidden=32, prior_uses_labels=True, num_classes=2, cnf_label_dim=2)


def toy_latents(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(2, (n,), generator=generator)
    return MEANS[labels] + STD * torch.randn(n, 2, generator=generator), labels


def ot_velocity(flow: LatentFlow, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dz/dt of the optimal-transport map between isotropic Gaussians, z1 = mean + a z0 with a = STD / base std,
    followed in a straight line: z_s = (1 - s + s a) z0 + s mean, so dz/ds = (a - 1) z0 + mean."""
    span = flow.t1 - flow.t0
    s = ((t - flow.t0) / span)[:, None]
    a, mean = STD / flow.base_std, MEANS[labels]
    return ((a - 1) * (z - s * mean) / (1 - s + s * a) + mean) / span


def independent_velocity(flow: LatentFlow, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """dz/dt of flow matching with independently drawn pairs: E[z1 - z0 | z_s], linear in z_s for Gaussians."""
    span = flow.t1 - flow.t0
    s = ((t - flow.t0) / span)[:, None]
    base, target, mean = flow.base_std**2, STD**2, MEANS[labels]
    slope = (s * target - (1 - s) * base) / ((1 - s) ** 2 * base + s**2 * target)
    return (mean + slope * (z - s * mean)) / span


def train_toy(ot: bool, steps: int = 300) -> LatentFlow:
    torch.manual_seed(0)
    flow = LatentFlow(TOY)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        z1, labels = toy_latents(128, generator)
        loss = flow_matching_loss(flow, z1, labels, ot=ot, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow.eval()


@pytest.fixture(scope="module")
def toy_flow() -> LatentFlow:
    return train_toy(ot=True)


def ot_path_points(flow: LatentFlow, n: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points on the exact OT paths at s in [0.1, 0.9], with their times and labels."""
    generator = torch.Generator().manual_seed(123)
    labels = torch.randint(2, (n,), generator=generator)
    z0 = flow.base_sample(n, generator)
    s = 0.1 + 0.8 * torch.rand(n, generator=generator)
    z = (1 - s[:, None]) * z0 + s[:, None] * (MEANS[labels] + STD / flow.base_std * z0)
    return z, flow.t0 + (flow.t1 - flow.t0) * s, labels


def relative_error(flow: LatentFlow, reference) -> float:
    z, t, labels = ot_path_points(flow)
    with torch.no_grad():
        learned, exact = velocity(flow, z, t, labels), ot_velocity(flow, z, t, labels)
        other = reference(flow, z, t, labels)
    return ((learned - other).norm(dim=1).mean() / exact.norm(dim=1).mean()).item()


def test_ot_pairing_is_the_sorted_matching_in_one_dimension_within_each_label():
    generator = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(40, 1, generator=generator), torch.randn(40, 1, generator=generator)
    labels = torch.arange(40) % 3
    paired = ot_pairing(z0, z1, labels)
    for y in range(3):
        rows = labels == y
        assert sorted(paired[rows, 0].tolist()) == sorted(z0[rows, 0].tolist())  # a permutation within the label
        # in 1-D the squared-cost optimum pairs the k-th smallest with the k-th smallest
        assert torch.equal(paired[rows][z1[rows, 0].argsort()], z0[rows][z0[rows, 0].argsort()])


def test_learned_velocity_is_the_closed_form_ot_velocity(toy_flow):
    """Measured: 0.09 of the velocity's size with OT pairing. Independent pairs learn the other field (0.26 from
    the OT one, 0.10 from their own, a noisier regression): the pairing is what moves the flow onto it."""
    assert relative_error(toy_flow, ot_velocity) < 0.15
    independent = train_toy(ot=False)
    assert relative_error(independent, ot_velocity) > 0.2
    assert relative_error(independent, independent_velocity) < relative_error(independent, ot_velocity)


def rk4_log_prob_by_autograd(flow: LatentFlow, z: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """log p(z) by rk4 (the 3/8 rule, as the solver's) from t1 back to t0 with the divergence from autograd's
    Jacobian, not the closed form."""

    def derivative(t: float, state: torch.Tensor) -> torch.Tensor:
        y = state[:, :2].detach().requires_grad_(True)
        dz = velocity(flow, y, torch.full((len(y),), t, dtype=y.dtype), labels)
        trace = sum(torch.autograd.grad(dz[:, i].sum(), y, retain_graph=True)[0][:, i] for i in range(2))
        return torch.cat([dz, -trace[:, None]], dim=1).detach()

    state, h = torch.cat([z, z.new_zeros(len(z), 1)], dim=1), (flow.t0 - flow.t1) / steps
    for i in range(steps):
        t = flow.t1 + i * h
        k1 = derivative(t, state)
        k2 = derivative(t + h / 3, state + h * k1 / 3)
        k3 = derivative(t + 2 * h / 3, state + h * (k2 - k1 / 3))
        k4 = derivative(t + h, state + h * (k1 - k2 + k3))
        state = state + h * (k1 + 3 * (k2 + k3) + k4) / 8
    return flow.base_log_prob(state[:, :2]) - state[:, 2]


def test_trained_flow_log_density_is_exact(toy_flow):
    """The closed-form trace gives the same log-density as autograd's (same rk4 steps, float64), the ODE
    solution is converged, and the density is the target's: E[log N - log p] (a KL estimate) is small."""
    flow = copy.deepcopy(toy_flow).double()  # the fixture is shared: leave it float32
    z, labels = toy_latents(200, torch.Generator().manual_seed(5))
    z = z.double()
    exact = flow.log_prob(z, labels, SolverConfig("rk4", steps=16)).log_prob
    with torch.enable_grad():
        by_autograd = rk4_log_prob_by_autograd(flow, z, labels, steps=16)
    torch.testing.assert_close(exact, by_autograd, rtol=0, atol=1e-9)
    adaptive = flow.log_prob(z, labels, SolverConfig("dopri5", rtol=1e-7, atol=1e-7)).log_prob
    torch.testing.assert_close(exact, adaptive, rtol=0, atol=1e-4)
    target = (-0.5 * ((z - MEANS[labels].double()) / STD) ** 2 - math.log(STD * math.sqrt(2 * math.pi))).sum(1)
    assert abs((target - exact).mean().item()) < 0.2  # measured 0.06 nats


def test_fm_cond_training_moves_the_prior_only(tiny_dataset, tmp_path):
    """The preset reuses mnist-final-cond's encoder and decoder and keeps them bit for bit."""
    trainer = Trainer(options(tiny_dataset, tmp_path, "fm-cond", run={"max_steps": 3}))
    prior_before = {k: v.clone() for k, v in trainer.model.prior.state_dict().items()}
    trainer.run()
    shipped = latent_cnf.load("mnist-final-cond")
    for part in ("encoder", "decoder"):
        mine, theirs = getattr(trainer.model, part).state_dict(), getattr(shipped, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert any(not torch.equal(v, trainer.model.prior.state_dict()[k]) for k, v in prior_before.items())
    training = model_folder.read_training(tmp_path / "checkpoint")
    assert training["frozen_autoencoder"] == {
        "checkpoint": "mnist-final-cond",
        "sha256": model_folder.weights_sha256("mnist-final-cond"),
    }


def test_fm_cond_trains_on_the_frozen_posterior_encoded_once(tiny_dataset, tmp_path):
    """The training images are replaced by their posterior rows [mean, log_std], as encoding each batch gives."""
    trainer = Trainer(options(tiny_dataset, tmp_path, "fm-cond", run={"max_steps": 1}))
    fit = data.load_split("mnist", "fit", tiny_dataset)
    with torch.no_grad():
        mean, log_std = trainer.model.eval().encode(data.to_float(fit.images), fit.labels)
    torch.testing.assert_close(trainer.train_x, torch.cat([mean, log_std], dim=1))


def test_mnist_fm_cond_loads_with_its_calibrated_few_step_sampler():
    model = latent_cnf.load("mnist-fm-cond")
    training = model_folder.read_training("mnist-fm-cond")
    assert training["train_config"]["objective"] == "flow_matching"
    assert training["frozen_autoencoder"]["checkpoint"] == "mnist-final-cond"
    shipped = latent_cnf.load("mnist-final-cond")
    for part in ("encoder", "decoder"):  # the same encoder and decoder, bit for bit
        mine, theirs = getattr(model, part).state_dict(), getattr(shipped, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    calibrated = model_folder.read_serving("mnist-fm-cond")["solvers"]["sample"]
    assert model.sample_solver.method == calibrated["method"] != "dopri5"
    assert model.sample(4, label=3, seed=0).nfe == calibrated["nfe"]


def test_serving_mnist_fm_cond(client, data_dir):
    body = client.post("/generate", json={"model": "mnist-fm-cond", "n": 3, "label": 7, "seed": 2}).json()
    assert body["model"] == "mnist-fm-cond" and body["labels"] == [7, 7, 7]
    assert body["nfe"] == model_folder.read_serving("mnist-fm-cond")["solvers"]["sample"]["nfe"]
    assert all(decode_png(image).size == (28, 28) for image in body["images"])
    digit = png(data.load_split("mnist", "test", data_dir).images[0].numpy())  # a 7
    response = client.post("/score", files={"file": ("seven.png", digit)}, data={"model": "mnist-fm-cond"})
    assert response.status_code == 200
    (result,) = response.json()["results"]
    assert result["predicted_label"] == 7 and -200 < result["log_likelihood_nats"] < -20
