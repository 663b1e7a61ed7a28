"""Model calls in a child process (service/model_process.py): the same results as in this process, errors
raised here with their type, and a child that died replaced on the next call."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
import uvloop
from PIL import Image

import latent_cnf
from latent_cnf import SolverError
from latent_cnf.config import SolverConfig
from latent_cnf.images import to_uint8
from service.model_calls import BatchKey, SampleChunk, SampleJob, ScoreChunk
from service.model_process import InProcess, InThread

MODEL = "mnist-final"
T = TypeVar("T")
SAMPLE = BatchKey(kind="generate", model=MODEL, version=1, solver=SolverConfig("rk4", steps=4))
SCORE = BatchKey(kind="score", model=MODEL, version=1, solver=SolverConfig("rk4", steps=4), importance_samples=4)


LOOP = uvloop.new_event_loop()  # uvloop's, as the service runs on (uvicorn takes it when installed)


def call(coroutine: Coroutine[Any, Any, T]) -> T:
    """A runner's method, run to its end on the module's event loop: a runner's pipe belongs to one loop."""
    return LOOP.run_until_complete(coroutine)


@pytest.fixture(scope="module")
def runners():
    model = latent_cnf.load(MODEL)
    here, there = InThread(), InProcess("cpu", threads=1)
    call(here.load(SAMPLE.instance, MODEL, model))
    call(there.load(SAMPLE.instance, MODEL))
    yield model, here, there
    call(there.close())
    LOOP.close()


def chunks(model) -> list[SampleChunk]:
    """A seeded chunk (its noise drawn where the call runs) and one that brings its noise."""
    z0, labels = model.draw_base(3, seed=1)
    return [SampleChunk(slice(0, 2), SampleJob(2, None, seed=0)), SampleChunk(slice(0, 3), z0=z0, labels=labels)]


def test_a_merged_call_in_the_child_gives_what_it_gives_here(runners):
    model, here, there = runners
    (ours, nfe, _), (theirs, their_nfe, _) = (
        call(here.run(SAMPLE, chunks(model))),
        call(there.run(SAMPLE, chunks(model))),
    )
    assert nfe == their_nfe == 16 and [len(path.latents[-1]) for path in theirs] == [2, 3]
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.latents, b.latents)
        torch.testing.assert_close(a.images, b.images)
    images = (torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    score = [ScoreChunk(images, torch.arange(2))]
    (mine,), *_ = call(here.run(SCORE, score))
    (yours,), *_ = call(there.run(SCORE, score))
    torch.testing.assert_close(mine.log_likelihood, yours.log_likelihood)


def test_errors_in_the_child_are_raised_here_with_their_type(runners):
    model, _, there = runners
    stiff = BatchKey(
        kind="generate", model=MODEL, version=1, solver=SolverConfig("dopri5", rtol=1e-9, atol=1e-9, max_nfe=8)
    )
    with pytest.raises(SolverError):
        call(there.run(stiff, chunks(model)))
    with pytest.raises(KeyError):
        call(
            there.run(BatchKey(kind="generate", model="no-such-model", version=1, solver=SAMPLE.solver), chunks(model))
        )
    assert call(there.run(SAMPLE, chunks(model)))[1] == 16  # and it goes on serving


def test_a_child_that_died_is_replaced_with_its_models_on_the_next_call(runners):
    model, here, there = runners
    assert there._process is not None
    there._process.kill()
    there._process.join(10)
    (path, *_), *_ = call(there.run(SAMPLE, chunks(model)))
    (expected, *_), *_ = call(here.run(SAMPLE, chunks(model)))
    torch.testing.assert_close(path.latents, expected.latents)


def test_a_seeded_request_cut_into_parts_draws_the_rows_it_draws_whole(runners):
    model, here, _ = runners
    job = SampleJob(5, None, seed=11, temperature=0.8)
    (whole,), *_ = call(here.run(SAMPLE, [SampleChunk(slice(0, 5), job)]))
    parts, *_ = call(here.run(SAMPLE, [SampleChunk(slice(0, 2), job), SampleChunk(slice(2, 5), job)]))
    z0, labels = model.draw_base(5, None, 11, 0.8)
    assert torch.equal(whole.latents[0], z0) and whole.labels is None and labels is None  # an unconditional model
    torch.testing.assert_close(torch.cat([part.latents for part in parts], 1), whole.latents)
    torch.testing.assert_close(torch.cat([part.images for part in parts], 1), whole.images)


def test_an_answer_larger_than_the_pipe_buffer_comes_back_whole(runners):
    """Megabytes each way (the loop watches the pipe without blocking, the messages still go whole)."""
    model, here, there = runners
    frames = BatchKey(kind="trajectory", model=MODEL, version=1, solver=SAMPLE.solver, frames=11)
    z0, labels = model.draw_base(64, seed=3)
    for _ in range(2):
        chunks = [SampleChunk(slice(0, 64), z0=z0, labels=labels), SampleChunk(slice(0, 64), SampleJob(64, None, 4))]
        (theirs, *_), *_ = call(there.run(frames, chunks))
        (ours, *_), *_ = call(here.run(frames, chunks))
        assert theirs.images.shape == (11, 64, 1, 28, 28)  # 2.2 MB of pixels
        torch.testing.assert_close(theirs.images, ours.images)


def test_encoded_samples_are_the_pngs_of_their_own_images(runners):
    """A call with pngs=True returns each chunk's final images as PNGs, cut at the chunk boundaries."""
    model, _, there = runners
    key = BatchKey(kind="generate", model=MODEL, version=1, solver=SAMPLE.solver, pngs=True)
    pieces, *_ = call(there.run(key, chunks(model)))
    assert [len(piece.pngs) for piece in pieces] == [2, 3]
    for piece in pieces:
        decoded = np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in piece.pngs])
        assert np.array_equal(decoded, to_uint8(piece.path.images[-1]))


def test_calls_sent_before_the_last_is_answered_come_back_each_to_its_caller(runners):
    """The batcher keeps a second call waiting in the pipe while the first runs: answers return in order, each to
    the call that asked, and equal what the calls give one at a time."""
    model, _, there = runners
    images = (torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    score = [ScoreChunk(images, torch.arange(2))]

    async def both() -> list:
        return await asyncio.gather(there.run(SAMPLE, chunks(model)), there.run(SCORE, score))

    (paths, *_), (scores, *_) = call(both())
    (alone_paths, *_), (alone_scores, *_) = call(there.run(SAMPLE, chunks(model))), call(there.run(SCORE, score))
    torch.testing.assert_close(paths[1].latents, alone_paths[1].latents)
    torch.testing.assert_close(scores[0].log_likelihood, alone_scores[0].log_likelihood)
