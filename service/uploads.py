"""Safe, bounded image decoding: accepted formats only, pixel counts checked from the headers before any pixel is
decoded, and large images shrunk as early as Pillow allows, so a decode's memory is bounded by the pixel cap."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .failures import CorruptImage, EmptyFile, ImageTooLarge, RequestTooLarge, UnsupportedImage

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
# Decoded images are shrunk to fit this box before preprocessing, which only needs 28x28: a digit a tenth of the
# picture wide still spans 100 pixels, five times the 20x20 box MNIST fits it into. Smaller images are untouched.
WORKING_SIZE = (1024, 1024)
# Opening a PNG inflates its text chunks before any pixel (64 MB by default); no upload needs text here.
PngImagePlugin.MAX_TEXT_CHUNK = PngImagePlugin.MAX_TEXT_MEMORY = 64 * 1024


def check_request_pixels(uploads: Sequence[tuple[bytes, str]], max_image_pixels: int, max_request_pixels: int) -> None:
    """Refuse a request by what its headers declare, before any image of it is decoded: each image against
    `max_image_pixels`, all of them together against `max_request_pixels`, which bounds a request's decoding."""
    total = 0
    for data, filename in uploads:
        width, height = open_image(data, filename, max_image_pixels).size
        total += width * height
    if total > max_request_pixels:
        raise RequestTooLarge(
            f"the images of this request have {total} pixels in all, over the limit of {max_request_pixels} "
            "pixels per request",
        )


def open_image(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """Open an upload (one of ALLOWED_FORMATS) without decoding it; refused if its header declares over `max_pixels`."""
    if not data:
        raise EmptyFile(f"{filename}: the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"{filename}: not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{filename}: image exceeds the limit of {max_pixels} pixels per image") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise CorruptImage(f"{filename}: cannot read the image: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage(f"{filename}: image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{filename}: {width}x{height} exceeds the limit of {max_pixels} pixels per image")
    return image


def decode_image(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """An upload as an upright grayscale image no larger than WORKING_SIZE. JPEG is shrunk while it is decoded, any
    other format right after, so no full-size copy outlives the decode (docs/operations.md, Memory)."""
    image = open_image(data, filename, max_pixels)
    try:
        image.seek(0)
        image.draft(None, WORKING_SIZE)  # JPEG decodes at 1/2, 1/4 or 1/8 scale, still covering the box
        ImageOps.exif_transpose(image, in_place=True)  # decodes; copies only an image that must be turned
        image = image.convert("L")  # the full-size decode is freed here, before any resampling
        image.thumbnail(WORKING_SIZE)  # reduce() by whole factors, then resample: Pillow's cheap, fair shrink
        return image
    except Exception as error:  # Pillow's decoders raise many types on hostile input, EXIF parsing too
        raise CorruptImage(f"{filename}: cannot decode the image: {error}") from None
