"""Safe image decoding: accepted formats only, pixel count checked from the header before decoding."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ServiceError

ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


def decode_image(data: bytes, filename: str, max_pixels: int) -> Image.Image:
    """Decode an upload (one of ALLOWED_FORMATS) to an upright grayscale image; the pixel count is checked
    from the header before any pixel is decoded."""
    if not data:
        raise ServiceError(422, "empty_file", f"{filename}: the file is empty")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ServiceError(
            415, "unsupported_image", f"{filename}: not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError:
        raise ServiceError(413, "image_too_large", f"{filename}: image has too many pixels") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ServiceError(422, "corrupt_image", f"{filename}: cannot read the image: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ServiceError(422, "corrupt_image", f"{filename}: image has no pixels")
    if width * height > max_pixels:
        raise ServiceError(
            413, "image_too_large", f"{filename}: {width}x{height} exceeds the limit of {max_pixels} pixels"
        )
    try:
        image.seek(0)
        image.load()
        return ImageOps.exif_transpose(image).convert("L")  # EXIF parsing is hostile input too
    except Exception as error:  # Pillow's decoders raise many types on hostile input
        raise ServiceError(422, "corrupt_image", f"{filename}: cannot decode the image: {error}") from None
