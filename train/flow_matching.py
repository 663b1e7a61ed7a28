"""Conditional flow matching for the latent prior, with minibatch optimal-transport pairing.

Lipman et al. 2022: regress the flow's velocity on the straight path from a base draw z0 to a data point z1,
    z_s = (1 - s) z0 + s z1,  target dz_s/ds = z1 - z0,  s in [0, 1],
one velocity evaluation per sample and no ODE solve. Pairing each batch's base draws with its latents by
exact optimal transport (Tong et al. 2023) makes the paths cross less, so the learned flow is straighter and
few solver steps follow it. Conventions of LatentFlow (cnf.py): the base is at t0, the latents at t1, so
s = (t - t0) / (t1 - t0) and the flow's velocity is the path's divided by t1 - t0.
"""

from __future__ import annotations

import torch
from flow_matching.path import AffineProbPath
from flow_matching.path.scheduler import CondOTScheduler
from scipy.optimize import linear_sum_assignment

from latent_cnf.cnf import LatentFlow

STRAIGHT_PATH = AffineProbPath(CondOTScheduler())  # x_s = (1 - s) x_0 + s x_1, dx_s/ds = x_1 - x_0


def ot_pairing(z0: torch.Tensor, z1: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """z0's rows reordered so that row i goes with z1[i] at the least total squared distance, within each
    label (a label-conditioned flow carries each label's base draws to that label's latents only)."""
    groups = [torch.arange(len(z1))] if labels is None else [torch.nonzero(labels == y)[:, 0] for y in labels.unique()]
    order = torch.arange(len(z1))
    for rows in groups:
        cost = torch.cdist(z1[rows].double(), z0[rows].double()).square()
        targets, sources = linear_sum_assignment(cost.cpu().numpy())
        order[rows[targets]] = rows[sources]
    return z0[order.to(z0.device)]


def velocity(flow: LatentFlow, z: torch.Tensor, times: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The flow's dz/dt at each row's own time (what the solvers integrate)."""
    params = flow.dynamics.row_parameters(times, labels)
    return flow.dynamics.row_velocity(params, z, with_trace=False)[0]


def flow_matching_loss(
    flow: LatentFlow,
    z1: torch.Tensor,
    labels: torch.Tensor | None = None,
    ot: bool = True,
    generator: torch.Generator | None = None,
    z0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error (summed over latent dimensions) between the path's velocity in s and the flow's,
    (t1 - t0) f(z_t, t): latents in their own units whatever the flow's time span. Base draws z0 coupled
    with z1 already (reflow, train/reflow.py) are used as given; otherwise they are drawn and, with `ot`,
    paired."""
    if z0 is None:
        z0 = flow.base_sample(len(z1), generator).to(z1)
        z0 = ot_pairing(z0, z1, labels) if ot else z0
    s = torch.rand(len(z1), generator=generator).to(z1)
    path = STRAIGHT_PATH.sample(x_0=z0, x_1=z1, t=s)
    span = flow.t1 - flow.t0
    predicted = span * velocity(flow, path.x_t, flow.t0 + span * s, labels)
    return (predicted - path.dx_t).square().sum(-1).mean()
