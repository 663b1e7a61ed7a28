"""python -m train.evaluate: the reported numbers of a checkpoint, printed as a table and written as JSON.

Protocol (all NLL-like numbers are positive nats per image, lower is better):
- likelihood: the first `--test-images` test images, binarized once by Bernoulli sampling with the fixed
  PROTOCOL_SEED (dynamic binarization, frozen so every evaluation scores the same binary images);
  test_nll_nats = -mean IWAE bound with K proposals per image in all (a label-gated model: K / C from each
  label's q(z | x, y), C = 10), test_elbo_nats = -mean ELBO of the same draws with the label as a latent
  (log 1/C sum_y exp ELBO_y, LatentCNF.score), test_elbo_true_label_nats = -mean (ELBO_y + log 1/C) at the
  test label y (a bound on -log p(x, y); label-gated models only), latent_nll_nats = -mean prior
  log-density of the encoder means. Each with a 95 % t-interval over the test images (`_interval`).
- sample quality, in the feature space of the judge classifier (latent_cnf/judges.py): judge-feature FID
  (128-d features, not comparable with Inception FIDs) of
  `--num-samples` samples (Bernoulli means) against the grey training images; fid_reference is the FID of
  the grey test images against the same training images, the floor a perfect model would reach; improved
  precision/recall against an equally large random subset of the training images.
- label_accuracy (label-conditioned priors only): samples are drawn for labels 0..9 in equal shares, and
  this is the share the judge classifies as the label they were drawn for. reconstruction_accuracy is the
  share of the test images' reconstructions (decoder of the encoder mean) the judge classifies correctly:
  how legible the decoder is on real digits, a practical ceiling for label_accuracy.
- ood_auroc: AUROC of telling the first `--ood-images` binarized test images from as many outliers (the
  other dataset's test images, and uniform noise images, binarized the same way), with the IWAE
  log-likelihood as score and with the input-complexity corrected score of train/metrics/ood.py.
Cost: scoring dominates, K latent rows per image through an adaptive ODE solve, for the test images and each
outlier set; K=1000 on the full sets is a GPU job (on one CPU core: ~1 s per image of a label-gated model).
Data-side randomness (binarization, noise images, reference subsets) is fixed by PROTOCOL_SEED; `--seeds` only
drive the model's randomness. The sample metrics are measured once per seed and reported as the mean, its
95 % t-interval over the seeds (`_interval`) and the values (`_per_seed`); the importance samples use the first
seed (an image's score varies far less from seed to seed than from image to image); the OOD AUROCs get a
seeded bootstrap interval over the images. Evaluation seeds are disjoint from RESERVED_SEEDS, the seeds of
training and calibration.
Under `torchrun --nproc_per_node=N -m train.evaluate ...` the expensive parts, the IWAE scores and the sample
generation, are shared out by chunks of --batch-size (each chunk with its own seeds, as in one process) and
gathered; the rest runs on every rank and rank 0 writes the JSON, which is that of one process.
`--record-in-folder` also writes the headline numbers into the model folder's evaluation.json, which its
model card shows (an opt-in: evaluating a shipped model should not edit the installed package by default).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latent_cnf import SolverConfig, data, model_folder
from latent_cnf.config import DEFAULT_SOLVER
from latent_cnf.judges import load_classifier
from latent_cnf.model import LatentCNF

from . import cli, distributed
from .metrics.features import embed
from .metrics.fid import fid
from .metrics.intervals import bootstrap_interval, t_interval
from .metrics.ood import auroc, complexity_bits, complexity_corrected
from .metrics.precision_recall import precision_recall
from .presets import TrainConfig

PROTOCOL_SEED = 0
CALIBRATION_SEEDS = (1000, 1001, 1002)  # train.calibrate's choice and held-out draws, and its tests' fresh one
EVALUATION_SEEDS = (1, 2, 3)
# Seeds that already drove a shipped number: the protocol's data, calibration, training (TrainConfig.seed)
RESERVED_SEEDS = frozenset({PROTOCOL_SEED, *CALIBRATION_SEEDS, TrainConfig.seed})
BOOTSTRAP_RESAMPLES = 1000
OTHER_DATASET = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
TRAINING_FIELDS = ("preset", "dataset", "command", "epochs", "wall_time_s", "device", "git_commit")
SAMPLE_STREAM, TEST_STREAM, FIRST_OUTLIER_STREAM = 0, 1, 2  # independent random streams of each seed
# What a model folder's evaluation.json keeps of the results: the headline test metrics and K, M, N.
HEADLINE_FIELDS = (
    "dataset",
    "test_nll_nats",
    "test_elbo_nats",
    "latent_nll_nats",
    "fid",
    "fid_reference",
    "precision",
    "recall",
    "label_accuracy",
    "importance_samples",
    "test_images",
    "num_samples",
    "sample_solver",
)


def sample_solver(text: str) -> SolverConfig:
    """METHOD:STEPS of a fixed-step solver (rk4:2, midpoint:4, euler:8)."""
    method, _, steps = text.partition(":")
    try:
        return SolverConfig(method, steps=int(steps))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected METHOD:STEPS, e.g. rk4:2 ({error})") from None


@dataclass(frozen=True)
class EvaluateOptions:
    """One evaluation's inputs (the flags of python -m train.evaluate; the defaults are the protocol's)."""

    checkpoint: str = cli.flag(help=cli.CHECKPOINT_HELP)
    data_dir: Path | None = cli.flag(None, help=cli.DATA_DIR_HELP)
    device: str = cli.flag("auto", help=cli.DEVICE_HELP)
    seeds: Sequence[int] = cli.flag(
        EVALUATION_SEEDS,
        help="evaluation seeds: the sample metrics once per seed; the first seeds the importance samples",
    )
    dataset: str | None = cli.flag(None, help="default: the model's own dataset", choices=sorted(data.DATASETS))
    importance_samples: int = cli.flag(1000, help="K of the IWAE bound: proposals per image in all (over all labels)")
    ood_importance_samples: int | None = cli.flag(None, help="K for the outlier AUROCs (default: --importance-samples)")
    num_samples: int = cli.flag(10_000, help="generated images for FID, P/R, labels")
    test_images: int = cli.flag(10_000, help="first M test images (and M per outlier set)")
    ood_images: int | None = cli.flag(
        None, help="images per outlier set, vs the first as many test images (default all M)"
    )
    reference_images: int | None = cli.flag(None, help="random training images for the reference (default all)")
    temperatures: Sequence[float] = cli.flag(
        (), help="also measure FID, precision/recall and label accuracy of samples at these temperatures (< 1)"
    )
    neighbours: int = cli.flag(3, help="k of the k-NN manifolds of precision/recall")
    batch_size: int = cli.flag(100, help="images per model.score / model.sample call")
    feature_batch_size: int = cli.flag(1000, help="images per judge call, rows per distance block")
    # not the calibrated solvers of serving.json: exact numbers
    sample_solver: SolverConfig = cli.flag(
        DEFAULT_SOLVER,
        help="fixed-step solver of the samples, e.g. rk4:2 (FID at few function evaluations; default dopri5)",
        type=sample_solver,
        metavar="METHOD:STEPS",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__)
    cli.add_flags(parser, EvaluateOptions)
    parser.add_argument("--json", type=Path, help="output file (default runs/eval/<checkpoint>-<config hash>.json)")
    parser.add_argument(
        "--record-in-folder",
        action="store_true",
        help="also write the headline numbers to the model folder's evaluation.json and rewrite its card",
    )
    return parser


def seeds(seed: int, stream: int, count: int) -> torch.Tensor:
    """`count` independent seeds of one stream: no two chunks, images or --seed values share noise."""
    return torch.from_numpy(np.random.SeedSequence([seed, stream]).generate_state(count).astype(np.int64))


def binarized(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 28, 28) -> fixed binary float images (n, 784): the likelihood protocol's inputs."""
    return data.binarize(data.to_float(images), torch.Generator().manual_seed(PROTOCOL_SEED))


