import math

import pytest
import torch
from torchdiffeq import odeint

from latent_cnf import ModelConfig, SolverConfig, SolverError, fixed_step
from latent_cnf.cnf import LatentFlow
from latent_cnf.dynamics import HyperDynamics

TIGHT = SolverConfig(method="dopri5", rtol=1e-9, atol=1e-9)


def autograd_trace(dz: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return sum(torch.autograd.grad(dz[:, i].sum(), z, retain_graph=True)[0][:, i] for i in range(z.shape[1]))


@pytest.mark.parametrize("labels", [0, 10])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_exact_trace_matches_autograd(labels, dtype, tol):
    torch.manual_seed(1)
    dynamics = HyperDynamics(latent_dim=6, width=16, hidden=32, num_labels=labels, label_dim=4 if labels else 0).to(
        dtype
    )
    z = torch.randn(37, 6, dtype=dtype, requires_grad=True)
    y = torch.randint(10, (37,)) if labels else None
    for t in (0.0, 2.5, 10.0):
        dz, trace = dynamics(torch.tensor(t), z, y)
        assert dz.shape == (37, 6) and trace.shape == (37,)
        torch.testing.assert_close(trace, autograd_trace(dz, z), atol=tol, rtol=tol)


@pytest.mark.parametrize("rows", [1, 20, 700, 1000])
def test_grouped_and_gathered_label_arrangements_give_each_row_its_labels_dynamics(rows):
    """700 and 1000 rows of mixed labels are grouped by label, 20 gather per row, 1 is one group; every way
    gives each row what its own label's units say, in the caller's order."""
    torch.manual_seed(2)
    dynamics = HyperDynamics(latent_dim=3, width=8, hidden=16, num_labels=10, label_dim=4).double()
    z = torch.randn(rows, 3, dtype=torch.float64)
    labels = torch.randint(10, (rows,))
    p = dynamics.parameters_at(torch.tensor([4.0]))[0]
    h = torch.tanh(torch.einsum("nkd,nd->nk", p.weight[labels], z) + p.bias[labels])
    expected_dz = torch.einsum("nk,nkd->nd", h, p.output[labels])
    expected_trace = ((1 - h * h) * p.unit_trace[labels]).sum(-1)
    dz, trace = dynamics(torch.tensor(4.0), z, labels)
    torch.testing.assert_close(dz, expected_dz, atol=1e-12, rtol=0)
    torch.testing.assert_close(trace, expected_trace, atol=1e-12, rtol=0)


def flow_2d(**overrides) -> LatentFlow:
    torch.manual_seed(0)
    return LatentFlow(ModelConfig(latent_dim=2, cnf_width=8, cnf_hidden=16, **overrides)).double()


def test_log_density_matches_change_of_variables():
    """log p(z1) from the CNF equals log p0(z0) - log|det dz1/dz0| with the Jacobian by autograd."""
    flow = flow_2d()
    z0 = torch.randn(3, 2, dtype=torch.float64) * flow.base_std
    z1 = flow.transform(z0, solver=TIGHT).path[-1]
    for i in range(3):
        jacobian = torch.autograd.functional.jacobian(
            lambda p: flow.transform(p[None], solver=TIGHT).path[-1, 0], z0[i]
        )
        expected = flow.base_log_prob(z0[i : i + 1]) - torch.linalg.slogdet(jacobian).logabsdet
        result = flow.log_prob(z1[i : i + 1], solver=TIGHT)
        torch.testing.assert_close(result.log_prob, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(result.path[-1], z0[i : i + 1], atol=1e-6, rtol=0)


def test_density_integrates_to_one():
    """A grid sum of exp(log p) over the plane is 1: the flow keeps mass."""
    flow = flow_2d()
    axis = torch.linspace(-2.5, 2.5, 101, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    density = flow.log_prob(grid, solver=SolverConfig(method="rk4", steps=40)).log_prob.exp()
    assert abs(density.sum().item() * (axis[1] - axis[0]).item() ** 2 - 1) < 0.02


@pytest.mark.parametrize("method, calls_per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("conditional", [False, True])
def test_fixed_step_solve_matches_a_hypernetwork_call_per_evaluation(method, calls_per_step, conditional):
    """The parameters precomputed for a fixed-step solve are those torchdiffeq's own evaluation times give."""
    flow = flow_2d(prior_uses_labels=conditional)
    z = torch.randn(5, 2, dtype=torch.float64)
    labels = torch.arange(5) if conditional else None
    solver = SolverConfig(method=method, steps=7)

    def per_call(t, state):
        dz, trace = flow.dynamics(t, state[0], labels)
        return dz, -trace

    result = flow.log_prob(z, labels, solver)
    grid = {"step_size": (flow.t1 - flow.t0) / 7}
    z0, change = odeint(
        per_call,
        (z, z.new_zeros(5)),
        torch.tensor([flow.t1, flow.t0], dtype=torch.float64),
        method=method,
        options=grid,
    )
    assert result.nfe == 7 * calls_per_step
    torch.testing.assert_close(result.path[-1], z0[-1], atol=1e-12, rtol=0)
    torch.testing.assert_close(result.log_prob, flow.base_log_prob(z0[-1]) - change[-1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("conditional", [False, True])
def test_fixed_step_loop_equals_torchdiffeq_without_density_and_at_every_frame(method, conditional):
    """The plain loop of fixed_step.py is torchdiffeq's solver, to float64 rounding, trajectories and the
    kinetic energy included; 7 steps over 3 frame intervals become 9, so every frame is a solved state."""
    flow = flow_2d(prior_uses_labels=conditional)
    z0 = torch.randn(5, 2, dtype=torch.float64) * flow.base_std
    labels = torch.arange(5) if conditional else None
    solver = SolverConfig(method=method, steps=7)
    times = torch.linspace(flow.t0, flow.t1, 4, dtype=torch.float64)
    assert len(fixed_step.fixed_grid(times, 7)) == 10 and torch.allclose(fixed_step.fixed_grid(times, 7)[::3], times)

    def per_call(t, z):
        return flow.dynamics(t, z, labels, with_trace=False)[0]

    grid = {"grid_constructor": lambda func, y0, t: fixed_step.fixed_grid(t, 7)}
    expected = odeint(per_call, z0, times, method=method, options=grid)
    torch.testing.assert_close(flow.transform(z0, labels, solver, steps=4).path, expected, atol=1e-12, rtol=0)
    energy = flow.log_prob(z0, labels, solver, kinetic=True).kinetic

    def with_energy(t, state):
        dz, trace = flow.dynamics(t, state[0], labels)
        return dz, -trace, (dz * dz).sum(-1)

    backwards = torch.tensor([flow.t1, flow.t0], dtype=torch.float64)
    state = (z0, z0.new_zeros(5), z0.new_zeros(5))
    torch.testing.assert_close(energy, -odeint(with_energy, state, backwards, method=method, options=grid)[2][-1])


def test_base_density_is_a_buffer():
    flow = LatentFlow(ModelConfig())
    assert "base_std" in dict(flow.named_buffers())
    assert math.isclose(flow.base_std.item() ** 2, 0.1, rel_tol=1e-6)
    assert flow.double().base_std.dtype == torch.float64


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("solver", [SolverConfig(method="rk4", steps=8), SolverConfig(method="dopri5")])
def test_a_sample_gets_the_same_result_alone_and_in_any_batch(solver, conditional):
    """The strict property, in float32 as served: dopri5 controls each sample's step size on its own."""
    flow = flow_2d(prior_uses_labels=conditional).float()
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(50, 2, generator=generator) * 2
    labels = torch.randint(10, (50,), generator=generator) if conditional else None
    full = flow.log_prob(z, labels, solver=solver)
    for rows in (slice(0, 1), slice(3, 10), slice(49, 50), slice(20, 50)):
        part = flow.log_prob(z[rows], labels[rows] if conditional else None, solver=solver)
        torch.testing.assert_close(part.log_prob, full.log_prob[rows], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(part.path, full.path[:, rows], atol=1e-6, rtol=1e-6)
    path = flow.transform(z[:5], labels[:5] if conditional else None, solver=solver, steps=4).path
    alone = torch.cat(
        [
            flow.transform(z[i : i + 1], labels[i : i + 1] if conditional else None, solver=solver, steps=4).path
            for i in range(5)
        ],
        1,
    )
    torch.testing.assert_close(alone, path, atol=1e-6, rtol=1e-6)


def test_adaptive_solve_steps_each_sample_on_its_own():
    """A stiff sample does not make an easy one take more steps: each row is evaluated at its own times."""
    flow = flow_2d()
    seen: list[torch.Tensor] = []
    row_parameters = flow.dynamics.row_parameters

    def record(times, labels):
        seen.append(times.clone())
        return row_parameters(times, labels)

    flow.dynamics.row_parameters = record
    flow.log_prob(torch.tensor([[0.0, 0.0], [3.0, -3.0]], dtype=torch.float64))
    times = torch.stack(seen)
    assert times.shape[1] == 2 and not torch.equal(times[:, 0], times[:, 1])


@pytest.mark.parametrize("conditional", [False, True])
def test_row_parameters_match_the_shared_table(conditional):
    """The per-row parameters of an adaptive solve are those of the fixed-step path at the same time and label."""
    flow = flow_2d(prior_uses_labels=conditional)
    times = torch.tensor([0.0, 2.5, 7.25, 10.0], dtype=torch.float64)
    labels = torch.tensor([3, 0, 9, 3]) if conditional else None
    rows = flow.dynamics.row_parameters(times, labels)
    for i, table in enumerate(flow.dynamics.parameters_at(times)):
        label = labels[i] if conditional else 0
        torch.testing.assert_close(rows.weight[i], table.weight[label])
        torch.testing.assert_close(rows.output[i], table.output[label])
        torch.testing.assert_close(rows.bias[i], table.bias[label])


def test_adaptive_solve_agrees_with_a_tight_torchdiffeq_solve():
    flow = flow_2d(prior_uses_labels=True)
    z = torch.randn(6, 2, dtype=torch.float64)
    labels = torch.arange(6)

    def per_call(t, state):
        dz, trace = flow.dynamics(t, state[0], labels)
        return dz, -trace

    times = torch.tensor([flow.t1, flow.t0], dtype=torch.float64)
    z0, change = odeint(per_call, (z, z.new_zeros(6)), times, rtol=1e-11, atol=1e-11)
    result = flow.log_prob(z, labels, SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8))
    torch.testing.assert_close(result.log_prob, flow.base_log_prob(z0[-1]) - change[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(result.path[-1], z0[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method, per_step", [("rk4", 4), ("midpoint", 2), ("euler", 1)])
def test_nfe_counting_fixed_step(method, per_step):
    flow = flow_2d()
    result = flow.log_prob(torch.randn(4, 2, dtype=torch.float64), solver=SolverConfig(method=method, steps=5))
    assert result.nfe == 5 * per_step


def test_max_nfe_raises():
    flow = flow_2d()
    with pytest.raises(SolverError, match="max_nfe=3"):
        flow.log_prob(torch.randn(4, 2, dtype=torch.float64), solver=SolverConfig(max_nfe=3))


@pytest.mark.parametrize("solver", [SolverConfig(method="rk4", steps=4), SolverConfig(method="dopri5")])
def test_non_finite_raises(solver):
    flow = flow_2d()
    with torch.no_grad():
        flow.dynamics.hyper[-1].bias.fill_(float("nan"))
    with pytest.raises(SolverError):
        flow.transform(torch.randn(4, 2, dtype=torch.float64), solver=solver)


def test_kinetic_energy_is_positive_integral():
    flow = flow_2d()
    result = flow.log_prob(
        torch.randn(4, 2, dtype=torch.float64), kinetic=True, solver=SolverConfig(method="rk4", steps=4)
    )
    assert (result.kinetic > 0).all()


def test_conditional_flow_needs_labels():
    flow = LatentFlow(ModelConfig(prior_uses_labels=True))
    with pytest.raises(ValueError, match="labels"):
        flow.log_prob(torch.randn(2, 8))


@pytest.mark.slow  # compiling takes seconds to minutes on a CPU (bench/compile.py measures it)
@pytest.mark.parametrize("conditional", [False, True])
def test_the_compiled_fixed_step_loop_agrees_with_the_eager_one(conditional, monkeypatch):
    """bench/compile.py times `fixed_step.integrate` under torch.compile; this checks it computes the same thing:
    samples, trajectories and densities, float32, to compiled kernels' reordering of float arithmetic."""
    flow = flow_2d(prior_uses_labels=conditional).float()
    z0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) * flow.base_std
    labels = torch.arange(6) % 3 if conditional else None
    solver = SolverConfig(method="rk4", steps=4)
    eager = flow.transform(z0, labels, solver, steps=3).path, flow.log_prob(z0, labels, solver).log_prob
    monkeypatch.setattr(fixed_step, "integrate", torch.compile(fixed_step.integrate, dynamic=True))
    compiled = flow.transform(z0, labels, solver, steps=3).path, flow.log_prob(z0, labels, solver).log_prob
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
