"""One served model version, as KServe's Model: the loaded weights and their records, and what belongs to this
model alone: which solver its requests get and what a request costs it. The registry (service/registry.py)
makes and drops these; the hub (service/inference.py) runs requests on them."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from latent_cnf.completion import IMPUTATION_STEPS, prior_draws
from latent_cnf.config import DEFAULT_SOLVER, SolverConfig
from latent_cnf.latent_map import LatentMap
from latent_cnf.model import LatentCNF

from .batching import Part
from .cost import WorkShape, measured_dopri5_nfe, row_evaluation_units, solve_evaluations
from .failures import InvalidSolver, LabelNotSupported, RequestTooCostly
from .model_calls import BatchKey, instance
from .settings import Settings

MEMOS = 4096  # entries of a per-key memo (least recently used go): solver fields in requests make keys unbounded


@dataclass(eq=False)
class ServedModel:
    name: str
    version: int  # of the model repository (service/repository.py)
    model: LatentCNF
    training: dict[str, Any]  # training.json: how the weights were made
    serving: dict[str, Any]  # serving.json: score reference, OOD bounds, calibrated solvers
    sha256: str
    device: str
    reference: np.ndarray | None  # the score reference's log-likelihood quantiles 0..100
    settings: Settings
    latent_map: LatentMap | None = None  # latent_map.json: the fixed 2-D view of the latent
    # Remembered per key: the batcher asks for a key's shape on every call it assembles, and most requests
    # repeat a few plans (planning was ~3 % of a one-sample request's CPU). They go with this version.
    work_shape: Callable[[BatchKey], WorkShape] = field(init=False, repr=False)
    plan: Callable[[BatchKey, int], tuple[list[Part], bool]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.work_shape = functools.lru_cache(maxsize=MEMOS)(self._work_shape)
        self.plan = functools.lru_cache(maxsize=MEMOS)(self._plan)

    @functools.cached_property
    def default_sample_solver(self) -> SolverConfig:
        """What requests that name no solver get (remembered: most requests name none)."""
        return self._sample_solver({})

    @property
    def prior_uses_labels(self) -> bool:
        return self.model.prior.uses_labels

    @property
    def instance(self) -> str:
        return instance(self.name, self.version)

    @property
    def key_fields(self) -> dict[str, Any]:
        """What a BatchKey takes from the model: its name and version."""
        return {"model": self.name, "version": self.version}

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def check_label(self, label: int | None) -> None:
        if label is not None and not self.prior_uses_labels:
            raise LabelNotSupported(f"model {self.name!r} is not label-conditioned: omit 'label'")

    def sample_solver(self, request: dict[str, Any] | None = None) -> SolverConfig:
        """Where a served sampling solver is chosen, each layer over the one before: the model's own (the
        calibrated solver of its serving.json, else latent_cnf.config.DEFAULT_SOLVER), the LATENT_CNF_SOLVER_*
        settings that are set, then the fields of the request's `solver`."""
        return self._sample_solver(request) if request else self.default_sample_solver

    def _sample_solver(self, request: dict[str, Any]) -> SolverConfig:
        s = self.settings
        settings = {"method": s.solver_method, "steps": s.solver_steps, "rtol": s.solver_rtol, "atol": s.solver_atol}
        return self._layered(self.model.sample_solver, settings, request)

    def score_solver(self) -> SolverConfig:
        """Where a served scoring solver is chosen: the model's own (its serving.json's calibrated solver), or
        DEFAULT_SOLVER with LATENT_CNF_EXACT_SCORES; the tolerance settings that are set over it."""
        s = self.settings
        base = DEFAULT_SOLVER if s.exact_scores else self.model.score_solver
        return self._layered(base, {"rtol": s.solver_rtol, "atol": s.solver_atol})

    def _layered(self, base: SolverConfig, *layers: dict[str, Any]) -> SolverConfig:
        """`base` with each layer's given fields over it, and the settings' NFE limit, which always applies."""
        changes: dict[str, Any] = {"max_nfe": self.settings.max_nfe}
        for layer in layers:
            changes |= {name: value for name, value in layer.items() if value is not None}
        try:
            return dataclasses.replace(base, **changes)
        except ValueError as error:
            raise InvalidSolver(str(error)) from None

    def _work_shape(self, key: BatchKey) -> WorkShape:
        """The cost of one sample (or one scored image) of requests with this key (self.work_shape, remembered)."""
        hyper = sum(p.numel() for p in self.model.prior.parameters())  # the CNF's are its hypernetwork's
        row_units = row_evaluation_units(key.solver, hyper)
        classes = self.model.config.score_classes
        if key.kind == "score":
            rows = key.importance_samples * classes
            nfe = solve_evaluations(key.solver, 2, measured_dopri5_nfe(self.serving, "scoring"))
            # + 1 row: the density at the posterior mean
            return WorkShape(rows=rows + 1, nfe=nfe, decoded=rows, row_units=row_units)
        if key.kind == "complete":  # every proposal's density, and the prior's draws pushed through the flow first
            rows = key.importance_samples * classes
            pushed = prior_draws(key.importance_samples) * classes
            nfe = solve_evaluations(key.solver, 2, measured_dopri5_nfe(self.serving, "scoring"))
            decoded = rows + IMPUTATION_STEPS * classes
            return WorkShape(rows=rows + pushed, nfe=nfe, decoded=decoded, row_units=row_units)
        nfe = solve_evaluations(key.solver, key.frames, measured_dopri5_nfe(self.serving, "sampling"))
        return WorkShape(rows=1, nfe=nfe, decoded=key.frames, row_units=row_units)

    def most_units(self, key: BatchKey) -> int:
        """Memory cap of one call: samples, or the images whose latent rows (K x labels) fit max_score_rows."""
        if key.kind in ("score", "complete"):
            classes = self.model.config.score_classes
            return max(1, self.settings.max_score_rows // (key.importance_samples * classes))
        return self.settings.max_batch

    def capacity(self, key: BatchKey) -> int:
        """Most cost merged into one call: one full part (see service/cost.py)."""
        shape = self.work_shape(key)
        return shape.marginal * shape.units_per_part(self.settings.max_call_cost, self.most_units(key))

    def _plan(self, key: BatchKey, units: int) -> tuple[list[Part], bool]:
        """Cut a request of `units` samples or images into parts (each part's payload is the slice of the
        request it covers) and tell whether it is heavy; refuse it over the per-request budget (self.plan,
        remembered)."""
        shape = self.work_shape(key)
        slices = shape.parts(units, self.settings.max_call_cost, self.most_units(key))
        cost = sum(shape.cost(piece.stop - piece.start) for piece in slices)
        if cost > self.settings.max_request_cost:
            raise RequestTooCostly(
                f"this request costs {cost:,} units of work, over the limit of {self.settings.max_request_cost:,} "
                "per request (LATENT_CNF_MAX_REQUEST_COST): ask for fewer samples or images, fewer importance "
                "samples, or fewer solver steps",
            )
        parts = [Part(shape.marginal * (piece.stop - piece.start), piece) for piece in slices]
        return parts, cost > self.settings.max_call_cost
