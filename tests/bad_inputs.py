"""A corpus of malformed requests: each must get the stated 4xx with the JSON error shape, never a 5xx."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _png(size=(28, 28), mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 0).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image with almost no data: a decompression bomb's shape."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


VALID = _png()
NOISY = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(NOISY, format="PNG")
NOISY = NOISY.getvalue()
RGBA = _png(mode="RGBA")

# (name, method, path, request kwargs, expected status)
CASES: list[tuple[str, str, str, dict, int]] = [
    ("n zero", "post", "/generate", {"json": {"n": 0}}, 422),
    ("n too large", "post", "/generate", {"json": {"n": 257}}, 422),
    ("n not a number", "post", "/generate", {"json": {"n": "many"}}, 422),
    ("n float", "post", "/generate", {"json": {"n": 2.5}}, 422),
    ("label 10", "post", "/generate", {"json": {"n": 1, "label": 10}}, 422),
    ("label negative", "post", "/generate", {"json": {"n": 1, "label": -1}}, 422),
    ("seed negative", "post", "/generate", {"json": {"n": 1, "seed": -5}}, 422),
    ("seed huge", "post", "/generate", {"json": {"n": 1, "seed": 2**70}}, 422),
    ("unknown field", "post", "/generate", {"json": {"n": 1, "temprature": 0.5}}, 422),
    ("temperature zero", "post", "/generate", {"json": {"n": 1, "temperature": 0}}, 422),
    ("temperature too hot", "post", "/generate", {"json": {"n": 1, "temperature": 2.5}}, 422),
    ("temperature not a number", "get", "/trajectory", {"params": {"temperature": "warm"}}, 422),
    ("unknown solver", "post", "/generate", {"json": {"solver": {"method": "rk45"}}}, 422),
    ("zero steps", "post", "/generate", {"json": {"solver": {"method": "rk4", "steps": 0}}}, 422),
    ("steps too many", "post", "/generate", {"json": {"solver": {"method": "rk4", "steps": 5000}}}, 422),
    ("rtol zero", "post", "/generate", {"json": {"solver": {"rtol": 0}}}, 422),
    ("atol too loose", "post", "/generate", {"json": {"solver": {"atol": 1.0}}}, 422),
    ("unknown model", "post", "/generate", {"json": {"model": "gpt"}}, 404),
    ("label on unconditional", "post", "/generate", {"json": {"model": "uncond", "label": 3}}, 422),
    ("body not json", "post", "/generate", {"content": b"{n: 1", "headers": {"content-type": "application/json"}}, 422),
    ("body is a list", "post", "/generate", {"json": [1, 2]}, 422),
    ("bad format", "post", "/generate?format=gif", {"json": {"n": 1}}, 422),
    ("trajectory steps 1", "get", "/trajectory?steps=1", {}, 422),
    ("trajectory steps 65", "get", "/trajectory?steps=65", {}, 422),
    ("trajectory n 17", "get", "/trajectory?n=17", {}, 422),
    ("trajectory label text", "get", "/trajectory?label=three", {}, 422),
    ("trajectory unknown model", "get", "/trajectory?model=nope", {}, 404),
    ("trajectory label on unconditional", "get", "/trajectory?model=uncond&label=2", {}, 422),
    ("score no file", "post", "/score", {"data": {"importance_samples": "4"}}, 422),
    ("score wrong field", "post", "/score", {"files": {"image": ("a.png", VALID)}}, 422),
    ("score empty file", "post", "/score", {"files": {"file": ("a.png", b"")}}, 422),
    ("score text file", "post", "/score", {"files": {"file": ("a.txt", b"hello, world")}}, 415),
    ("score pdf", "post", "/score", {"files": {"file": ("a.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")}}, 415),
    ("score truncated png", "post", "/score", {"files": {"file": ("a.png", NOISY[: len(NOISY) * 3 // 4])}}, 422),
    ("score png header only", "post", "/score", {"files": {"file": ("a.png", VALID[:8])}}, 415),
    ("score bomb", "post", "/score", {"files": {"file": ("b.png", _png_claiming(50_000, 50_000))}}, 413),
    ("score k zero", "post", "/score", {"files": {"file": ("a.png", VALID)}, "data": {"importance_samples": "0"}}, 422),
    (
        "score k huge",
        "post",
        "/score",
        {"files": {"file": ("a.png", VALID)}, "data": {"importance_samples": "5000"}},
        422,
    ),
    ("score k text", "post", "/score", {"files": {"file": ("a.png", VALID)}, "data": {"importance_samples": "x"}}, 422),
    (
        "score bad preprocess",
        "post",
        "/score",
        {"files": {"file": ("a.png", VALID)}, "data": {"preprocess": "crop"}},
        422,
    ),
    ("score unknown model", "post", "/score", {"files": {"file": ("a.png", VALID)}, "data": {"model": "nope"}}, 404),
    ("score too many files", "post", "/score", {"files": [("file", (f"{i}.png", VALID)) for i in range(5)]}, 422),
    ("score body too large", "post", "/score", {"files": {"file": ("big.png", b"\x00" * 300_000)}}, 413),
    ("score json body", "post", "/score", {"json": {"file": "abc"}}, 422),
    ("score random bytes", "post", "/score", {"files": {"file": ("r.bin", np.random.default_rng(1).bytes(999))}}, 415),
    ("unknown path", "get", "/nope", {}, 404),
    ("wrong method", "get", "/generate", {}, 405),
    ("unknown model info", "get", "/v1/models/nope", {}, 404),
]
