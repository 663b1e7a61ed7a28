"""The CNF prior: hypernetwork dynamics with a closed-form exact trace, and guarded ODE solves.

Dynamics (the NeuralODE CNF example's design): a hypernetwork maps time t (and, when conditional, a label
embedding) to the parameters W, U, G, B of `width` units, and

    f(z, t) = 1/width * sum_k (U_k * sigmoid(G_k)) * tanh(W_k . z + B_k).

Its Jacobian is 1/width * sum_k (1 - h_k^2) (U_k * sigmoid(G_k)) W_k^T, so the trace is
1/width * sum_k (1 - h_k^2) (W_k . U_k * sigmoid(G_k)): exact, batched, one matmul.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torchode
from torch import nn
from torch.nn import functional as F

from . import fixed_step
from .config import DEFAULT_SOLVER, FIXED_STEP_METHODS, ModelConfig, SolverConfig


class SolverError(RuntimeError):
    """An ODE solve exceeded its NFE budget or produced non-finite values."""


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

    def _units(self, inputs: torch.Tensor, dtype: torch.dtype) -> UnitParameters:
        """The units' parameters for hypernetwork inputs (..., 1 + label_dim), computed in `dtype` (the weights
        are cast, differentiably). The last layer runs as one matmul per kind of parameter, so that each comes
        out contiguous."""
        x = inputs.to(dtype)
        *body, last = self.hyper
        assert isinstance(last, nn.Linear)
        for layer in body:
            x = F.linear(x, layer.weight.to(dtype), layer.bias.to(dtype)) if isinstance(layer, nn.Linear) else layer(x)
        k, d = self.width, self.latent_dim
        sizes = [k * d] * 3 + [k]
        w, b = torch.split(last.weight.to(dtype), sizes), torch.split(last.bias.to(dtype), sizes)
        weight = torch.unflatten(F.linear(x, w[0], b[0]), -1, (k, d))
        gate = torch.sigmoid(F.linear(x, w[2], b[2]))
        output = torch.unflatten(F.linear(x, w[1] / k, b[1] / k) * gate, -1, (k, d))  # U * sigmoid(G) / width
        bias = F.linear(x, w[3], b[3])
        return UnitParameters(weight, output, bias, (weight * output).sum(-1))

    def parameters_at(self, times: torch.Tensor) -> list[UnitParameters]:
        """The units' parameters at each of `times` (for every label) from one hypernetwork call: they depend on
        t and the label only, so a fixed-step solve can compute all of them before it starts."""
        dtype = next(self.hyper.parameters()).dtype
        time = times.reshape(-1, 1, 1).to(dtype)
        if self.label_embedding is None:
            inputs = time
        else:
            table = self.label_embedding.weight
            inputs = torch.cat([time.expand(-1, len(table), 1), table.expand(len(time), -1, -1)], dim=2)
        units = self._units(inputs, dtype)
        return [UnitParameters(*p) for p in zip(units.weight, units.output, units.bias, units.unit_trace, strict=True)]

    def row_parameters(self, times: torch.Tensor, labels: torch.Tensor | None) -> UnitParameters:
        """One parameter set per row, at each row's own time, computed in the dtype of `times`: an adaptive
        solve steps every sample on its own clock, so that a sample's result does not depend on its batch-mates."""
        inputs = times.reshape(-1, 1)
        if self.label_embedding is not None:
            if labels is None:
                raise ValueError("this CNF is label-conditioned: pass labels")
            inputs = torch.cat([inputs, self.label_embedding.weight.to(times.dtype)[labels]], dim=1)
        return self._units(inputs, times.dtype)

    @staticmethod
    def velocity(
        p: UnitParameters, z: torch.Tensor, groups: LabelGroups, with_trace: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """f and its trace for rows arranged as `groups` says: each label's units as two dense products over
        that label's rows, or every label's units on every row, each row keeping its own label's result."""
        if groups.labels is not None:
            labels, width, d = p.weight.shape
            h = torch.tanh(torch.addmm(p.bias.reshape(-1), z, p.weight.reshape(labels * width, d).T))
            h = h.view(len(z), labels, width)
            rows = torch.arange(len(z), device=z.device)
            dz = torch.bmm(h.transpose(0, 1), p.output)[groups.labels, rows]
            return dz, ((1 - h * h) * p.unit_trace).sum(-1)[rows, groups.labels] if with_trace else None
        dzs: list[torch.Tensor] = []
        traces: list[torch.Tensor] = []
        for label, rows in enumerate(torch.split(z, groups.counts)):
            if len(rows):
                h = torch.tanh(torch.addmm(p.bias[label], rows, p.weight[label].T))
                dzs.append(h @ p.output[label])
                if with_trace:
                    traces.append((1 - h * h) @ p.unit_trace[label])
        if len(dzs) == 1:
            return dzs[0], traces[0] if with_trace else None
        return torch.cat(dzs), torch.cat(traces) if with_trace else None

    @staticmethod
    def row_velocity(p: UnitParameters, z: torch.Tensor, with_trace: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """f and its trace with one parameter set per row (see `row_parameters`)."""
        h = torch.tanh(torch.bmm(p.weight, z.unsqueeze(2)).squeeze(2) + p.bias)
        dz = torch.bmm(h.unsqueeze(1), p.output).squeeze(1)
        return dz, ((1 - h * h) * p.unit_trace).sum(-1) if with_trace else None

    def forward(
        self, t: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None, with_trace: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """f(z, t[, labels]) and its trace, rows in the caller's order (one hypernetwork call)."""
        groups = LabelGroups.of(labels, len(z), self.label_embedding is not None)
        dz, trace = self.velocity(self.parameters_at(t)[0], groups.sort(z), groups, with_trace)
        return groups.unsort(dz), groups.unsort(trace) if trace is not None else None


@dataclass(frozen=True)
class LabelGroups:
    """How a label-conditioned solve meets its rows' labels. With many rows per label (scoring: K x 10 rows
    per image) the rows are sorted by label once per solve and each label's units run as dense products on
    that label's rows alone; with few (a small sampling batch of mixed labels), every label's units run on
    every row as two dense products and each row keeps its own label's result: ten times the arithmetic of
    a tiny problem costs less than ten tiny products, or than gathering a parameter set per row."""

    order: torch.Tensor | None  # rows by label (stable), or None: rows stay in the given order
    counts: list[int]  # rows per label, in label order (one count: a single group)
    labels: torch.Tensor | None = None  # set when every label runs on every row instead

    MIN_ROWS_PER_LABEL = 32  # where grouping overtakes every-label-on-every-row on a 2-core CPU (10 labels, width 32)

    @classmethod
    def of(cls, labels: torch.Tensor | None, rows: int, uses_labels: bool) -> LabelGroups:
        if not uses_labels:
            return cls(None, [rows])
        if labels is None:
            raise ValueError("this CNF is label-conditioned: pass labels")
        counts = torch.bincount(labels).tolist()
        present = sum(c > 0 for c in counts)
        if present > 1 and rows < cls.MIN_ROWS_PER_LABEL * present:
            return cls(None, [rows], labels)
        return cls(torch.argsort(labels, stable=True), counts)

    def sort(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x if self.order is None else x.index_select(dim, self.order)

    @functools.cached_property
    def inverse(self) -> torch.Tensor | None:
        """Where each sorted row came from (computed once, however many tensors are unsorted)."""
        return None if self.order is None else torch.argsort(self.order)

    def unsort(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return x if self.inverse is None else x.index_select(dim, self.inverse)


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


Solution = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # path, log-density change, kinetic energy


@dataclass
class FlowResult:
    """Outcome of integrating latents through the flow."""

    z: torch.Tensor  # end point of the solve (or all requested times for trajectories)
    log_prob: torch.Tensor | None  # log p(z) at the start point, when densities were tracked
    kinetic: torch.Tensor | None  # integral of ||f||^2 dt per sample, when requested
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
    ) -> FlowResult:
        """Integrate z (and, when asked, the log-density change and kinetic energy) over `times`."""
        counter = EvaluationCounter(solver.max_nfe)
        solve = self._solve_fixed if solver.method in FIXED_STEP_METHODS else self._solve_adaptive
        path, change, energy = solve(Problem(z, times.to(z), labels, solver, density, kinetic), counter)
        if not torch.isfinite(path).all():
            raise SolverError("ODE solve produced non-finite latents")
        return FlowResult(z=path, log_prob=change, kinetic=energy, nfe=counter.calls)

    def _solve_fixed(self, p: Problem, counter: EvaluationCounter) -> Solution:
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

    def _solve_adaptive(self, p: Problem, counter: EvaluationCounter) -> Solution:
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
        result = self._solve(z, times, labels, solver, density=True, kinetic=kinetic)
        z0 = result.z[-1]
        assert result.log_prob is not None  # tracked: density=True
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
        solver = solver or DEFAULT_SOLVER
        times = torch.linspace(self.t0, self.t1, steps, dtype=torch.float64)  # cast to the latents' dtype
        return self._solve(z0, times, labels, solver, density=False, kinetic=False)
