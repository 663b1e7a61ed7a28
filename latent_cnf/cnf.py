"""The CNF prior: hypernetwork dynamics with a closed-form exact trace, and guarded ODE solves.

Dynamics (the NeuralODE CNF example's design): a hypernetwork maps time t (and, when conditional, a label
embedding) to the parameters W, U, G, B of `width` units, and

    f(z, t) = 1/width * sum_k (U_k * sigmoid(G_k)) * tanh(W_k . z + B_k).

Its Jacobian is 1/width * sum_k (1 - h_k^2) (U_k * sigmoid(G_k)) W_k^T, so the trace is
1/width * sum_k (1 - h_k^2) (W_k . U_k * sigmoid(G_k)): exact, batched, one matmul.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint

from .config import FIXED_STEP_METHODS, ModelConfig, SolverConfig


class SolverError(RuntimeError):
    """An ODE solve exceeded its NFE budget or produced non-finite values."""


class _Abort(Exception):
    """Raised inside the ODE function; turned into SolverError outside torchdiffeq."""


@dataclass
class UnitParameters:
    """The units' parameters at one time, for each of L labels (L = 1 when unconditional)."""

    weight: torch.Tensor  # W, (L, width, d)
    output: torch.Tensor  # U * sigmoid(G) / width, (L, width, d)
    bias: torch.Tensor  # B, (L, width)
    unit_trace: torch.Tensor  # W_k . output_k, (L, width): the trace is sum_k (1 - h_k^2) unit_trace_k


