"""The CNF prior as a flow: guarded ODE solves of the dynamics (latent_cnf/dynamics.py), forward to sample
and backward for the exact log-density (the instantaneous change of variables: d log p / dt = -tr(df/dz)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torchode
from torch import nn

from . import fixed_step
from .config import DEFAULT_SOLVER, FIXED_STEP_METHODS, ModelConfig, SolverConfig
from .dynamics import HyperDynamics, LabelGroups


class SolverError(RuntimeError):
    """An ODE solve exceeded its NFE budget or produced non-finite values."""


class EvaluationCounter:
    """Counts batched evaluations of the dynamics and stops a solve that passes its budget."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, 0

    def call(self) -> None:
        if self.calls >= self.limit:
            raise SolverError(
                f"ODE solve exceeded max_nfe={self.limit}; loosen the tolerances or use a fixed-step solver"
            )
        self.calls += 1


def _derivatives(dz: torch.Tensor, trace: torch.Tensor | None, kinetic: bool) -> list[torch.Tensor]:
    """The time derivatives of the solved state: z, then log p (minus the trace), then the kinetic energy."""
    out = [dz]
    if trace is not None:
        out.append(-trace)
    if kinetic:
        out.append((dz * dz).sum(-1))
    return out


@dataclass
class Problem:
    """One integration: latents over `times`, and what to track beside them."""

    z: torch.Tensor
    times: torch.Tensor
    labels: torch.Tensor | None
    solver: SolverConfig
    density: bool
    kinetic: bool


Integrated = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # a solver's path, change, energy


class Solution(NamedTuple):
    """What a solve integrated over its times, before it means anything to a caller."""

    path: torch.Tensor  # (times, n, d): the latents at each of the solve's times
    log_density_change: torch.Tensor | None  # (n,): the integral of -tr(df/dz) over the solve, when tracked
    kinetic: torch.Tensor | None  # (n,): the integral of ||f||^2 over the solve, when tracked
    nfe: int


@dataclass(frozen=True)
class FlowResult:
    """What the flow gives a caller; each field means one thing, whichever way the flow ran."""

    path: torch.Tensor  # (times, n, d): the latents at each time of the solve, in the order solved (log_prob:
    # z(t1), the latents asked about, then their base points z(t0); transform: z(t0) ... z(t1), evenly spaced)
    log_prob: torch.Tensor | None  # log_prob: log p(z) of the latents asked about (n,); transform: None
    kinetic: torch.Tensor | None  # integral of ||f||^2 dt from t0 to t1 per sample, when requested
    nfe: int


