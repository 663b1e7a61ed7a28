"""What the model itself can do: samples/s of `sample()` and images/s of `score()` against batch size, per ODE
solver setting, with the NFE of each; the decoder alone as the upper bound of `sample()` (the flow costs
nothing there); the PNGs a JSON /generate answer adds per sample (Pillow, on real samples' images); and, with
--fid N, the quality each solver setting buys (FID of N samples in the judge
classifier's feature space, computed as train.evaluate does, with the same noise for every setting).

    python bench/model.py [--batch-sizes 1,4,16,32,64,256,1024,4096] [--threads 2] [--json out.json] [--markdown]
    python bench/model.py --fid 10000 --data-dir ../shared/data     # adds the quality table

Each point is timed over at least --min-time seconds after one warm-up call; once a call at some batch size
takes longer than --max-call-seconds, larger batches of that solver are skipped (reported as '-').
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # `python bench/model.py`: `bench` imports from the repository root, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch

import latent_cnf
from bench.harness import fmt, int_list, machine, render, str_list
from latent_cnf import SolverConfig, model_folder
from latent_cnf import data as datasets
from latent_cnf.config import DEFAULT_SOLVER, FIXED_STEP_METHODS
from latent_cnf.device import resolve_device
from latent_cnf.images import image_pngs
from latent_cnf.model import LatentCNF
from train.cli import add_flags, flag, options_from, parse


def solver_name(solver: SolverConfig) -> str:
    """How --solvers and the tables name a solver: `dopri5 1e-5` (rtol = atol), `rk4 32 steps`."""
    if solver.method in FIXED_STEP_METHODS:
        return f"{solver.method} {solver.steps} steps"
    mantissa, exponent = f"{solver.rtol:.0e}".split("e")
    return f"{solver.method} {mantissa}e{int(exponent)}"


# DEFAULT_SOLVER is what evaluations and LATENT_CNF_EXACT_SCORES use; the service otherwise serves each model's
# calibrated solvers (CALIBRATED below), which the fixed-step rows bracket.
SOLVERS = {
    solver_name(solver): solver
    for solver in (
        DEFAULT_SOLVER,
        SolverConfig("dopri5", rtol=1e-3, atol=1e-3),
        *(SolverConfig("rk4", steps=steps) for steps in (4, 8, 16, 32)),
    )
}
DECODER = "decoder only"
PNGS = "PNGs only"  # the PNG per sample of a JSON /generate answer, encoded from real samples' images
CALIBRATED = "calibrated"  # the checkpoint's own solvers (train.calibrate): no solver passed


@dataclass(frozen=True)
class BenchOptions:
    """What the sweeps and the quality table measure (the command line's flags, typed)."""

    batch_sizes: Sequence[int] = flag(
        (1, 4, 16, 32, 64, 256, 1024, 4096), help="comma-separated list", type=int_list, nargs=None
    )
    score_batch_sizes: Sequence[int] | None = flag(
        None, help="comma-separated list (default: --batch-sizes)", type=int_list, nargs=None
    )
    solvers: Sequence[str] = flag(
        (CALIBRATED, *SOLVERS), help=",".join([CALIBRATED, *SOLVERS]), type=str_list, nargs=None
    )
    importance_samples: int = flag(64, help="K of score()")
    min_time: float = flag(1.0, help="timed seconds per point (after a warm-up)")
    max_call_seconds: float = flag(30.0, help="skip larger batches past this")
    fid: int = flag(0, help="also compute the FID of N samples per solver", metavar="N")
    fid_batch_size: int = flag(500, help="samples per sample() call for the FID")
    reference_images: int | None = flag(None, help="training images for the FID reference (default all)")
    data_dir: Path | None = flag(None, help="IDX folder (else $LATENT_CNF_DATA)")
    seed: int = flag(0, help="seed of the FID sampling noise")


def timed(call: Callable[[int], int | None], device: torch.device, min_time: float, max_calls: int = 1000) -> dict:
    """Median seconds per call and mean NFE over calls i = 1, 2, ... (call(i) returns its NFE)."""

    def once(i: int) -> tuple[float, int | None]:
        started = time.perf_counter()
        nfe = call(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started, nfe

    warmup, _ = once(0)
    seconds, nfes = [], []
    while not seconds or (sum(seconds) < min_time and len(seconds) < max_calls):
        s, nfe = once(len(seconds) + 1)
        seconds.append(s)
        nfes.append(nfe)
    return {
        "calls": len(seconds),
        "seconds_per_call": statistics.median(seconds),
        "warmup_seconds": warmup,
        "nfe": statistics.mean(nfes) if nfes[0] is not None else None,
    }


def make_call(
    op: str, model: LatentCNF, batch: int, solver: SolverConfig | None, k: int, test_images: torch.Tensor | None
) -> Callable[[int], int | None]:
    """call(i) runs `op` once on `batch` items with seed i and returns its NFE (None for the decoder)."""
    if op == "sample":
        return lambda i: model.sample(batch, seed=i, solver=solver).nfe
    if op == "score":
        images = test_images[torch.arange(batch) % len(test_images)]
        return lambda i: model.score(images, k=k, solver=solver, seed=i).nfe
    if op == "png":
        images = model.sample(batch, seed=0, solver=solver).images

        def encode(i: int) -> None:
            image_pngs(images)

        return encode
    z = torch.randn(batch, model.config.latent_dim, device=model.device)

    def decode(i: int) -> None:
        model.decode_images(z)

    return decode


def sweep(
    op: str, model: LatentCNF, options: BenchOptions, device: torch.device, test_images: torch.Tensor | None
) -> list[dict]:
    """One row per (solver, batch size) of `op`; larger batches are skipped once a call is too slow."""
    rows = []
    solvers = [DECODER] if op == "decode" else [PNGS] if op == "png" else options.solvers
    sizes = options.score_batch_sizes if op == "score" else options.batch_sizes
    for name in solvers:
        too_slow = False
        for batch in sizes:
            row = {"op": op, "solver": name, "batch": batch}
            if too_slow:
                rows.append(row | {"skipped": True})
                continue
            call = make_call(op, model, batch, SOLVERS.get(name), options.importance_samples, test_images)
            result = timed(call, device, options.min_time)
            result["items_per_s"] = batch / result["seconds_per_call"]
            rows.append(row | result)
            too_slow = result["seconds_per_call"] > options.max_call_seconds
            print(f"{op:6s} {name:13s} batch {batch:5d}: {result['items_per_s']:12,.1f}/s", flush=True)
    return rows


def quality(model: LatentCNF, options: BenchOptions, device: torch.device, dataset: str) -> list[dict]:
    """FID (and label accuracy) of --fid samples per solver, against the judge features of training images."""
    from latent_cnf.judges import load_classifier
    from train.evaluate import SAMPLE_STREAM, random_subset, seeds
    from train.metrics.features import embed
    from train.metrics.fid import fid

    judge = load_classifier(dataset, device)
    train = datasets.load_split(dataset, "train", options.data_dir, download=False)
    reference = datasets.to_float(train.images[random_subset(len(train), options.reference_images)])
    reference_features, _ = embed(judge, reference, 1000)
    n, batch = options.fid, options.fid_batch_size
    test = datasets.load_split(dataset, "test", options.data_dir, download=False)
    test_features, _ = embed(judge, datasets.to_float(test.images[:n]), 1000)  # as many as samples: FID is biased by n
    rows = [{"solver": f"{len(test_features):,} test images (floor)", "fid": fid(test_features, reference_features)}]
    labels = torch.arange(n) % model.config.num_classes if model.prior.uses_labels else None
    chunk_seeds = seeds(options.seed, SAMPLE_STREAM, -(-n // batch)).tolist()
    for name in options.solvers:
        started, images, nfe = time.perf_counter(), [], []
        for start, seed in zip(range(0, n, batch), chunk_seeds, strict=True):
            label = labels[start : start + batch] if labels is not None else None
            samples = model.sample(min(batch, n - start), label=label, seed=seed, solver=SOLVERS.get(name))
            images.append(samples.images.reshape(len(samples.images), -1).cpu())
            nfe.append(samples.nfe)
        features, predicted = embed(judge, torch.cat(images), 1000)
        accuracy = (predicted == labels).double().mean().item() if labels is not None else None
        rows.append(
            {
                "solver": name,
                "fid": fid(features, reference_features),
                "label_accuracy": accuracy,
                "nfe_per_call": statistics.mean(nfe),
                "sampling_seconds": time.perf_counter() - started,
            }
        )
        print(f"fid    {name:13s}: {rows[-1]['fid']:.3f}", flush=True)
    return rows


def report(rows: list[dict], fid_rows: list[dict] | None, options: BenchOptions, markdown: bool) -> str:
    text = ""
    for op, unit, sizes in (
        ("sample", "samples/s", options.batch_sizes),
        ("score", f"images/s (K = {options.importance_samples})", options.score_batch_sizes),
    ):
        solvers = options.solvers + ([DECODER, PNGS] if op == "sample" else [])
        cells = {
            (r["solver"], r["batch"]): r
            for r in rows
            if r["op"] in ((op, "decode", "png") if op == "sample" else (op,))
        }
        if not any(r["op"] == op for r in rows):
            continue
        table = []
        for name in solvers:
            line = [name]
            for batch in sizes:
                r = cells.get((name, batch), {})
                value = fmt(r.get("items_per_s"))
                line.append(f"{value} ({r['nfe']:.0f})" if r.get("nfe") is not None else value)
            table.append(line)
        title = f"{op}(): {unit} by batch size, (NFE per call)"
        text += render(title, ["solver", *[str(b) for b in sizes]], table, markdown) + "\n"
    if fid_rows:
        table = [
            [
                r["solver"],
                fmt(r.get("nfe_per_call")),
                fmt(r["fid"], 2),
                fmt(r["label_accuracy"] * 100 if r.get("label_accuracy") is not None else None),
                fmt(r.get("sampling_seconds")),
            ]
            for r in fid_rows
        ]
        columns = ["solver", "NFE per call", "FID", "label accuracy %", "sampling s"]
        text += render(f"Quality: FID of {options.fid:,} samples per solver", columns, table, markdown)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="mnist-final-cond", help="shipped checkpoint name or folder")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--skip-score", action="store_true")
    add_flags(parser, BenchOptions)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables (for docs/benchmarks.md)")
    args = parse(parser, argv)
    args.score_batch_sizes = args.score_batch_sizes or args.batch_sizes
    unknown = set(args.solvers) - {CALIBRATED, *SOLVERS}
    if unknown:
        parser.error(f"unknown solvers {sorted(unknown)}; choose from {[CALIBRATED, *SOLVERS]}")
    return args


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = options_from(args, BenchOptions)
    device = resolve_device(args.device)
    model = latent_cnf.load(args.checkpoint, device)
    dataset = model_folder.read_training(args.checkpoint).get("dataset", "mnist")
    test_images = None
    if not args.skip_score:
        test = datasets.load_split(dataset, "test", args.data_dir, download=False)
        test_images = datasets.binarize(datasets.to_float(test.images), torch.Generator().manual_seed(0))
    rows = [row for op in ("sample", "decode", "png") for row in sweep(op, model, options, device, None)]
    if not args.skip_score:
        rows += sweep("score", model, options, device, test_images)
    fid_rows = quality(model, options, device, dataset) if args.fid else None
    header = f"{args.checkpoint} on {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    print(("" if args.markdown else "\n") + header + "\n")
    print(report(rows, fid_rows, options, args.markdown))
    if args.json:
        result = {"checkpoint": args.checkpoint, "device": str(device), "machine": machine(), "rows": rows}
        result |= {"fid": fid_rows, "args": vars(args) | {"json": str(args.json), "data_dir": str(args.data_dir)}}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
