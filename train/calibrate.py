"""python -m train.calibrate: the cheapest fixed-step solvers that stay within an error budget, per checkpoint.

Against a tight reference solve (per-sample dopri5 at rtol = atol = 1e-7), every candidate (euler, midpoint
and rk4 at 1 to 128 steps) is measured on a choice draw
- for sampling: on `--samples` base draws of `--seed` (labels from the uniform class prior), the worst pixel
  error of the decoded images and the relative change of their FID (judge features, against
  `--reference-images` training images);
- for scoring: on the first `--score-images` test images (binarized as in train.evaluate), the absolute error
  of the IWAE bound in nats, with K = `--importance-samples` and the same proposals as the reference.
A flow too stiff for any fixed-step candidate falls back to dopri5 at a looser tolerance than the reference.
The cheapest candidate (fewest function evaluations) within every budget on the choice draw is then measured
again on a held-out draw, so the budget is not met by the luck of the draw that chose it: `--heldout-samples`
base draws of `--heldout-seed`, and the next `--heldout-score-images` test images with proposals of that seed.
The held-out statistics are the same (the max over the draw, which grows with its size: the held-out draw is
the larger), and a candidate that fails them gives way to the next one within budget on the choice draw.
Calibration's seeds (1000 and 1001) are disjoint from training's (0) and train.evaluate's (1, 2, 3).
The chosen solver is written to the model folder's serving.json under "solvers", with both draws' errors,
every candidate's errors, the seeds and sizes, and this command; `latent_cnf.load` then uses them whenever a
call names no solver.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from latent_cnf import SolverConfig, data, model_folder
from latent_cnf.config import DEFAULT_SOLVER, FIXED_STEP_METHODS
from latent_cnf.device import resolve_device
from latent_cnf.judges import load_classifier
from latent_cnf.model import LatentCNF

from . import cli, serving_writer
from .evaluate import CALIBRATION_SEEDS, PROTOCOL_SEED, TEST_STREAM, binarized, random_subset, seeds
from .metrics.features import embed
from .metrics.fid import fid
from .serving_writer import FolderOptions, provenance

REFERENCE = SolverConfig("dopri5", rtol=1e-7, atol=1e-7, max_nfe=1_000_000)
STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # from 1: a reflowed flow may need no more
# dopri5 candidates, for flows no fixed-step solver follows within budget; the default's tolerance is the one
# whose measured NFE service/cost.py reads
TOLERANCES = (1e-3, DEFAULT_SOLVER.rtol)
# apart from training's seed (0) and train.evaluate's (1, 2, 3), so no number is measured on noise it was fit to
CHOICE_SEED, HELDOUT_SEED = CALIBRATION_SEEDS[:2]


@dataclass(frozen=True)
class CalibrateOptions(FolderOptions):
    """The flags of python -m train.calibrate: how much is measured on which draw, and the error budgets."""

    seed: int = cli.flag(CHOICE_SEED, help="seed of the choice draw's base draws and importance samples")
    heldout_seed: int = cli.flag(HELDOUT_SEED, help="seed of the held-out draw's, another than --seed")
    samples: int = cli.flag(2000, help="base draws for the sampling errors of the choice draw")
    heldout_samples: int = cli.flag(10_000, help="base draws for the sampling errors of the held-out draw")
    reference_images: int = cli.flag(10_000, help="training images behind the FID")
    score_images: int = cli.flag(100, help="test images for the score errors of the choice draw (the first)")
    heldout_score_images: int = cli.flag(500, help="test images for the held-out draw's (the next ones)")
    importance_samples: int = cli.flag(16, help="K of the scores compared")
    max_pixel_error: float = cli.flag(0.05, help="sampling budget, pixel intensity")
    max_fid_change: float = cli.flag(0.005, help="sampling budget, relative FID change")
    max_score_error: float = cli.flag(0.02, help="scoring budget, nats per image")


@dataclass(frozen=True)
class Draw:
    """What one draw measures on: the seed of its base noise and proposals, how many samples, which test images."""

    seed: int
    samples: int
    first_image: int
    images: int

    def record(self) -> dict:
        return {"seed": self.seed, "samples": self.samples, "test_images": [self.first_image, self.end_image]}

    @property
    def end_image(self) -> int:
        return self.first_image + self.images


def draws(options: CalibrateOptions) -> tuple[Draw, Draw]:
    """The choice draw and the held-out one: other seeds, and the test images after the choice's."""
    if options.heldout_seed == options.seed:
        raise SystemExit("error: --heldout-seed must differ from --seed: the held-out draw would be the choice's")
    choice = Draw(options.seed, options.samples, 0, options.score_images)
    return choice, Draw(options.heldout_seed, options.heldout_samples, choice.end_image, options.heldout_score_images)


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


