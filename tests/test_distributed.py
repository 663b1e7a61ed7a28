"""torchrun with gloo on the CPU, 2 processes against 1: the same run, the same resume, the same evaluation.

The training config is tiny and deterministic given the data, so that 2 ranks must reproduce 1 process up to
summation order: the `ae_cnf` objective encodes the mean (no reparameterisation noise), dropout is 0 and the
images are not binarized. Stochastic terms are drawn per rank (equal in distribution, not in value: see
docs/operations.md). The `final` preset keeps the patch discriminator, so its DDP wrapper is checked too. 21
images in a global batch of 21 give one step per epoch, so every step is logged, and blocks of 11 and 10 rows,
so the weighting of unequal shards is checked as well.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latent_cnf import LatentCNF, model_folder, save_pretrained
from train.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
TRAIN = [
    "--preset", "final", "--set", "objective=ae_cnf", "--set", "cnf_weight=0.1", "--model-set", "dropout=0",
    "--set", "disc_channels=4", "--set", 'train_solver={"method": "rk4", "steps": 2}',
    "--batch-size", "21", "--train-subset", "21", "--epochs", str(STEPS),
    "--val-images", "8", "--reference-images", "8", "--device", "cpu", "--threads", "1",
]  # fmt: skip
EVALUATE = [
    "--importance-samples", "20", "--num-samples", "40", "--test-images", "40", "--batch-size", "10",
    "--ood-images", "20", "--ood-importance-samples", "10", "--reference-images", "500", "--device", "cpu",
    "--threads", "1",
]  # fmt: skip
# Sums over 11 + 10 rows in two processes against 21 in one differ by float32 rounding: measured here, losses
# within 5e-7 relative, solver gaps (differences of log-densities) within 5e-8 nats, weights (up to 1.6) within
# 1e-6 after 4 Adam steps. The tolerances leave a factor 20 or more.
LOSS_RTOL, GAP_ATOL, WEIGHT_ATOL = 1e-5, 1e-6, 2e-5


def launch(module: str, args: list[str], processes: int, data_dir: Path) -> None:
    """`python -m module` alone, or under torchrun with `processes` ranks on this host."""
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes else []
    env = os.environ | {"OMP_NUM_THREADS": "1", "LATENT_CNF_DATA": str(data_dir)}
    result = subprocess.run(
        [sys.executable, *runner, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Run folders: 1 process, 2 processes, and 2 processes stopped after half the steps."""
    root = tmp_path_factory.mktemp("runs")
    folders = {name: root / name for name in ("single", "pair", "pair_half")}
    launch("train", [*TRAIN, "--out", str(folders["single"])], 0, data_dir)
    launch("train", [*TRAIN, "--out", str(folders["pair"])], 2, data_dir)
    launch("train", [*TRAIN, "--out", str(folders["pair_half"]), "--max-steps", str(STEPS // 2)], 2, data_dir)
    return folders


def records(out: Path) -> list[dict]:
    """The logged steps, less their wall times."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in lines]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return model_folder.load(out / "checkpoint").state_dict()


def assert_same_run(run: Path, reference: Path) -> None:
    """Every logged step's losses and validation numbers, and the final weights, agree within float tolerance."""
    got, want = records(run), records(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for a, b in zip(got, want, strict=True):
        assert a["train_solver_steps"] == b["train_solver_steps"]
        for key in ("loss", "recon", "cnf_nll", "disc", "adv", "fm", "val_iwae_nats", "val_solver_gap_nats"):
            close = math.isclose(a[key], b[key], rel_tol=LOSS_RTOL, abs_tol=GAP_ATOL)
            assert close, (a["step"], key, a[key], b[key])
    ours, theirs = weights(run), weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_two_processes_train_the_one_process_run(runs: dict[str, Path]) -> None:
    assert_same_run(runs["pair"], runs["single"])
    # The losses moved: the comparison is between runs that train, not between copies of the initial weights.
    assert records(runs["single"])[-1]["loss"] < records(runs["single"])[0]["loss"]
    # Rank 0 alone wrote: one line per step, and training.json and the log say how the run was spread.
    single, pair = (model_folder.read_training(runs[name] / "checkpoint") for name in ("single", "pair"))
    assert (single["world_size"], single["backend"]) == (1, None)
    assert (pair["world_size"], pair["backend"]) == (2, "gloo")
    assert {(r["world_size"], r["backend"]) for r in records(runs["pair"])} == {(2, "gloo")}
    assert len(list(runs["pair"].glob("trajectory-epoch*.png"))) == STEPS


def resume(runs: dict[str, Path], name: str, processes: int, data_dir: Path) -> Path:
    """A copy of the stopped 2-process run, resumed to the end with `processes` ranks (0: no torchrun)."""
    out = runs["pair_half"].parent / name
    shutil.copytree(runs["pair_half"], out)
    launch("train", [*TRAIN, "--out", str(out), "--resume"], processes, data_dir)
    return out


def test_resume_under_ddp_continues_exactly(runs: dict[str, Path], data_dir: Path) -> None:
    out = resume(runs, "pair_resumed", 2, data_dir)
    # Same ranks, same state (each rank's random stream included): the very same numbers, not merely close ones.
    assert records(out) == records(runs["pair"])
    ours, theirs = weights(out), weights(runs["pair"])
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    sessions = model_folder.read_training(out / "checkpoint")["sessions"]
    assert [(s["from_step"], s["world_size"]) for s in sessions] == [(0, 2), (STEPS // 2, 2)]


def test_resume_under_another_world_size(runs: dict[str, Path], data_dir: Path) -> None:
    out = resume(runs, "pair_then_single", 0, data_dir)
    assert_same_run(out, runs["single"])
    sessions = model_folder.read_training(out / "checkpoint")["sessions"]
    assert [(s["from_step"], s["world_size"]) for s in sessions] == [(0, 2), (STEPS // 2, 1)]


def test_sharded_evaluation_gives_the_one_process_numbers(tmp_path: Path, data_dir: Path) -> None:
    torch.manual_seed(0)
    save_pretrained(LatentCNF(PRESETS["final-cond"].model).eval(), tmp_path / "ck", {"dataset": "mnist"})
    args = ["--checkpoint", str(tmp_path / "ck"), *EVALUATE]
    launch("train.evaluate", [*args, "--json", str(tmp_path / "one.json")], 0, data_dir)
    launch("train.evaluate", [*args, "--json", str(tmp_path / "two.json")], 2, data_dir)
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    del one["seconds"], two["seconds"]
    assert two.pop("command") == one.pop("command").replace("one.json", "two.json")  # the same run, another file
    # 4 chunks of scores and of samples, 2 per rank, each chunk computed as in one process.
    assert math.isfinite(one["test_nll_nats"]) and one["fid"] > 0
    assert flatten(two).keys() == flatten(one).keys()
    for key, value in flatten(one).items():
        if isinstance(value, float):
            assert math.isclose(flatten(two)[key], value, rel_tol=1e-6, abs_tol=1e-9), key
        else:
            assert flatten(two)[key] == value, key


def flatten(results: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