class HyperDynamics(nn.Module):
    """dz/dt = f(z, t[, label]) with the exact divergence in closed form."""

    def __init__(self, latent_dim: int, width: int, hidden: int, num_labels: int = 0, label_dim: int = 0):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.label_embedding = nn.Embedding(num_labels, label_dim) if num_labels else None
        self.hyper = nn.Sequential(
            nn.Linear(1 + label_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 3 * width * latent_dim + width),
        )

    def parameters_at(self, times: torch.Tensor) -> list[UnitParameters]:
        """The units' parameters at each of `times` from one hypernetwork call: the parameters depend on t
        (and the label) only, so a fixed-step solve can compute all of them before it starts."""
        time = times.reshape(-1, 1, 1).to(self.hyper[0].weight.dtype)
        if self.label_embedding is None:
            inputs = time
        else:
            table = self.label_embedding.weight
            inputs = torch.cat([time.expand(-1, len(table), 1), table.expand(len(time), -1, -1)], dim=2)
        params = self.hyper(inputs)
        t, n, k, d = len(time), params.shape[1], self.width, self.latent_dim
        weight = params[..., : k * d].reshape(t, n, k, d)
        u = params[..., k * d : 2 * k * d].reshape(t, n, k, d)
        gate = params[..., 2 * k * d : 3 * k * d].reshape(t, n, k, d)
        bias = params[..., 3 * k * d :]
        output = u * torch.sigmoid(gate) / k
        unit_trace = (weight * output).sum(-1)
        return [UnitParameters(*p) for p in zip(weight, output, bias, unit_trace, strict=True)]

    def velocity(
        self, p: UnitParameters, z: torch.Tensor, labels: torch.Tensor | None, with_trace: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Label-conditioned dynamics run as dense matmuls over all labels' units, then pick each sample's
        label: two GEMMs instead of one tiny matmul per sample."""
        n_labels, k, d = p.weight.shape
        pre = torch.addmm(p.bias.reshape(-1), z, p.weight.reshape(n_labels * k, d).T)
        if n_labels == 1:
            h = torch.tanh(pre)
            dz = h @ p.output[0]
            unit_trace = p.unit_trace[0]
        else:
            if labels is None:
                raise ValueError("this CNF is label-conditioned: pass labels")
            rows = torch.arange(len(z), device=z.device)
            h = torch.tanh(pre.reshape(len(z), n_labels, k)[rows, labels])
            one_hot = torch.zeros(len(z), n_labels, k, dtype=h.dtype, device=h.device)
            one_hot[rows, labels] = h
            dz = one_hot.reshape(len(z), n_labels * k) @ p.output.reshape(n_labels * k, d)
            unit_trace = p.unit_trace[labels]
        if not with_trace:
            return dz, None
        return dz, ((1 - h * h) * unit_trace).sum(-1)

    def forward(
        self, t: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None, with_trace: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.velocity(self.parameters_at(t)[0], z, labels, with_trace)


def fixed_grid(times: torch.Tensor, steps: int) -> torch.Tensor:
    """The step boundaries of a fixed-step solve over the span of `times`."""
    return torch.linspace(times[0].item(), times[-1].item(), steps + 1, dtype=times.dtype, device=times.device)


# Evaluation times per step of torchdiffeq's fixed-grid methods, in call order, as fractions of the step
# (its rk4 is the 3/8 rule: k1..k4 at 0, 1/3, 2/3, 1). A fixed-step solve precomputes the parameters there.
STAGE_FRACTIONS = {"euler": (0.0,), "midpoint": (0.0, 0.5), "rk4": (0.0, 1 / 3, 2 / 3, 1.0)}


@dataclass
class FlowResult:
    """Outcome of integrating latents through the flow."""

    z: torch.Tensor  # end point of the solve (or all requested times for trajectories)
    log_prob: torch.Tensor | None  # log p(z) at the start point, when densities were tracked
    kinetic: torch.Tensor | None  # integral of ||f||^2 dt per sample, when requested
    nfe: int


class LatentFlow(nn.Module):
    """CNF from the base N(0, base_variance I) at t0 to the latent distribution at t1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        conditional = config.cnf_conditional
        self.dynamics = HyperDynamics(
            config.latent_dim,
            config.cnf_width,
            config.cnf_hidden,
            config.num_classes if conditional else 0,
            config.cnf_label_dim if conditional else 0,
        )
        self.latent_dim, self.t0, self.t1 = config.latent_dim, config.t0, config.t1
        self.conditional = config.cnf_conditional
        self.register_buffer("base_std", torch.tensor(math.sqrt(config.base_variance)))

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        var = self.base_std**2
        return -0.5 * (z * z / var + torch.log(2 * math.pi * var)).sum(-1)

    def base_sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise is drawn on the generator's device (CPU by default) so seeds mean the same everywhere."""
        eps = torch.randn(n, self.latent_dim, generator=generator)
        return eps.to(self.base_std.device) * self.base_std

    def _parameter_source(
        self, times: torch.Tensor, solver: SolverConfig
    ) -> Callable[[torch.Tensor, int], UnitParameters]:
        """The units' parameters for the n-th evaluation at time t. A fixed-step solve evaluates at known times
        in a known order, so every stage's parameters come from one hypernetwork call before it starts;
        an adaptive solve computes them per evaluation."""
        if solver.method not in FIXED_STEP_METHODS:
            return lambda t, call: self.dynamics.parameters_at(t)[0]
        grid = fixed_grid(times, solver.steps)
        fractions = torch.tensor(STAGE_FRACTIONS[solver.method]).to(grid)
        stage_times = grid[:-1, None] + fractions * (grid[1:] - grid[:-1])[:, None]
        table = self.dynamics.parameters_at(stage_times.reshape(-1))
        return lambda t, call: table[call]

    def _solve(
        self,
        z: torch.Tensor,
        times: torch.Tensor,
        labels: torch.Tensor | None,
        solver: SolverConfig,
        density: bool,
        kinetic: bool,
    ) -> FlowResult:
        nfe = 0
        n = len(z)
        parameters = self._parameter_source(times.to(z), solver)

        def func(t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            nonlocal nfe
            nfe += 1
            if nfe > solver.max_nfe:
                raise _Abort(
                    f"ODE solve exceeded max_nfe={solver.max_nfe}; loosen the tolerances or use a fixed-step solver"
                )
            dz, trace = self.dynamics.velocity(parameters(t, nfe - 1), state[0], labels, with_trace=density)
            out = [dz]
            if density:
                out.append(-trace)
            if kinetic:
                out.append((dz * dz).sum(-1))
            return tuple(out)

        state = [z]
        if density:
            state.append(z.new_zeros(n))
        if kinetic:
            state.append(z.new_zeros(n))
        options = {}
        if solver.method in FIXED_STEP_METHODS:  # exactly `steps` steps, the grid the parameters were built on
            options["grid_constructor"] = lambda func, y0, t: fixed_grid(t, solver.steps)
        try:
            out = odeint(
                func,
                tuple(state),
                times.to(z),
                method=solver.method,
                rtol=solver.rtol,
                atol=solver.atol,
                options=options,
            )
        except _Abort as error:
            raise SolverError(str(error)) from None
        except AssertionError as error:  # torchdiffeq's own underflow check on the step size
            raise SolverError(f"ODE solve failed: {error}") from None
        if not torch.isfinite(out[0]).all():
            raise SolverError("ODE solve produced non-finite latents")
        return FlowResult(
            z=out[0],
            log_prob=out[1][-1] if density else None,
            kinetic=out[-1][-1] if kinetic else None,
            nfe=nfe,
        )

    def log_prob(
        self,
        z: torch.Tensor,
        labels: torch.Tensor | None = None,
        solver: SolverConfig | None = None,
        kinetic: bool = False,
    ) -> FlowResult:
        """Exact log p(z) of latents at t1: integrate back to t0 and add the accumulated trace."""
        solver = solver or SolverConfig()
        times = torch.tensor([self.t1, self.t0])
        result = self._solve(z, times, labels, solver, density=True, kinetic=kinetic)
        z0 = result.z[-1]
        result.log_prob = self.base_log_prob(z0) - result.log_prob
        result.z = z0
        if result.kinetic is not None:  # integrated from t1 down to t0, so the sign flips
            result.kinetic = -result.kinetic
        return result

    def transform(
        self,
        z0: torch.Tensor,
        labels: torch.Tensor | None = None,
        solver: SolverConfig | None = None,
        steps: int = 2,
    ) -> FlowResult:
        """Push base samples forward to t1; `z` holds the latents at `steps` evenly spaced times."""
        solver = solver or SolverConfig()
        times = torch.linspace(self.t0, self.t1, steps)
        return self._solve(z0, times, labels, solver, density=False, kinetic=False)