Meter = Callable[[SolverConfig], dict]


def sampling_meter(
    model: LatentCNF, judge: torch.nn.Module, train_features: torch.Tensor, draw: Draw
) -> tuple[float, Meter]:
    """The reference's FID on the draw, and what measures a candidate's worst pixel error and relative FID
    change against the reference there."""
    z0, labels = model.draw_base(draw.samples, seed=draw.seed)

    def images(solver: SolverConfig) -> tuple[torch.Tensor, int]:
        path = model.sample_from(z0, labels, solver)
        return path.images[-1].reshape(draw.samples, -1).cpu(), path.nfe

    def fid_of(pictures: torch.Tensor) -> float:
        return fid(embed(judge, pictures, 1000)[0].numpy(), train_features.numpy())

    reference, _ = images(REFERENCE)
    reference_fid = fid_of(reference)

    def measure(solver: SolverConfig) -> dict:
        pictures, nfe = images(solver)
        pixel, change = (pictures - reference).abs().max(), abs(fid_of(pictures) - reference_fid) / reference_fid
        return row(solver, nfe, max_pixel_error=float(pixel), fid_change=change)

    return reference_fid, measure


def scoring_meter(model: LatentCNF, test_images: torch.Tensor, draw: Draw, k: int) -> Meter:
    """What measures a candidate's worst and mean absolute error of the IWAE bound against the reference's on
    the draw's test images, with the same proposals (the draw's seed's, one stream per image)."""
    x = binarized(test_images[draw.first_image : draw.end_image]).to(model.device)
    image_seeds = seeds(draw.seed, TEST_STREAM, len(x))

    def bound(solver: SolverConfig) -> tuple[torch.Tensor, int]:
        score = model.score(x, k=k, solver=solver, seed=image_seeds)
        return score.log_likelihood.cpu(), score.nfe

    reference, _ = bound(REFERENCE)

    def measure(solver: SolverConfig) -> dict:
        log_likelihood, nfe = bound(solver)
        error = (log_likelihood - reference).abs()
        return row(solver, nfe, max_error_nats=float(error.max()), mean_error_nats=float(error.mean()))

    return measure


def ranked(rows: list[dict], within: dict[str, float]) -> list[dict]:
    """The rows whose every measured error is within its budget, cheapest first: fixed-step rows by evaluations
    (at equal cost, the one with the smallest first error), then dopri5 rows. An adaptive step costs more than
    its count says (the hypernetwork runs per sample, in float64), so counts rank within a kind only."""
    first = next(iter(within))
    passing = [row for row in rows if within_budget(row, within)]
    return sorted(passing, key=lambda row: (row["spec"]["method"] == "dopri5", row["nfe"], row[first]))


def within_budget(row: dict, within: dict[str, float]) -> bool:
    return all(row[key] <= limit for key, limit in within.items())


def cheapest(rows: list[dict], within: dict[str, float]) -> dict:
    """The first of `ranked`; no candidate within budget ends the command, naming the most accurate one."""
    if passing := ranked(rows, within):
        return passing[0]
    best = min(rows, key=lambda row: row[next(iter(within))])
    raise SystemExit(f"error: no candidate within {within}; the most accurate measured {best}")


def confirmed(rows: list[dict], within: dict[str, float], heldout: Meter) -> tuple[dict, list[dict]]:
    """The cheapest row within budget on the choice draw whose held-out measurement is within it too, and the
    held-out measurements taken on the way (the failures, then the one that held)."""
    cheapest(rows, within)  # none within budget on the choice draw: nothing to confirm
    tried = []
    for choice in ranked(rows, within):
        tried.append(heldout(SolverConfig(**choice["spec"])))
        if within_budget(tried[-1], within):
            return choice, tried
    raise SystemExit(f"error: no candidate within {within} on the held-out draw; measured there {tried}")