def noise_images(n: int) -> torch.Tensor:
    """Uniform grey-level noise as uint8 images, binarized like the datasets (so pixels are Bernoulli(1/2))."""
    generator = torch.Generator().manual_seed(PROTOCOL_SEED)
    return torch.randint(0, 256, (n, 28, 28), generator=generator, dtype=torch.uint8)


def random_subset(n: int, size: int | None) -> torch.Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(PROTOCOL_SEED))[:size]


@torch.no_grad()
def score(
    model: LatentCNF, images: torch.Tensor, k: int, batch_size: int, image_seeds: torch.Tensor, desc: str
) -> dict:
    """IWAE bound, ELBO, per-label ELBOs and latent log-density (nats, on the CPU) of many images with `k`
    proposals per label, chunk by chunk, each rank scoring its block of the chunks.

    Each image has its own proposal seed, so the numbers do not depend on the batch size.
    """
    starts = range(0, len(images), batch_size)
    parts = []
    for start in tqdm(
        starts[distributed.shard(len(starts))], desc=desc, leave=False, disable=not distributed.is_main()
    ):
        end = start + batch_size
        s = model.score(images[start:end], k=k, seed=image_seeds[start:end], solver=DEFAULT_SOLVER)
        parts.append((s.log_likelihood.cpu(), s.elbo.cpu(), s.label_elbo.cpu(), s.latent_log_density.cpu()))
    classes = model.config.score_classes
    empty = [torch.empty(0), torch.empty(0), torch.empty(0, classes), torch.empty(0)]
    mine = [torch.cat(p) for p in zip(*parts, strict=True)] if parts else empty
    log_likelihood, elbo, label_elbo, latent = (distributed.gather_rows(t) for t in mine)
    return {"log_likelihood": log_likelihood, "elbo": elbo, "label_elbo": label_elbo, "latent": latent}


