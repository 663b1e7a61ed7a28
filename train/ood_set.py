"""A deterministic set of pictures that are not digits: what /score's in_distribution flag must reject.

Every picture is drawn by code from a seed (no downloads) as an 8-bit image of any size, light ink on dark or
dark ink on light, and is meant to go through the service's own path (PNG bytes -> decode -> preprocess_mnist
-> binarize at 0.5). Categories:
- blank: black, white, grey, 1x1, fully transparent and faint-noise images (no ink once binarized);
- lines: straight strokes within 40 degrees of horizontal (a near-vertical stroke is the digit 1);
- circles, rectangles: outlines of several widths and aspect ratios;
- blobs: filled ellipses, rectangles and polygons;
- noise: uniform grey-level and sparse salt noise;
- glyphs: letters and symbols in Pillow's default font, scaled, except the glyphs that are digits in another
  font (DIGIT_LIKE: O o D Q are 0, I l i j J T are 1, Z z are 2, S s are 5, b G are 6, B are 8, g q are 9);
- scribbles: random polylines of several strokes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CATEGORIES = ("blank", "lines", "circles", "rectangles", "blobs", "noise", "glyphs", "scribbles")
DIGIT_LIKE = set("ODQoIilJjTZzSsbGBgq")
GLYPHS = [c for c in "ACEFHKLMNPRUVWXYacdefhkmnprtuvwxy#%&*+=?!$@<>/\\{}[]~^" if c not in DIGIT_LIKE]
CANVAS = 64


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    """A blank canvas and the ink colour: half light ink on dark, half dark ink on light."""
    dark_background = rng.random() < 0.5
    image = Image.new("L", (CANVAS, CANVAS), 0 if dark_background else 255)
    return image, ImageDraw.Draw(image), 255 if dark_background else 0


def _point(rng: np.random.Generator, margin: int = 6) -> tuple[int, int]:
    return tuple(int(v) for v in rng.integers(margin, CANVAS - margin, 2))


def blank(rng: np.random.Generator, i: int) -> Image.Image:
    kind = i % 6
    if kind == 0:
        return Image.new("L", (28, 28), 0)
    if kind == 1:
        return Image.new("L", (int(rng.integers(2, 200)),) * 2, 255)
    if kind == 2:
        return Image.new("L", (CANVAS, CANVAS), int(rng.integers(1, 255)))
    if kind == 3:
        return Image.new("L", (1, 1), int(rng.integers(0, 256)))
    if kind == 4:
        return Image.new("RGBA", (CANVAS, CANVAS), (*(int(v) for v in rng.integers(0, 256, 3)), 0))
    faint = rng.integers(0, 40, (CANVAS, CANVAS)).astype(np.uint8)  # speckle too faint to binarize as ink
    return Image.fromarray(faint, mode="L")


def lines(rng: np.random.Generator, i: int) -> Image.Image:
    image, draw, ink = _canvas(rng)
    angle = math.radians(rng.uniform(-40, 40))
    length = rng.uniform(20, 50)
    cx, cy = _point(rng, 20)
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=ink, width=int(rng.integers(1, 8)))
    return image


def circles(rng: np.random.Generator, i: int) -> Image.Image:
    image, draw, ink = _canvas(rng)
    r = rng.uniform(10, 28)
    squash = rng.uniform(0.5, 1.0) if i % 2 else 1.0
    cx, cy = CANVAS / 2, CANVAS / 2
    draw.ellipse([cx - r, cy - r * squash, cx + r, cy + r * squash], outline=ink, width=int(rng.integers(1, 7)))
    return image


def rectangles(rng: np.random.Generator, i: int) -> Image.Image:
    image, draw, ink = _canvas(rng)
    w, h = rng.uniform(12, 56, 2)
    left, top = (CANVAS - w) / 2, (CANVAS - h) / 2
    draw.rectangle([left, top, left + w, top + h], outline=ink, width=int(rng.integers(1, 7)))
    return image


def blobs(rng: np.random.Generator, i: int) -> Image.Image:
    image, draw, ink = _canvas(rng)
    kind = i % 3
    if kind == 0:
        w, h = rng.uniform(10, 56, 2)
        draw.ellipse([(CANVAS - w) / 2, (CANVAS - h) / 2, (CANVAS + w) / 2, (CANVAS + h) / 2], fill=ink)
    elif kind == 1:
        w, h = rng.uniform(10, 56, 2)
        draw.rectangle([(CANVAS - w) / 2, (CANVAS - h) / 2, (CANVAS + w) / 2, (CANVAS + h) / 2], fill=ink)
    else:
        corners = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, corners))
        radii = rng.uniform(8, 28, corners)
        draw.polygon(
            [(32 + r * math.cos(a), 32 + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)], fill=ink
        )
    return image


def noise(rng: np.random.Generator, i: int) -> Image.Image:
    if i % 2:
        return Image.fromarray(rng.integers(0, 256, (CANVAS, CANVAS)).astype(np.uint8), mode="L")
    salt = rng.random((CANVAS, CANVAS)) < rng.uniform(0.02, 0.3)
    return Image.fromarray((salt * 255).astype(np.uint8), mode="L")


def glyphs(rng: np.random.Generator, i: int) -> Image.Image:
    """One glyph of Pillow's default font (FreeType), drawn at a random size."""
    image, draw, ink = _canvas(rng)
    font = ImageFont.load_default(size=float(rng.uniform(24, 48)))
    draw.text((CANVAS / 2, CANVAS / 2), GLYPHS[i % len(GLYPHS)], fill=ink, font=font, anchor="mm")
    return image


def scribbles(rng: np.random.Generator, i: int) -> Image.Image:
    image, draw, ink = _canvas(rng)
    points = [_point(rng) for _ in range(int(rng.integers(4, 9)))]
    draw.line(points, fill=ink, width=int(rng.integers(2, 6)), joint="curve")
    return image


DRAW = {name: globals()[name] for name in CATEGORIES}


def generate(per_category: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """(category, PNG bytes) for `per_category` pictures of each category; the same seed gives the same bytes."""
    for c, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, c])
        for i in range(per_category):
            yield category, png(DRAW[category](rng, i))
