"""python -m train.calibrate: the cheapest fixed-step solvers that stay within an error budget, per checkpoint.

Against a tight reference solve (per-sample dopri5 at rtol = atol = 1e-7), every candidate (euler, midpoint
and rk4 at 1 to 128 steps) is measured
- for sampling: on `--samples` base draws (labels from the uniform class prior), the worst pixel error of
  the decoded images and the relative change of their FID (judge features, against `--reference-images`
  training images);
- for scoring: on the first `--score-images` test images (binarized as in train.evaluate), the absolute error
  of the IWAE bound in nats, with K = `--importance-samples` and the same proposals as the reference.
A flow too stiff for any fixed-step candidate falls back to dopri5 at a looser tolerance than the reference.
The cheapest candidate (fewest function evaluations) within every budget is written to the model folder's
serving.json under "solvers", with its errors, every candidate's errors and this command; `latent_cnf.load`
then uses them whenever a call names no solver.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from latent_cnf import SolverConfig, data, model_folder
from latent_cnf.config import DEFAULT_SOLVER, FIXED_STEP_METHODS
from latent_cnf.device import resolve_device
from latent_cnf.judges import load_classifier
from latent_cnf.model import LatentCNF

from . import cli, serving_writer
from .evaluate import PROTOCOL_SEED, binarized, random_subset
from .metrics.features import embed
from .metrics.fid import fid
from .serving_writer import FolderOptions, provenance

REFERENCE = SolverConfig("dopri5", rtol=1e-7, atol=1e-7, max_nfe=1_000_000)
STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # from 1: a reflowed flow may need no more
# dopri5 candidates, for flows no fixed-step solver follows within budget; the default's tolerance is the one
# whose measured NFE service/cost.py reads
TOLERANCES = (1e-3, DEFAULT_SOLVER.rtol)


@dataclass(frozen=True)
class CalibrateOptions(FolderOptions):
    """The flags of python -m train.calibrate: how much is measured, and the error budgets."""

    seed: int = cli.flag(0, help="seed of the base draws and importance samples")
    samples: int = cli.flag(2000, help="base draws for the sampling errors")
    reference_images: int = cli.flag(10_000, help="training images behind the FID")
    score_images: int = cli.flag(100, help="test images for the score errors")
    importance_samples: int = cli.flag(16, help="K of the scores compared")
    max_pixel_error: float = cli.flag(0.05, help="sampling budget, pixel intensity")
    max_fid_change: float = cli.flag(0.005, help="sampling budget, relative FID change")
    max_score_error: float = cli.flag(0.02, help="scoring budget, nats per image")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, every option with its default."""


def build_parser() -> argparse.ArgumentParser:
    return serving_writer.parser("train.calibrate", __doc__, CalibrateOptions, formatter_class=HelpFormatter)


def candidates() -> list[SolverConfig]:
    """Every fixed-step method at 1 to 128 steps, then dopri5 at loose and usual tolerances."""
    fixed = [SolverConfig(method, steps=steps) for method in FIXED_STEP_METHODS for steps in STEPS]
    return fixed + [SolverConfig("dopri5", rtol=tol, atol=tol) for tol in TOLERANCES]


def row(solver: SolverConfig, nfe: int, **errors: float) -> dict:
    """One candidate's measurements; `nfe` is what the call measured (a dopri5 batch runs to its slowest sample)."""
    spec = {"method": solver.method, "steps": solver.steps, "rtol": solver.rtol, "atol": solver.atol}
    return {"solver": str(solver), "nfe": nfe, **errors, "spec": spec}


def by_cost(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["nfe"])


def sampling_errors(
    model: LatentCNF, judge: torch.nn.Module, train_features: torch.Tensor, options: CalibrateOptions
) -> tuple[float, list[dict]]:
    """The reference's FID, and each candidate's worst pixel error and relative FID change against it."""
    z0, labels = model.draw_base(options.samples, seed=options.seed)

    def images(solver: SolverConfig) -> tuple[torch.Tensor, int]:
        path = model.generate(z0, labels, solver)
        return path.images[-1].reshape(options.samples, -1).cpu(), path.nfe

    def fid_of(pictures: torch.Tensor) -> float:
        return fid(embed(judge, pictures, 1000)[0].numpy(), train_features.numpy())

    reference, _ = images(REFERENCE)
    reference_fid = fid_of(reference)
    rows = []
    for solver in tqdm(candidates(), desc="sampling candidates", leave=False):
        pictures, nfe = images(solver)
        pixel, change = (pictures - reference).abs().max(), abs(fid_of(pictures) - reference_fid) / reference_fid
        rows.append(row(solver, nfe, max_pixel_error=float(pixel), fid_change=change))
    return reference_fid, by_cost(rows)


