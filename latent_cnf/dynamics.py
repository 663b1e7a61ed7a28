"""The CNF's dynamics: a hypernetwork maps time t (and, when conditional, a label embedding) to the parameters
W, U, G, B of `width` units (the NeuralODE CNF example's design), and

    f(z, t) = 1/width * sum_k (U_k * sigmoid(G_k)) * tanh(W_k . z + B_k).

Its Jacobian is 1/width * sum_k (1 - h_k^2) (U_k * sigmoid(G_k)) W_k^T, so the trace is
1/width * sum_k (1 - h_k^2) (W_k . U_k * sigmoid(G_k)): exact, batched, one matmul.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


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
        """f(z, t[, labels]) and its trace, rows in the caller's order (one hypernetwork call): the dynamics in
        the form torchdiffeq's odeint calls, the definition the solvers' batched forms (`velocity` over a
        precomputed table, `row_velocity`) are tested against, and what bench/train_step.py's re-creation of
        the original integrates with torchdiffeq."""
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
