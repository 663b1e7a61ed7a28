"""Model calls in a child process (service/model_process.py): the same results as in this process, errors
raised here with their type, and a child that died replaced on the next call."""

from __future__ import annotations

import pytest
import torch

import latent_cnf
from latent_cnf import SolverError
from latent_cnf.config import SolverConfig
from service.model_calls import BatchKey, SampleChunk, ScoreChunk
from service.model_process import InProcess, InThread

MODEL = "mnist-final"
SAMPLE = BatchKey(kind="generate", model=MODEL, solver=SolverConfig("rk4", steps=4))
SCORE = BatchKey(kind="score", model=MODEL, solver=SolverConfig("rk4", steps=4), importance_samples=4)


@pytest.fixture(scope="module")
def runners():
    model = latent_cnf.load(MODEL)
    here, there = InThread({}), InProcess("cpu", threads=1)
    here.load(MODEL, MODEL, model)
    there.load(MODEL, MODEL)
    yield model, here, there
    there.close()


def chunks(model) -> list[SampleChunk]:
    return [SampleChunk(*model.draw_base(n, seed=seed)) for n, seed in ((2, 0), (3, 1))]


def test_a_merged_call_in_the_child_gives_what_it_gives_here(runners):
    model, here, there = runners
    (ours, nfe), (theirs, their_nfe) = here.run(SAMPLE, chunks(model)), there.run(SAMPLE, chunks(model))
    assert nfe == their_nfe == 16 and [len(path.latents[-1]) for path in theirs] == [2, 3]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.latents, b.latents)
        torch.testing.assert_close(a.images, b.images)
    images = (torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    score = [ScoreChunk(images, torch.arange(2))]
    (mine,), _ = here.run(SCORE, score)
    (yours,), _ = there.run(SCORE, score)
    torch.testing.assert_close(mine.log_likelihood, yours.log_likelihood)


def test_errors_in_the_child_are_raised_here_with_their_type(runners):
    model, _, there = runners
    stiff = BatchKey(kind="generate", model=MODEL, solver=SolverConfig("dopri5", rtol=1e-9, atol=1e-9, max_nfe=8))
    with pytest.raises(SolverError):
        there.run(stiff, chunks(model))
    with pytest.raises(KeyError):
        there.run(BatchKey(kind="generate", model="no-such-model", solver=SAMPLE.solver), chunks(model))
    assert there.run(SAMPLE, chunks(model))[1] == 16  # and it goes on serving


def test_a_child_that_died_is_replaced_with_its_models_on_the_next_call(runners):
    model, here, there = runners
    assert there._process is not None
    there._process.kill()
    there._process.join(10)
    (path, *_), _ = there.run(SAMPLE, chunks(model))
    (expected, *_), _ = here.run(SAMPLE, chunks(model))
    torch.testing.assert_close(path.latents, expected.latents)
