"""Validation and normalisation of every image that enters the product.

Never trust a file name, an extension or a declared content type: the bytes are sniffed by Pillow,
the format is allow-listed, sizes are capped before decoding, and the pixels are fully decoded once
so a truncated file fails here rather than later.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.template.defaultfilters import filesizeformat
from PIL import Image, ImageOps, UnidentifiedImageError

# A photo is a clean product shot when at least PLAIN_BORDER_SHARE of its frame (a 4% band) is at least
# PLAIN_BACKGROUND_LEVEL grey. Measured: 99.9% of 3,000 Fashion-MNIST catalog images pass, 1.4% of 800
# street-to-shop photos do (bright walls); items touching the frame keep it below 100%.
PLAIN_BACKGROUND_LEVEL = 250
PLAIN_BORDER_SHARE = 0.6
ALLOWED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


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


def _human(size: int) -> str:
    return filesizeformat(size).replace("\xa0", " ")


def check_size(size: int | None, name: str = "The file") -> None:
    """The one upload size rule (settings.IMAGE_MAX_BYTES), checked before bytes are read when the size is known."""
    limit = settings.IMAGE_MAX_BYTES
    if size is not None and size > limit:
        raise InvalidImage(f"{name} is {_human(size)}; the limit is {_human(limit)}.")


def read_limited(stream: Readable, declared_size: int | None = None, name: str = "The file") -> bytes:
    """Read an uploaded or local file, refusing it before reading when it declares (or turns out) too large."""
    check_size(declared_size, name)
    limit = settings.IMAGE_MAX_BYTES
    content = stream.read(limit + 1)
    if len(content) > limit:
        raise InvalidImage(f"{name} is larger than the {_human(limit)} limit.")
    return content


def read_upload(upload: UploadedFile) -> bytes:
    """The bytes of a file uploaded through the page or the API (size checked before reading)."""
    upload.seek(0)
    return read_limited(upload, upload.size)


def read_chunks(chunks: Iterable[bytes], name: str) -> bytes:
    """Join a stream of chunks (a download), stopping as soon as it passes the size limit."""
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > settings.IMAGE_MAX_BYTES:
            raise InvalidImage(f"{name} is larger than the {_human(settings.IMAGE_MAX_BYTES)} limit.")
        parts.append(chunk)
    return b"".join(parts)


def validate_image_bytes(content: bytes) -> ValidatedImage:
    if not content:
        raise InvalidImage("The file is empty (0 bytes).")
    check_size(len(content))
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
    decoded = Image.open(io.BytesIO(content))
    decoded.seek(0)
    image = ImageOps.exif_transpose(decoded)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def open_stored_image(stored: File) -> Image.Image:
    """A stored catalog image, validated again (the file may have changed on disk) and normalised."""
    with stored.open("rb") as handle:
        content = read_limited(handle)
    validate_image_bytes(content)
    return open_normalised(content)


def looks_like_product_shot(image: Image.Image) -> bool:
    """A clean product shot: the item alone on a plain light background (every side of the frame near white).

    Such a photo is embedded whole; anything else is a scene whose items are localized first.
    """
    grey = image.convert("L")
    grey.thumbnail((128, 128), Image.Resampling.BILINEAR)
    pixels = np.asarray(grey)
    band = max(1, round(min(pixels.shape) * 0.04))
    frame = np.concatenate(
        [pixels[:band].ravel(), pixels[-band:].ravel(), pixels[:, :band].ravel(), pixels[:, -band:].ravel()]
    )
    return bool((frame >= PLAIN_BACKGROUND_LEVEL).mean() >= PLAIN_BORDER_SHARE)


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