def scoring_errors(model: LatentCNF, test_images: torch.Tensor, options: CalibrateOptions) -> list[dict]:
    """Worst and mean absolute error of each candidate's IWAE bound against the reference's, same proposals."""
    x = binarized(test_images[: options.score_images]).to(model.device)
    seeds = options.seed + torch.arange(len(x))

    def bound(solver: SolverConfig) -> tuple[torch.Tensor, int]:
        score = model.score(x, k=options.importance_samples, solver=solver, seed=seeds)
        return score.log_likelihood.cpu(), score.nfe

    reference, _ = bound(REFERENCE)
    rows = []
    for solver in tqdm(candidates(), desc="scoring candidates", leave=False):
        log_likelihood, nfe = bound(solver)
        error = (log_likelihood - reference).abs()
        rows.append(row(solver, nfe, max_error_nats=float(error.max()), mean_error_nats=float(error.mean())))
    return by_cost(rows)


def cheapest(rows: list[dict], within: dict[str, float]) -> dict:
    """The fixed-step row with the fewest evaluations whose every measured error is within its budget (at equal
    cost, the one with the smallest first error); dopri5 only when no fixed-step row is. An adaptive step costs
    more than its count says (the hypernetwork runs per sample, in float64), so counts rank within a kind only."""
    first = next(iter(within))
    passing = [row for row in rows if all(row[key] <= limit for key, limit in within.items())]
    for kind in (lambda r: r["spec"]["method"] != "dopri5", lambda r: r["spec"]["method"] == "dopri5"):
        if choices := [row for row in passing if kind(row)]:
            return min(choices, key=lambda row: (row["nfe"], row[first]))
    best = min(rows, key=lambda row: row[first])
    raise SystemExit(f"error: no candidate within {within}; the most accurate measured {best}")


def as_solver(row: dict) -> dict:
    """A serving.json entry: the solver's fields, then what was measured for it."""
    return {**row["spec"], **{k: v for k, v in row.items() if k not in ("solver", "spec")}}


def table(title: str, rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("solver", "spec")]
    lines = [f"{title}\n{'solver':<16}" + "".join(f"{k:>18}" for k in keys)]
    lines += [f"{r['solver']:<16}" + "".join(f"{r[k]:>18.4g}" for k in keys) for r in rows]
    return "\n".join(lines)


def calibrate(options: CalibrateOptions, command: str) -> dict:
    device = resolve_device(options.device)
    model = model_folder.load(options.checkpoint, device)
    dataset = model_folder.read_training(options.checkpoint)["dataset"]
    started = time.perf_counter()
    train = data.load_split(dataset, "train", options.data_dir)
    test = data.load_split(dataset, "test", options.data_dir)
    judge = load_classifier(dataset, device)
    chosen_train = random_subset(len(train), options.reference_images)
    train_features = embed(judge, data.to_float(train.images[chosen_train]).reshape(-1, 784), 1000)[0]
    reference_fid, sampling = sampling_errors(model, judge, train_features, options)
    scoring = scoring_errors(model, test.images, options)
    print(table("sampling (vs dopri5 1e-7, FID change relative)", sampling))
    print(table("scoring (vs dopri5 1e-7, nats)", scoring))
    sample = cheapest(sampling, {"max_pixel_error": options.max_pixel_error, "fid_change": options.max_fid_change})
    score = cheapest(scoring, {"max_error_nats": options.max_score_error})
    return {
        "sample": as_solver(sample),
        "score": as_solver(score),
        "calibration": {
            "reference": "dopri5, rtol = atol = 1e-7, step size per sample",
            "reference_fid": reference_fid,
            "budgets": {
                "max_pixel_error": options.max_pixel_error,
                "fid_change": options.max_fid_change,
                "max_score_error_nats": options.max_score_error,
            },
            "samples": options.samples,
            "reference_images": options.reference_images,
            "score_images": options.score_images,
            "importance_samples": options.importance_samples,
            "protocol_seed": PROTOCOL_SEED,
            "seed": options.seed,
            "sampling": sampling,
            "scoring": scoring,
        }
        | provenance(command, device, started),
    }


def report(solvers: dict) -> None:
    for use, solver in model_folder.serving_solvers({"solvers": solvers}).items():
        print(f"{use}: {solver}")


def main(argv: list[str] | None = None) -> None:
    serving_writer.run("train.calibrate", build_parser(), CalibrateOptions, calibrate, report, "solvers", argv)


if __name__ == "__main__":
    main()
