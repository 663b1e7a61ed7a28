"""What a request costs the model, known before it runs, and how it is cut into parts.

The unit is one latent row through one function evaluation of the flow. A solve of `rows` rows with `nfe`
evaluations costs nfe x (rows + EVALUATION_OVERHEAD_ROWS): each evaluation has a fixed cost (kernel launches,
the hypernetwork's parameters) that small batches pay in full. Decoding a row into an image costs
DECODER_EVALUATIONS units. `bench/cost_model.py` measures these constants against real calls (its figures
for the 2-core CPU in docs/benchmarks.md, "The cost model against measured calls"): over sampling and scoring
calls of 1 to 1,024 rows on mnist-final-cond and mnist-large, one charged unit took 0.05 to 0.21 us (scoring
0.09 to 0.12 us), so costs compare across kinds of request within that spread; the fixed overhead is
over-charged for the smallest calls and decoding under-charged for the largest. The estimate is
deterministic: whether a request is refused never depends on timing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latent_cnf.config import DEFAULT_SOLVER, FIXED_STEP_METHODS, SolverConfig
from latent_cnf.fixed_step import STAGE_FRACTIONS

EVALUATION_OVERHEAD_ROWS = 1024
DECODER_EVALUATIONS = 64
DOPRI5_DEFAULT_NFE = {"sampling": 64, "scoring": 256}  # when serving.json has no measured value
# An adaptive solve steps every row on its own clock, so it runs the hypernetwork once per row and evaluation
# (latent_cnf/dynamics.py row_parameters): such a row-evaluation costs 1 + hypernetwork parameters / this many
# units. A compromise between measurements on the 2-core CPU that disagree with batch shape: mnist-large
# (811k parameters) ~220 units a row-evaluation when sampling 256 at dopri5 1e-8 (charged 146); mnist-final-cond
# (28k) ~30 when sampling 256 but ~3 when scoring at K = 64, 641 rows an image (charged 6). bench/cost_model.py
# measures the sampling case again (dopri5 at the default tolerance, 256 samples): 14-16 units for
# mnist-final-cond, 530-1,200 for mnist-large, in the fitted unit of each run.
HYPERNETWORK_PARAMETERS_PER_UNIT = 5_600


def _tolerance(solver: SolverConfig) -> float:
    """The tighter of a dopri5 solve's two tolerances, which sets its step count."""
    return min(solver.rtol, solver.atol)


def solve_evaluations(solver: SolverConfig, frames: int, dopri5_nfe: int) -> int:
    """Function evaluations of one solve over `frames` evenly spaced times: exact for fixed-step methods (whose
    steps round up to a multiple of the frame intervals); for dopri5 the NFE measured at the default tolerance
    (DEFAULT_SOLVER's), scaled by tolerance^(-1/5) as the steps of a fifth-order method grow."""
    if solver.method in FIXED_STEP_METHODS:
        intervals = frames - 1
        return -(-solver.steps // intervals) * intervals * len(STAGE_FRACTIONS[solver.method])
    ratio = _tolerance(DEFAULT_SOLVER) / _tolerance(solver)
    growth: float = ratio**0.2  # typeshed's float ** float is Any (a negative base gives a complex)
    return max(6, math.ceil(dopri5_nfe * growth))


def row_evaluation_units(solver: SolverConfig, hypernetwork_parameters: int) -> int:
    """What one row through one evaluation costs: one unit with a shared parameter table (fixed steps), more
    when an adaptive solve computes every row's parameters itself."""
    if solver.method in FIXED_STEP_METHODS:
        return 1
    return 1 + math.ceil(hypernetwork_parameters / HYPERNETWORK_PARAMETERS_PER_UNIT)


def measured_dopri5_nfe(serving: Mapping[str, Any], kind: str) -> int:
    """The NFE of dopri5 at the default tolerance from serving.json's solver calibration (`kind` is sampling or
    scoring), which solve_evaluations scales to other tolerances."""
    for entry in serving.get("solvers", {}).get("calibration", {}).get(kind, []):
        spec = entry["spec"]
        if spec["method"] == "dopri5" and min(spec["rtol"], spec["atol"]) == _tolerance(DEFAULT_SOLVER):
            return int(entry["nfe"])
    return DOPRI5_DEFAULT_NFE[kind]


@dataclass(frozen=True)
class WorkShape:
    """How one unit of a request (a sample, or an image) goes through the model."""

    rows: int  # latent rows through the flow: 1 per sample, K x labels per scored image
    nfe: int  # function evaluations of its solve
    decoded: int  # rows decoded into images: frames per sample, K x labels per image
    row_units: int = 1  # cost of one row through one evaluation (see row_evaluation_units)

    @property
    def marginal(self) -> int:
        """Cost of one more unit in a call that runs anyway."""
        return self.rows * self.nfe * self.row_units + self.decoded * DECODER_EVALUATIONS

    def cost(self, units: int) -> int:
        """Cost of a call with `units` units: their marginal costs and the solve's fixed overhead."""
        return units * self.marginal + self.nfe * EVALUATION_OVERHEAD_ROWS

    def units_per_part(self, call_budget: int, most_units: int) -> int:
        """Units per part: as many as keep a call within the budget, at least one, at most `most_units` (the
        memory cap). When the solve's fixed overhead alone passes the budget (thousands of steps), cutting
        rows cannot bring a call under it and would only repeat the overhead per part: the part is whole."""
        room = call_budget - self.nfe * EVALUATION_OVERHEAD_ROWS
        units = room // self.marginal if room > 0 else most_units
        return max(1, min(most_units, units))

    def parts(self, units: int, call_budget: int, most_units: int) -> list[slice]:
        """The slices of a request's units that become its parts, in order."""
        size = self.units_per_part(call_budget, most_units)
        return [slice(start, min(start + size, units)) for start in range(0, units, size)]
