"""Reflow: re-fitting a flow to its own coupling makes its paths straighter, and the preset starts from the
shipped flow-matching prior."""

from __future__ import annotations

import copy

import torch

import latent_cnf
from latent_cnf import SolverConfig, model_folder
from latent_cnf.cnf import LatentFlow
from train.flow_matching import flow_matching_loss
from train.loop import Trainer
from train.reflow import coupled_pairs

from .test_flow_matching import train_toy
from .test_train import options

ACCURATE = SolverConfig("rk4", steps=32)


def reflowed(flow: LatentFlow, steps: int = 300) -> LatentFlow:
    """`flow` re-fitted from its own weights to 4,000 pairs of its coupling (rk4 x 16)."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(2, (4000,), generator=generator)
    pairs = coupled_pairs(flow, labels, len(labels), SolverConfig("rk4", steps=16), generator)
    student = copy.deepcopy(flow).train()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        rows = torch.randint(len(pairs), (128,), generator=generator)
        z0, z1 = pairs[rows].chunk(2, dim=1)
        loss = flow_matching_loss(student, z1, labels[rows], z0=z0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


@torch.no_grad()
def one_step_error(flow: LatentFlow) -> float:
    """Mean distance between euler x 1 and the flow's own accurate endpoint: zero for straight paths."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(2, (2000,), generator=generator)
    z0 = flow.base_sample(len(labels), generator)
    exact = flow.transform(z0, labels, ACCURATE).path[-1]
    coarse = flow.transform(z0, labels, SolverConfig("euler", steps=1)).path[-1]
    return (coarse - exact).norm(dim=1).mean().item()


def test_reflow_straightens_the_flow():
    """Independent pairs give curved paths (their flow averages crossing lines). Measured: euler x 1 misses
    the flow's own endpoint by 0.61 before reflow and 0.011 after it (an OT-paired flow: 0.19 and 0.010)."""
    curved = train_toy(ot=False)
    before, after = one_step_error(curved), one_step_error(reflowed(curved))
    assert after < 0.1 * before


def test_fm_cond_reflow_starts_from_the_shipped_prior_and_trains_on_its_pairs(tiny_dataset, tmp_path):
    trainer = Trainer(options(tiny_dataset, tmp_path, "fm-cond-reflow"))
    teacher = latent_cnf.load("mnist-fm-cond")
    mine, theirs = trainer.model.prior.state_dict(), teacher.prior.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    z0, z1 = trainer.train_x.chunk(2, dim=1)
    with torch.no_grad():
        expected = teacher.prior.transform(z0, trainer.train_y, SolverConfig("rk4", steps=8)).path[-1]
    torch.testing.assert_close(z1, expected)
    trainer.run()
    training = model_folder.read_training(tmp_path / "checkpoint")
    assert training["reflow_teacher"] == {
        "checkpoint": "mnist-fm-cond",
        "sha256": model_folder.weights_sha256("mnist-fm-cond"),
    }
