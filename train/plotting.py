"""What every figure of docs/ shares: a pyplot-free matplotlib Figure, the house style, PNGs that redraw to the
same bytes, error bars from intervals.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot: no global state, no GUI backend
(savefig renders with Agg), and tests can inspect what was drawn.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .metrics.intervals import Interval

DPI = 100  # docs/ shows the PNGs at their own size: 100 px per inch keeps them small and the text readable
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.4,
}
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
P = ParamSpec("P")


def styled(draw: Callable[P, Figure]) -> Callable[P, Figure]:
    """Run a drawing function in the house style: matplotlib reads its rc settings as each text and axes is made,
    so the style must hold for the whole drawing, and only there (matplotlib's global settings stay untouched)."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper


def new_figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list]:
    """A figure of `width` x `height` inches with `columns` side-by-side axes (inside a `styled` function)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def save(figure: Figure, path: Path) -> Path:
    """Write `figure` as a PNG whose bytes depend only on what was drawn (no version or date in its metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def error_bars(intervals: Sequence[Interval]) -> np.ndarray:
    """matplotlib's yerr/xerr (2, n): the distances from each mean down and up to its interval's ends."""
    return np.array([[i.mean - i.low for i in intervals], [i.high - i.mean for i in intervals]])
