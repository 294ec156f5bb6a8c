"""Every image that enters is sniffed, capped and fully decoded; bad ones get a clear message."""

import io
import struct
import zlib

import pytest
from PIL import Image

from tests.conftest import image_bytes
from webapp.catalog.images import InvalidImage, make_thumbnail, open_normalised, validate_image_bytes


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no pixel data (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_pass_with_their_dimensions(fmt):
    validated = validate_image_bytes(image_bytes(fmt, size=(64, 48)))
    assert (validated.format, validated.width, validated.height) == (fmt, 64, 48)
    assert len(validated.checksum) == 64


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"hello, I am a text file pretending to be a .jpg", "not an image"),
        (image_bytes("PNG", size=(300, 300))[:200], "damaged or truncated"),
        (image_bytes("JPEG", size=(300, 300))[:400], "damaged or truncated"),
        (png_header_only(30_000, 30_000), "longest side|too many pixels"),
        (png_header_only(8_000, 8_000), "megapixels"),
        (image_bytes("PNG", size=(4, 4)), "at least"),
    ],
    ids=["zero-bytes", "text", "truncated-png", "truncated-jpeg", "huge-dimensions", "bomb", "tiny"],
)
def test_bad_images_are_refused_with_a_clear_message(content, message):
    with pytest.raises(InvalidImage, match=message):
        validate_image_bytes(content)


def test_decompression_bomb_is_refused_even_within_size_caps(settings):
    settings.IMAGE_MAX_PIXELS = 10**12
    settings.IMAGE_MAX_SIDE = 10**6
    with pytest.raises(InvalidImage, match="too many pixels"):
        validate_image_bytes(png_header_only(20_000, 20_000))


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PDF", "PPM"])
def test_formats_outside_the_allowlist_are_refused(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(buffer, format=fmt)
    with pytest.raises(InvalidImage):
        validate_image_bytes(buffer.getvalue())


def test_oversized_file_is_refused_before_decoding(settings):
    settings.IMAGE_MAX_BYTES = 1000
    with pytest.raises(InvalidImage, match="limit is"):
        validate_image_bytes(b"\x89PNG" + b"0" * 5000)


def test_exif_orientation_and_alpha_are_normalised():
    buffer = io.BytesIO()
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(buffer, format="JPEG", exif=exif)
    upright = open_normalised(buffer.getvalue())
    assert upright.size == (30, 60) and upright.mode == "RGB"

    transparent = io.BytesIO()
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(transparent, format="PNG")
    flattened = open_normalised(transparent.getvalue())
    assert flattened.mode == "RGB" and flattened.getpixel((5, 5)) == (255, 255, 255)


def test_thumbnail_fits_the_box_and_enlarges_small_catalog_images():
    thumb = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (28, 28)), 256)))
    assert thumb.format == "WEBP" and thumb.size == (256, 256)
    wide = Image.open(io.BytesIO(make_thumbnail(Image.new("RGB", (1000, 500)), 256)))
    assert wide.size == (256, 128)