def as_solver(choice: dict, heldout: dict) -> dict:
    """A serving.json entry: the solver's fields, what was measured for it on the choice draw, and under
    "heldout" the errors measured on the held-out draw (its NFE counts its larger batches' chunks)."""
    measured = {k: v for k, v in choice.items() if k not in ("solver", "spec")}
    return {
        **choice["spec"],
        **measured,
        "heldout": {k: v for k, v in heldout.items() if k not in ("solver", "spec", "nfe")},
    }


def table(title: str, rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("solver", "spec")]
    lines = [f"{title}\n{'solver':<16}" + "".join(f"{k:>18}" for k in keys)]
    lines += [f"{r['solver']:<16}" + "".join(f"{r[k]:>18.4g}" for k in keys) for r in rows]
    return "\n".join(lines)


def calibrate(options: CalibrateOptions, command: str) -> dict:
    device = resolve_device(options.device)
    choice, heldout = draws(options)
    model = model_folder.load(options.checkpoint, device)
    dataset = model_folder.read_training(options.checkpoint)["dataset"]
    started = time.perf_counter()
    train = data.load_split(dataset, "train", options.data_dir)
    test = data.load_split(dataset, "test", options.data_dir)
    judge = load_classifier(dataset, device)
    chosen_train = random_subset(len(train), options.reference_images)
    train_features = embed(judge, data.to_float(train.images[chosen_train]).reshape(-1, 784), 1000)[0]
    reference_fid, measure_sample = sampling_meter(model, judge, train_features, choice)
    sampling = by_cost([measure_sample(s) for s in tqdm(candidates(), desc="sampling candidates", leave=False)])
    measure_score = scoring_meter(model, test.images, choice, options.importance_samples)
    scoring = by_cost([measure_score(s) for s in tqdm(candidates(), desc="scoring candidates", leave=False)])
    print(table("sampling, choice draw (vs dopri5 1e-7, FID change relative)", sampling))
    print(table("scoring, choice draw (vs dopri5 1e-7, nats)", scoring))
    sample_budget = {"max_pixel_error": options.max_pixel_error, "fid_change": options.max_fid_change}
    heldout_fid, heldout_sample = sampling_meter(model, judge, train_features, heldout)
    sample, heldout_sampling = confirmed(sampling, sample_budget, heldout_sample)
    heldout_score = scoring_meter(model, test.images, heldout, options.importance_samples)
    score, heldout_scoring = confirmed(scoring, {"max_error_nats": options.max_score_error}, heldout_score)
    print(table("sampling, held-out draw", heldout_sampling))
    print(table("scoring, held-out draw", heldout_scoring))
    return {
        "sample": as_solver(sample, heldout_sampling[-1]),
        "score": as_solver(score, heldout_scoring[-1]),
        "calibration": {
            "reference": "dopri5, rtol = atol = 1e-7, step size per sample",
            "reference_fid": reference_fid,
            "budgets": {
                "max_pixel_error": options.max_pixel_error,
                "fid_change": options.max_fid_change,
                "max_score_error_nats": options.max_score_error,
            },
            "rule": "cheapest within every budget on the choice draw whose held-out errors (max over the draw) "
            "are within them too",
            "samples": options.samples,
            "reference_images": options.reference_images,
            "score_images": options.score_images,
            "importance_samples": options.importance_samples,
            "protocol_seed": PROTOCOL_SEED,
            "seed": options.seed,
            "choice": choice.record(),
            "heldout": heldout.record() | {"reference_fid": heldout_fid},
            "sampling": sampling,
            "scoring": scoring,
            "heldout_sampling": heldout_sampling,
            "heldout_scoring": heldout_scoring,
        }
        | provenance(command, device, started),
    }


def report(solvers: dict) -> None:
    for use, solver in model_folder.serving_solvers({"solvers": solvers}).items():
        print(f"{use}: {solver} (held out: {solvers[use]['heldout']})")


def main(argv: list[str] | None = None) -> None:
    serving_writer.run("train.calibrate", build_parser(), CalibrateOptions, calibrate, report, "solvers", argv)


if __name__ == "__main__":
    main()
