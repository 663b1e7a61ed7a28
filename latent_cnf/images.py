"""Image plumbing: MNIST-style preprocessing of arbitrary pictures, PNG encoding, grids, trajectory strips."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

MNIST_BOX = 20  # MNIST digits were fitted into 20x20 and centred by mass in 28x28
# Grey levels above this are ink. The model is a Bernoulli likelihood of binary pixels, so whatever is scored is
# binarized here first: the service's uploads and tensors, and the references its answers are compared with
# (the score quantiles and out-of-distribution bounds of serving.json, written by train/).
BINARIZE_THRESHOLD = 0.5


def binarize_at_threshold(pixels: torch.Tensor) -> torch.Tensor:
    """Intensities in [0, 1] -> 0./1. pixels, deterministically (training's data.binarize draws them instead)."""
    return (pixels > BINARIZE_THRESHOLD).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(n, 1, H, W) or (n, H, W) floats in [0, 1] -> uint8 array (n, H, W). In NumPy: on arrays this small each
    torch op costs more than its arithmetic (half the time, on every answer the service encodes)."""
    array = images.detach().cpu().numpy().astype(np.float32)
    pixels: np.ndarray = np.rint(np.clip(array, 0, 1) * np.float32(255)).astype(np.uint8)  # halves to even, as torch
    return pixels.reshape(len(pixels), pixels.shape[-2], pixels.shape[-1])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def image_pngs(images: torch.Tensor) -> list[bytes]:
    """One grayscale PNG per image."""
    return [png_bytes(Image.fromarray(a, mode="L")) for a in to_uint8(images)]


def grid(images: torch.Tensor, columns: int, padding: int = 2) -> Image.Image:
    """Tile (n, 1, H, W) images row by row on a black background."""
    array = to_uint8(images)
    n, h, w = array.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding), np.uint8)
    for i, tile in enumerate(array):
        r, c = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[y : y + h, x : x + w] = tile
    return Image.fromarray(canvas, mode="L")


def trajectory_strip(times: torch.Tensor, images: torch.Tensor, scale: int = 2) -> Image.Image:
    """Rows of decoded latents from t0 to t1 (images shaped (steps, n, 1, H, W)), each column titled with its t."""
    steps, n = images.shape[:2]
    tiles = grid(images.transpose(0, 1).reshape(steps * n, *images.shape[2:]), columns=steps)
    tiles = tiles.resize((tiles.width * scale, tiles.height * scale), Image.Resampling.NEAREST)
    header = 14
    canvas = Image.new("L", (tiles.width, tiles.height + header), 0)
    canvas.paste(tiles, (0, header))
    draw = ImageDraw.Draw(canvas)
    column = (tiles.width) / steps
    for i, t in enumerate(times.tolist()):
        label = f"t={t:.3g}"
        width = draw.textlength(label)
        draw.text((i * column + (column - width) / 2, 1), label, fill=255)
    return canvas


def preprocess_mnist(image: Image.Image) -> torch.Tensor:
    """Make an arbitrary picture look like an MNIST digit: white ink on black, in a 20x20 box, centred by mass.

    Returns a float tensor (28, 28) in [0, 1].
    """
    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    if np.median(border) > 0.5:  # dark ink on a light background
        gray = 1.0 - gray
    ink = gray > 0.1 * gray.max() if gray.max() > 0 else np.zeros_like(gray, dtype=bool)
    if not ink.any():
        return torch.zeros(28, 28)
    rows, cols = np.nonzero(ink)
    crop = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    factor = MNIST_BOX / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    fitted = np.asarray(
        Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS), dtype=np.float32
    )
    canvas = np.zeros((28, 28), np.float32)
    mass = fitted.sum()
    ys, xs = np.indices(fitted.shape)
    cy, cx = ((ys * fitted).sum() / mass, (xs * fitted).sum() / mass) if mass > 0 else (h / 2, w / 2)
    top = int(np.clip(round(14 - cy), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - fitted.shape[1]))
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return torch.from_numpy(canvas / 255.0)


def preprocess_resize(image: Image.Image) -> torch.Tensor:
    """Plain grayscale resize to 28x28, no inversion or centring."""
    gray = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255.0)