@torch.no_grad()
def reconstructions(model: LatentCNF, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Bernoulli means (n, 784) on the CPU of decoding the encoder means of grey images."""
    parts = []
    for start in range(0, len(images), batch_size):
        x = data.to_float(images[start : start + batch_size]).to(model.device)
        y = labels[start : start + batch_size].to(model.device) if model.config.encoder_uses_labels else None
        mean, _ = model.encode(x, y)
        parts.append(model.decode_images(mean).reshape(len(x), -1).cpu())
    return torch.cat(parts)


@torch.no_grad()
def generate(
    model: LatentCNF,
    n: int,
    batch_size: int,
    seed: int,
    temperature: float = 1.0,
    solver: SolverConfig = DEFAULT_SOLVER,
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(images (n, 784) on the CPU, the labels they were drawn for or None, mean NFE per sample call).

    Each call draws its noise from its own seed, so samples depend on the batch size (as adaptive solves do);
    each rank generates its block of the calls.
    """
    labels = torch.arange(n) % model.config.num_classes if model.prior.uses_labels else None
    images, nfe = [torch.empty(0, model.config.data_dim)], []
    starts = range(0, n, batch_size)
    mine = distributed.shard(len(starts))
    for start, chunk_seed in zip(
        tqdm(starts[mine], desc="sampling", leave=False, disable=not distributed.is_main()),
        seeds(seed, SAMPLE_STREAM, len(starts)).tolist()[mine],
        strict=True,
    ):
        size = min(batch_size, n - start)
        label = labels[start : start + size] if labels is not None else None
        samples = model.sample(size, label=label, seed=chunk_seed, temperature=temperature, solver=solver)
        images.append(samples.images.reshape(size, -1).cpu())
        nfe.append(samples.nfe)
    return distributed.gather_rows(torch.cat(images)), labels, float(np.mean(distributed.gather(nfe)))


def evaluate(options: EvaluateOptions) -> dict:
    start_time = time.perf_counter()
    check_seeds(options.seeds)
    device = distributed.setup(options.device)
    model = model_folder.load(options.checkpoint, device)
    training = model_folder.read_training(options.checkpoint)
    dataset = options.dataset or training.get("dataset")
    if dataset not in data.DATASETS:
        raise SystemExit(f"the model's training.json names no known dataset ({dataset!r}): pass --dataset")
    judge = load_classifier(dataset, device)
    fbs = options.feature_batch_size

    def bar(desc: str) -> str | None:
        return desc if distributed.is_main() else None  # progress bars on rank 0 only

    with distributed.local_leader_first():  # one download per node, not one per process
        train = data.load_split(dataset, "train", options.data_dir)
        test = data.load_split(dataset, "test", options.data_dir)
        other_test = data.load_split(OTHER_DATASET[dataset], "test", options.data_dir)
    reference = data.to_float(train.images[random_subset(len(train), options.reference_images)])
    reference_features, _ = embed(judge, reference, fbs, desc=bar("judge: training images"))
    test_images = test.images[: options.test_images]
    test_features, _ = embed(judge, data.to_float(test_images), fbs, desc=bar("judge: test images"))

    real_subset = reference_features[random_subset(len(reference_features), options.num_samples)]

    def sample_quality(temperature: float, seed: int) -> dict:
        samples, labels, nfe = generate(
            model, options.num_samples, options.batch_size, seed, temperature, options.sample_solver
        )
        features, predicted = embed(judge, samples, fbs, desc=bar(f"judge: samples at temperature {temperature:g}"))
        precision, recall = precision_recall(real_subset, features, options.neighbours, fbs)
        return {
            "fid": fid(features, reference_features),
            "precision": precision,
            "recall": recall,
            "label_accuracy": (predicted == labels).double().mean().item() if labels is not None else None,
            "sample_nfe_mean": nfe,
        }

    def over_seeds(temperature: float) -> dict:
        return mean_over_seeds([sample_quality(temperature, seed) for seed in options.seeds])

    quality = over_seeds(1.0)
    test_labels = test.labels[: options.test_images]
    recon = reconstructions(model, test_images, test_labels, options.batch_size)
    _, recon_predicted = embed(judge, recon, fbs, desc=bar("judge: reconstructions"))
    recon_accuracy = (recon_predicted == test_labels).double().mean().item()

    k, bs, seed = options.importance_samples, options.batch_size, options.seeds[0]
    classes = model.config.score_classes
    x_test = binarized(test.images)[: options.test_images]
    inliers = score(
        model, x_test, per_label(k, classes), bs, seeds(seed, TEST_STREAM, len(x_test)), "scoring test images"
    )
    n_ood = min(options.ood_images or len(x_test), len(x_test))
    outlier_sets = {
        OTHER_DATASET[dataset]: binarized(other_test.images)[:n_ood],
        "noise": binarized(noise_images(len(test)))[:n_ood],
    }
    k_ood = options.ood_importance_samples or k
    in_ll = inliers["log_likelihood"][:n_ood]
    if k_ood != k:
        in_seeds = seeds(seed, TEST_STREAM, n_ood)
        in_ll = score(model, x_test[:n_ood], per_label(k_ood, classes), bs, in_seeds, "scoring test images (OOD K)")[
            "log_likelihood"
        ]
    in_corrected = complexity_corrected(in_ll, complexity_bits(x_test[:n_ood]))
    ood = {}
    for stream, (name, x_out) in enumerate(outlier_sets.items(), start=FIRST_OUTLIER_STREAM):
        out_seeds = seeds(seed, stream, len(x_out))
        out_ll = score(model, x_out, per_label(k_ood, classes), bs, out_seeds, f"scoring {name}")["log_likelihood"]
        out_corrected = complexity_corrected(out_ll, complexity_bits(x_out))
        ood[name] = auroc_with_interval("likelihood", in_ll, out_ll) | auroc_with_interval(
            "complexity_corrected", in_corrected, out_corrected
        )

    return {
        "checkpoint": str(options.checkpoint),
        "config_hash": model.config.hash(),
        "dataset": dataset,
        **mean_and_interval("test_nll_nats", -inliers["log_likelihood"]),
        **mean_and_interval("test_elbo_nats", -inliers["elbo"]),
        **(true_label_elbo(inliers["label_elbo"], test_labels) if classes > 1 else {}),
        **mean_and_interval("latent_nll_nats", -inliers["latent"]),
        **quality,
        "reconstruction_accuracy": recon_accuracy,
        "fid_reference": fid(test_features, reference_features),
        "by_temperature": {f"{t:g}": over_seeds(t) for t in options.temperatures},
        "ood_auroc": ood,
        "importance_samples": k,
        "ood_importance_samples": k_ood,
        "score_classes": classes,
        "num_samples": options.num_samples,
        "sample_solver": solver_record(options.sample_solver),
        "test_images": len(x_test),
        "ood_images": n_ood,
        "reference_images": len(reference),
        "neighbours": options.neighbours,
        "seeds": list(options.seeds),
        "protocol_seed": PROTOCOL_SEED,
        "seconds": round(time.perf_counter() - start_time, 1),
        "training": {key: training.get(key) for key in TRAINING_FIELDS},
    }


def check_seeds(chosen: Sequence[int]) -> None:
    """Evaluation seeds must be new: distinct, and none that drove training, calibration or the protocol's data."""
    if not chosen or len(set(chosen)) != len(chosen):
        raise SystemExit("--seeds: give one or more distinct seeds")
    if reused := sorted(RESERVED_SEEDS.intersection(chosen)):
        raise SystemExit(f"--seeds: {reused} also seed training, calibration or the protocol's data")


def per_label(total: int, classes: int) -> int:
    """model.score's k (proposals per label) for `total` proposals per image over `classes` labels."""
    if total < classes or total % classes:
        raise SystemExit(f"K = {total} proposals per image must be a multiple of the model's {classes} labels")
    return total // classes


def mean_and_interval(name: str, values: torch.Tensor | Sequence[float]) -> dict:
    """{name: the mean, name_interval: its 95 % t-interval} (no interval from a single value)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return {name: float(array.mean())}
    mean, low, high = t_interval(array)
    return {name: mean, f"{name}_interval": [low, high]}


def mean_over_seeds(per_seed: list[dict]) -> dict:
    """Each number of the seeds' sample metrics as its mean, 95 % t-interval and per-seed values."""
    out: dict = {}
    for key in per_seed[0]:
        values = [metrics[key] for metrics in per_seed]
        out |= {key: None} if values[0] is None else mean_and_interval(key, values) | {f"{key}_per_seed": values}
    return out


def true_label_elbo(label_elbo: torch.Tensor, labels: torch.Tensor) -> dict:
    """-(ELBO_y + log 1/C) at each image's test label y: a bound on -log p(x, y), with its interval."""
    at_label = label_elbo[torch.arange(len(labels)), labels] - math.log(label_elbo.shape[1])
    return mean_and_interval("test_elbo_true_label_nats", -at_label)


def auroc_with_interval(name: str, in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict:
    """{name: the AUROC, name_interval: its bootstrap 95 % interval over the inliers and the outliers}."""
    samples = (in_scores.double().numpy(), out_scores.double().numpy())
    low, high = bootstrap_interval(auroc, samples, BOOTSTRAP_RESAMPLES, PROTOCOL_SEED)
    return {name: auroc(*samples), f"{name}_interval": [low, high]}


def solver_record(solver: SolverConfig) -> dict:
    """The fields that define a solve: tolerances for dopri5 (its `steps` field is unused), else the steps."""
    fields = ("method", "rtol", "atol") if solver.method == "dopri5" else ("method", "steps")
    return {name: getattr(solver, name) for name in fields}


def headline(results: dict, command: str) -> dict:
    """A model folder's evaluation.json: the headline numbers, the command that measured them, the date."""
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return {key: results[key] for key in HEADLINE_FIELDS} | {"command": command, "date": today}


def table(results: dict) -> str:
    """One aligned `name  value` row per number; nested dicts flatten to dotted names."""

    def rows(prefix: str, value: object) -> list[tuple[str, str]]:
        if isinstance(value, dict):
            return [row for key, v in value.items() for row in rows(f"{prefix}.{key}" if prefix else key, v)]
        if isinstance(value, float):  # 4 decimals, or 3 significant digits where 4 decimals would round away
            return [(prefix, f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}")]
        return [(prefix, str(value))]

    lines = rows("", results)
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def main(argv: list[str] | None = None) -> None:
    args = cli.parse(build_parser(), argv)
    try:
        results = evaluate(cli.options_from(args, EvaluateOptions)) | {
            "command": cli.command_line("train.evaluate", argv)
        }
        reporter = distributed.is_main()  # asked before the process group is gone
    except (data.DataError, model_folder.ModelFolderError) as error:
        raise SystemExit(f"error: {error}") from None  # the message says what to do; a traceback would bury it
    finally:
        distributed.teardown()
    if not reporter:
        return
    print(table(results))
    out = args.json or Path("runs") / "eval" / f"{Path(str(args.checkpoint)).name}-{results['config_hash']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    if args.record_in_folder:
        folder = model_folder.record_evaluation(args.checkpoint, headline(results, results["command"]))
        print(f"wrote {folder / model_folder.EVALUATION_FILE}")


if __name__ == "__main__":
    main()
