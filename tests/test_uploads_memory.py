"""Bounded decoding memory (issue #14): a request's pixels are budgeted from the headers before anything is
decoded, large images are shrunk as they are decoded, and only so many images are decoded at once.

bench/memory.py measures what this buys: the server's RSS under the outside tester's burst of large PNGs.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import service.routes.score as score_route
from latent_cnf import data
from service import uploads

from .service_helpers import png

BIG = 2800  # a 28x28 digit blown up 100 times: 7.8 Mpx, under the per-image cap, over the working size


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digit(data_dir) -> Image.Image:
    """An MNIST test digit whose binarized 28x28 preprocessing is the same from its 100-times enlargement."""
    return Image.fromarray(data.load_split("mnist", "test", data_dir).images[2].numpy())


def test_a_request_over_its_pixel_budget_gets_413_naming_the_limit(client):
    blank = encoded(Image.new("L", (3000, 3000)))  # 9 Mpx each, under the per-image cap; 18 Mpx together
    settings = client.app.state.settings
    assert 9_000_000 <= settings.max_image_pixels and 18_000_000 > settings.max_request_pixels
    response = client.post("/score", files=[("file", ("a.png", blank)), ("file", ("b.png", blank))])
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert (
        "18000000 pixels" in error["message"] and f"limit of {settings.max_request_pixels} pixels" in error["message"]
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_large_image_is_shrunk_as_it_is_decoded(digit, monkeypatch, fmt):
    """JPEG is decoded at a reduced scale (Pillow's draft), anything else shrunk before preprocessing."""
    decoded_sizes = []
    transpose = uploads.ImageOps.exif_transpose

    def spy(image: Image.Image, **options: bool) -> Image.Image | None:  # where the pixels get decoded
        decoded_sizes.append(image.size)
        return transpose(image, **options)

    monkeypatch.setattr(uploads.ImageOps, "exif_transpose", spy)
    big = encoded(digit.resize((4096, 4096), Image.Resampling.NEAREST).convert("RGB"), fmt)
    image = uploads.decode_image(big, "big", 16_777_216)
    assert image.mode == "L" and image.size == uploads.WORKING_SIZE
    assert decoded_sizes == [(1024, 1024) if fmt == "JPEG" else (4096, 4096)]


def test_a_large_image_scores_like_its_small_version(client, digit):
    big = digit.resize((BIG, BIG), Image.Resampling.NEAREST)
    files = [("file", ("small.png", encoded(digit))), ("file", ("big.png", encoded(big)))]
    response = client.post("/score", files=files, data={"importance_samples": "64"})
    assert response.status_code == 200, response.text
    small_score, big_score = response.json()["results"]
    assert big_score["predicted_label"] == small_score["predicted_label"]
    # the same binarized pixels; the rows of one batch only differ by their importance samples
    assert big_score["log_likelihood_nats"] == pytest.approx(small_score["log_likelihood_nats"], abs=0.5)


def test_no_more_images_are_decoded_at_once_than_the_cap(client, monkeypatch):
    """Each decode waits at a barrier for `cap` decodes in all, so the cap is reached whatever the timing, and
    a counter shows it is never passed."""
    cap = client.app.state.settings.max_concurrent_decodes
    requests = 2 * cap  # one image each, all sent at once: every decode finds its partners
    barrier = threading.Barrier(cap, timeout=60)
    lock = threading.Lock()
    inside, most = 0, 0
    prepare = score_route.prepare

    def counted(*args: object):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            barrier.wait()
            return prepare(*args)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(score_route, "prepare", counted)
    upload = png(np.zeros((28, 28)))
    with ThreadPoolExecutor(requests) as pool:
        answers = list(pool.map(lambda _: client.post("/score", files={"file": ("x.png", upload)}), range(requests)))
    assert [a.status_code for a in answers] == [200] * requests
    assert most == cap


def test_a_png_whose_text_chunks_inflate_past_the_small_limit_is_refused_before_its_pixels(client) -> None:
    """Pillow inflates text chunks when it opens a PNG (64 MB by default); the service allows 64 KB."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * 1_000_000, zip=True)
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG", pnginfo=info)
    assert len(buffer.getvalue()) < 20_000  # a small upload ...
    response = client.post("/score", files={"file": ("text.png", buffer.getvalue())})
    assert response.status_code == 422 and response.json()["error"]["code"] == "corrupt_image"  # ... refused
