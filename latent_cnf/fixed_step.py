"""Fixed-step integration as one plain loop: the explicit Runge-Kutta methods torchdiffeq uses for euler,
midpoint and rk4, step for step and in the same arithmetic order, without its generic machinery per step.

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
    """The step boundaries of a fixed-step solve over the span of `times`."""
    return torch.linspace(times[0].item(), times[-1].item(), steps + 1, dtype=times.dtype, device=times.device)


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
    """The state at each of `times` (increasing or decreasing), each stacked over the times; between grid
    points by linear interpolation, as torchdiffeq does."""
    grid = fixed_grid(times, steps)
    direction = 1.0 if times[-1] >= times[0] else -1.0
    stages = len(STAGE_FRACTIONS[method])
    out: list[State] = [list(y0)]
    y = list(y0)
    for i, (t0, t1) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True)):
        dt = grid[i + 1] - grid[i]
        y1 = [a + b for a, b in zip(y, _step(method, f, i * stages, dt, y), strict=True)]
        while len(out) < len(times) and direction * (t1 - times[len(out)].item()) >= 0:
            t = times[len(out)].item()
            out.append(y1 if t == t1 else [a + (t - t0) / (t1 - t0) * (b - a) for a, b in zip(y, y1, strict=True)])
        y = y1
    return [torch.stack(column) for column in zip(*out, strict=True)]
