"""Validation and normalisation of every image that enters the product.

Never trust a file name, an extension or a declared content type: the bytes are sniffed by Pillow,
the format is allow-listed, sizes are capped before decoding, and the pixels are fully decoded once
so a truncated file fails here rather than later.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class InvalidImage(ValueError):
    """An image that must be refused; the message is safe to show to the user."""


@dataclass(frozen=True)
class ValidatedImage:
    content: bytes
    format: str
    extension: str
    width: int
    height: int
    checksum: str


def validate_image_bytes(content: bytes) -> ValidatedImage:
    if not content:
        raise InvalidImage("The file is empty (0 bytes).")
    if len(content) > settings.IMAGE_MAX_BYTES:
        raise InvalidImage(
            f"The file is {len(content) / 1e6:.1f} MB; the limit is {settings.IMAGE_MAX_BYTES / 1e6:.0f} MB."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as probe:
                image_format = probe.format
                width, height = probe.size
                _check_dimensions(width, height)
                if image_format not in ALLOWED_FORMATS:
                    raise InvalidImage(
                        f"Unsupported image format {image_format}; use one of {', '.join(sorted(ALLOWED_FORMATS))}."
                    )
                probe.verify()
            with Image.open(io.BytesIO(content)) as full:
                full.load()
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage("The image has too many pixels (possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise InvalidImage("The file is not an image Pillow can identify.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"The image is damaged or truncated ({exc}).") from None
    return ValidatedImage(
        content=content,
        format=image_format,
        extension=ALLOWED_FORMATS[image_format],
        width=width,
        height=height,
        checksum=hashlib.sha256(content).hexdigest(),
    )


def _check_dimensions(width: int, height: int) -> None:
    if width < settings.IMAGE_MIN_SIDE or height < settings.IMAGE_MIN_SIDE:
        raise InvalidImage(f"The image is {width}x{height}; each side must be at least {settings.IMAGE_MIN_SIDE} px.")
    if max(width, height) > settings.IMAGE_MAX_SIDE:
        raise InvalidImage(f"The image is {width}x{height}; the longest side may be {settings.IMAGE_MAX_SIDE} px.")
    if width * height > settings.IMAGE_MAX_PIXELS:
        raise InvalidImage(
            f"The image has {width * height / 1e6:.0f} megapixels; the limit is {settings.IMAGE_MAX_PIXELS / 1e6:.0f}."
        )


def open_normalised(content: bytes) -> Image.Image:
    """Decode validated bytes into an upright RGB image (EXIF orientation applied, alpha on white)."""
    image = Image.open(io.BytesIO(content))
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def make_thumbnail(image: Image.Image, size: int) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    if max(thumb.size) < size:
        # Small catalog images (Fashion-MNIST is 28 px) are enlarged so pages stay readable.
        scale = size / max(thumb.size)
        thumb = thumb.resize((round(thumb.width * scale), round(thumb.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=85)
    return buffer.getvalue()
