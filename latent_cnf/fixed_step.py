"""Fixed-step integration as one plain loop: the explicit Runge-Kutta methods torchdiffeq uses for euler,
midpoint and rk4, step for step and in the same arithmetic order, without its generic machinery per step.
Requested times are grid points (see fixed_grid), so no interpolation is needed.

The dynamics' parameters depend on time (and label) only, so the caller computes them for every stage of
every step before the loop (`stage_times`) and the loop hands the k-th evaluation the k-th set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

State = list[torch.Tensor]
Derivative = Callable[[int, State], State]  # (evaluation index, state) -> d state / dt

# Where each method evaluates inside a step, as fractions of the step, in call order (rk4 is torchdiffeq's
# "rk4", the 3/8 rule: k1..k4 at 0, 1/3, 2/3, 1).
STAGE_FRACTIONS = {"euler": (0.0,), "midpoint": (0.0, 0.5), "rk4": (0.0, 1 / 3, 2 / 3, 1.0)}


def fixed_grid(times: torch.Tensor, steps: int) -> torch.Tensor:
    """The step boundaries of a fixed-step solve over evenly spaced `times`: at least `steps` steps, rounded up
    to a multiple of the intervals between them, so that every requested time is a grid point (a trajectory's
    frames are solved states, not blends of two)."""
    intervals = len(times) - 1
    total = -(-steps // intervals) * intervals
    return torch.linspace(times[0].item(), times[-1].item(), total + 1, dtype=times.dtype, device=times.device)


def stage_times(times: torch.Tensor, method: str, steps: int) -> torch.Tensor:
    """Every time the dynamics are evaluated at, in call order."""
    grid = fixed_grid(times, steps)
    fractions = torch.tensor(STAGE_FRACTIONS[method], dtype=grid.dtype, device=grid.device)
    return (grid[:-1, None] + fractions * (grid[1:] - grid[:-1])[:, None]).reshape(-1)


def _axpy(y: State, dt: torch.Tensor, k: State) -> State:
    return [a + dt * b for a, b in zip(y, k, strict=True)]


def _step(method: str, f: Derivative, call: int, dt: torch.Tensor, y: State) -> State:
    """The increment of one step (torchdiffeq's step functions, same expressions)."""
    if method == "euler":
        return [dt * k for k in f(call, y)]
    if method == "midpoint":
        half = 0.5 * dt
        return [dt * k for k in f(call + 1, _axpy(y, half, f(call, y)))]
    third = 1 / 3
    k1 = f(call, y)
    k2 = f(call + 1, [a + dt * b * third for a, b in zip(y, k1, strict=True)])
    k3 = f(call + 2, [a + dt * (c - b * third) for a, b, c in zip(y, k1, k2, strict=True)])
    k4 = f(call + 3, [a + dt * (b - c + d) for a, b, c, d in zip(y, k1, k2, k3, strict=True)])
    return [(a + 3 * (b + c) + d) * dt * 0.125 for a, b, c, d in zip(k1, k2, k3, k4, strict=True)]


def integrate(f: Derivative, y0: Sequence[torch.Tensor], times: torch.Tensor, method: str, steps: int) -> State:
    """The state at each of the evenly spaced `times` (increasing or decreasing), each stacked over the times."""
    grid = fixed_grid(times, steps)
    dts = grid.diff()
    every = (len(grid) - 1) // (len(times) - 1)
    stages = len(STAGE_FRACTIONS[method])
    out: list[State] = [list(y0)]
    y = list(y0)
    for i in range(len(dts)):
        y = [a + b for a, b in zip(y, _step(method, f, i * stages, dts[i], y), strict=True)]
        if (i + 1) % every == 0:
            out.append(y)
    return [torch.stack(column) for column in zip(*out, strict=True)]