class LatentFlow(nn.Module):
    """CNF from the base N(0, base_variance I) at t0 to the latent distribution at t1."""

    base_std: torch.Tensor  # a buffer

    def __init__(self, config: ModelConfig):
        super().__init__()
        uses_labels = config.prior_uses_labels
        self.dynamics = HyperDynamics(
            config.latent_dim,
            config.cnf_width,
            config.cnf_hidden,
            config.num_classes if uses_labels else 0,
            config.cnf_label_dim if uses_labels else 0,
        )
        self.latent_dim, self.t0, self.t1 = config.latent_dim, config.t0, config.t1
        self.uses_labels = uses_labels
        self.register_buffer("base_std", torch.tensor(math.sqrt(config.base_variance)))

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        var = self.base_std**2
        return -0.5 * (z * z / var + torch.log(2 * math.pi * var)).sum(-1)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise is drawn on the generator's device (CPU by default) so seeds mean the same everywhere."""
        eps = torch.randn(n, self.latent_dim, generator=generator)
        return eps.to(self.base_std.device) * self.base_std

    def _solve(
        self,
        z: torch.Tensor,
        times: torch.Tensor,
        labels: torch.Tensor | None,
        solver: SolverConfig,
        density: bool,
        kinetic: bool,
    ) -> Solution:
        """Integrate z (and, when asked, the log-density change and kinetic energy) over `times`."""
        counter = EvaluationCounter(solver.max_nfe)
        solve = self._solve_fixed if solver.method in FIXED_STEP_METHODS else self._solve_adaptive
        path, change, energy = solve(Problem(z, times.to(z), labels, solver, density, kinetic), counter)
        if not torch.isfinite(path).all():
            raise SolverError("ODE solve produced non-finite latents")
        return Solution(path, change, energy, counter.calls)

    def _solve_fixed(self, p: Problem, counter: EvaluationCounter) -> Integrated:
        """Exactly `steps` steps in one loop (fixed_step.py). The evaluation times are known in advance and in
        order, so every stage's parameters come from one hypernetwork call before the solve starts."""
        method, steps = p.solver.method, p.solver.steps
        table = self.dynamics.parameters_at(fixed_step.stage_times(p.times, method, steps))
        groups = LabelGroups.of(p.labels, len(p.z), self.uses_labels)

        def derivative(call: int, state: list[torch.Tensor]) -> list[torch.Tensor]:
            counter.call()
            dz, trace = self.dynamics.velocity(table[call], state[0], groups, with_trace=p.density)
            return _derivatives(dz, trace, p.kinetic)

        z = groups.sort(p.z)
        state = [z, *(z.new_zeros(len(z)) for _ in range(p.density + p.kinetic))]
        out = fixed_step.integrate(derivative, state, p.times, method, steps)
        path = groups.unsort(out[0], dim=1)
        return path, groups.unsort(out[1][-1]) if p.density else None, groups.unsort(out[-1][-1]) if p.kinetic else None

    def _solve_adaptive(self, p: Problem, counter: EvaluationCounter) -> Integrated:
        """torchode's dopri5 with step-size control per sample: each sample takes the steps its own error
        estimate asks for, so its result is the same alone or in any batch (torchdiffeq shares one step size
        across the batch). It runs in float64: at the usual tolerances (1e-5) float32 rounding, which differs
        with the batch's shape, is a few percent of the error estimate and would flip accept/reject decisions.
        The state is packed as columns [z, d log p, kinetic energy]."""
        (n, d), dtype = p.z.shape, p.z.dtype
        z, times, density, kinetic = p.z.double(), p.times.double(), p.density, p.kinetic

        def func(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            counter.call()
            params = self.dynamics.row_parameters(t, p.labels)
            dz, trace = self.dynamics.row_velocity(params, y[:, :d], with_trace=density)
            return torch.cat([column.reshape(n, -1) for column in _derivatives(dz, trace, kinetic)], dim=1)

        def norm(error: torch.Tensor) -> torch.Tensor:
            """torchdiffeq's mixed norm: the worst of the latents' RMS and each scalar column."""
            rms = error[:, :d].pow(2).mean(1).sqrt()
            return torch.cat([rms[:, None], error[:, d:].abs()], dim=1).amax(1)

        term = torchode.ODETerm(func, with_stats=False)
        controller = torchode.IntegralController(atol=p.solver.atol, rtol=p.solver.rtol, term=term, norm=norm)
        integrator = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller)
        y0 = torch.cat([z, z.new_zeros(n, density + kinetic)], dim=1)
        solution = integrator.solve(torchode.InitialValueProblem(y0=y0, t_eval=times.expand(n, -1)))
        if failed := sorted(set(solution.status.tolist()) - {torchode.Status.SUCCESS.value}):
            raise SolverError(f"ODE solve failed: {', '.join(torchode.Status(code).name for code in failed)}")
        ys = solution.ys.transpose(0, 1).to(dtype)  # (times, n, columns)
        change = ys[-1, :, d] if density else None
        energy = ys[-1, :, -1] if kinetic else None
        return ys[..., :d], change, energy

    def log_prob(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        solver: SolverConfig | None = None,
        kinetic: bool = False,
    ) -> FlowResult:
        """Exact log p(z) of latents at t1: integrate back to t0 and add the accumulated trace."""
        solver = solver or DEFAULT_SOLVER
        times = torch.tensor([self.t1, self.t0], dtype=torch.float64)
        solved = self._solve(z, times, labels, solver, density=True, kinetic=kinetic)
        z0, change = solved.path[-1], solved.log_density_change
        assert change is not None  # tracked: density=True
        energy = -solved.kinetic if solved.kinetic is not None else None  # integrated from t1 down to t0
        return FlowResult(path=solved.path, log_prob=self.base_log_prob(z0) - change, kinetic=energy, nfe=solved.nfe)

    def transform(
        self,
        z0: torch.Tensor,
        labels: torch.Tensor | None = None,
        solver: SolverConfig | None = None,
        steps: int = 2,
    ) -> FlowResult:
        """Push base samples forward to t1; `path` holds the latents at `steps` evenly spaced times."""
        solver = solver or DEFAULT_SOLVER
        times = torch.linspace(self.t0, self.t1, steps, dtype=torch.float64)  # cast to the latents' dtype
        solved = self._solve(z0, times, labels, solver, density=False, kinetic=False)
        return FlowResult(path=solved.path, log_prob=None, kinetic=None, nfe=solved.nfe)
