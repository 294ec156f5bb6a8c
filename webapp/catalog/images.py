"""Validation and normalisation of every image that enters the product (the page, the API, the import).

Never trust a file name, an extension or a declared content type: the bytes are sniffed, only the allowed
formats' Pillow plugins may open them, sizes are capped before decoding, the file's structure is walked before
Pillow parses it (truncation, appended or hidden payloads, EXIF bombs, scan bombs), and the pixels are fully
decoded and normalised once, so a bad file fails here rather than later. tests/hostile_corpus.py holds the cases.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
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
# The only plugins Pillow may use on uploaded bytes. Its JPEG plugin also opens MPO, the multi-picture JPEG many
# phones write (kept as JPEG: its first picture is the photo).
OPENED_FORMATS = tuple(ALLOWED_FORMATS)
WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# HTML, script, PHP, a PDF header or a zip directory in an image's metadata (EXIF, comments, text chunks,
# extensions): an image never needs them; a polyglot (a file that a browser, a PDF reader, an interpreter or an
# archive tool also reads as its own) does. Only metadata is searched: compressed pixels would match by chance.
ACTIVE_CONTENT = re.compile(
    rb"<\s*(?:script|html|iframe|svg|body|object|embed)[\s>/]|<\?php|javascript:|(?-i:%PDF-|PK\x03\x04|PK\x05\x06)",
    re.IGNORECASE,
)
PADDING = b"\x00\xff\r\n\t "  # what encoders leave after an image's end
# Structure limits, far above what cameras and encoders write (progressive JPEGs have about 10 scans, EXIF a few
# hundred entries) and far below what makes a parser spend seconds or hundreds of MB.
MAX_JPEG_SCANS = 100
MAX_JPEG_PICTURES = 8
MAX_PNG_CHUNKS = 100_000
MAX_TIFF_ENTRIES = 10_000
MAX_TIFF_DIRECTORIES = 1_000


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
    """The one image rule: the bytes must be one whole image of an allowed format, within the limits, with nothing
    appended or hidden in it, that decodes completely and normalises to RGB. Raises InvalidImage with the reason."""
    if not content:
        raise InvalidImage("The file is empty (0 bytes).")
    check_size(len(content))
    check_structure(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content), formats=OPENED_FORMATS) as probe:
                image_format = "JPEG" if probe.format == "MPO" else probe.format
                width, height = probe.size
                _check_dimensions(width, height)
                probe.verify()
            with Image.open(io.BytesIO(content), formats=OPENED_FORMATS) as full:
                full.load()
                _upright_rgb(full)
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage("The image has too many pixels (possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise InvalidImage(_unidentified(content)) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"The image is damaged or truncated ({exc}).") from None
    return ValidatedImage(
        content=content,
        format=image_format,
        extension=ALLOWED_FORMATS[image_format],
        width=width,
        height=height,
        checksum=hashlib.sha256(content).hexdigest(),
    )


def _unidentified(content: bytes) -> str:
    """Name the format when Pillow knows it (only to say so: it is never decoded), else say it is not an image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(content)) as other:
                name = other.format
    except Exception:  # any plugin may fail in its own way on bytes that are not its format
        name = None
    if name:
        return f"Unsupported image format {name}; use one of {', '.join(sorted(ALLOWED_FORMATS))}."
    return "The file is not an image Pillow can identify."


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
    """Decode validated bytes into an upright RGB image: the first frame, EXIF orientation applied, transparency
    on white, CMYK converted, 16-bit samples scaled (not clipped) to 8 bits."""
    return _upright_rgb(Image.open(io.BytesIO(content), formats=OPENED_FORMATS))


def _upright_rgb(decoded: Image.Image) -> Image.Image:
    decoded.seek(0)
    image = ImageOps.exif_transpose(decoded)
    if image.mode in WIDE_GREY_MODES:
        image = _eight_bit_grey(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer, or float) grey as 8-bit: Pillow's own conversion clips every value above 255."""
    samples = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        samples = samples * 255 if samples.size and samples.max() <= 1.0 else samples
    else:
        samples = samples / 257
    grey = Image.fromarray(np.clip(np.rint(samples), 0, 255).astype(np.uint8))
    transparency = image.info.get("transparency")
    if isinstance(transparency, int):  # a 16-bit grey colour key: keep it as a mask
        mask = Image.fromarray(np.where(np.asarray(image) == transparency, 0, 255).astype(np.uint8))
        grey = Image.merge("LA", (grey, mask))
    return grey


# The structure of the bytes, checked before Pillow parses them ---------------------------------------------
@dataclass
class _Layout:
    """What a walk through a file's structure found: where the image ends, its EXIF-like blocks, its metadata."""

    end: int = 0
    exif: list[bytes] = field(default_factory=list)
    metadata: list[bytes] = field(default_factory=list)


def check_structure(content: bytes) -> None:
    """Refuse a file that is cut short, continues after its image ends (something appended: a polyglot), hides
    HTML or script in its metadata, carries EXIF that would expand, loop or point outside itself, or is a JPEG
    with a pathological number of scans. Pillow tolerates all of these; some cost it hundreds of MB or seconds
    before a pixel is decoded."""
    layout = _Layout()
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = "PNG"
        _png_structure(content, layout)
    elif content.startswith(b"\xff\xd8"):
        kind = "JPEG"
        _jpeg_structure(content, layout)
    elif content[:6] in (b"GIF87a", b"GIF89a"):
        kind = "GIF"
        _gif_structure(content, layout)
    elif content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        kind = "WebP"
        _webp_structure(content, layout)
    elif content[:4] in (b"II*\x00", b"MM\x00*"):
        kind = "TIFF"
        layout.end = _tiff_structure(content, whole_file=True)
    elif content[:2] == b"BM" and len(content) >= 6:
        kind, declared = "BMP", struct.unpack("<I", content[2:6])[0]
        if declared > len(content):
            raise _truncated(f"the BMP says {declared} bytes, the file has {len(content)}")
        layout.end = declared or len(content)
    else:
        return  # not an allowed format: Pillow says so
    if any(ACTIVE_CONTENT.search(data) for data in (*layout.metadata, *layout.exif)):
        raise InvalidImage(
            f"The {kind} image hides HTML, script, a PDF or an archive in its metadata (a polyglot); "
            "it is not accepted."
        )
    for block in layout.exif:
        _tiff_structure(block, whole_file=False)
    trailing = content[layout.end :]
    if trailing.strip(PADDING):
        raise InvalidImage(
            f"The file continues for {len(trailing)} bytes after the end of its {kind} image (something appended to "
            "an image, such as an archive, a document or a script, is not accepted)."
        )


def _truncated(what: str) -> InvalidImage:
    return InvalidImage(f"The image is damaged or truncated ({what}).")


PNG_IMAGE_DATA = {b"IHDR", b"PLTE", b"IDAT", b"fdAT", b"tRNS", b"IEND"}


def _png_structure(content: bytes, layout: _Layout) -> None:
    position, chunks = 8, 0
    while position + 8 <= len(content):
        length, kind = struct.unpack(">I4s", content[position : position + 8])
        end = position + 12 + length
        if end > len(content):
            raise _truncated(f"the PNG chunk {kind.decode('latin-1')!r} runs past the end of the file")
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidImage(f"The PNG has more than {MAX_PNG_CHUNKS} chunks; it is not accepted.")
        data = content[position + 8 : position + 8 + length]
        if kind == b"eXIf":
            layout.exif.append(data)
        elif kind not in PNG_IMAGE_DATA:
            layout.metadata.append(data)
        if kind == b"IEND":
            layout.end = end
            return
        position = end
    raise _truncated("the PNG ends before its IEND chunk")


def _jpeg_structure(content: bytes, layout: _Layout, start: int = 0, depth: int = 0) -> None:
    """Walk the JPEG's segments and entropy-coded scans to its EOI; pictures appended after it (MPO) are walked too."""
    position, scans, size = start + 2, 0, len(content)
    while True:
        if position >= size:
            raise _truncated("the JPEG ends before its end marker")
        if content[position] != 0xFF:
            raise _truncated("a JPEG segment is malformed")
        while position < size and content[position] == 0xFF:
            position += 1
        if position >= size:
            raise _truncated("the JPEG ends before its end marker")
        marker = content[position]
        position += 1
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if position + 2 > size:
            raise _truncated("the JPEG ends inside a segment header")
        length = struct.unpack(">H", content[position : position + 2])[0]
        end = position + length
        if length < 2 or end > size:
            raise _truncated("a JPEG segment runs past the end of the file")
        payload = content[position + 2 : end]
        if marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            layout.exif.append(payload[6:])
        elif marker == 0xE2 and payload.startswith(b"MPF\x00"):
            layout.exif.append(payload[4:])
        elif marker == 0xFE or 0xE0 <= marker <= 0xEF:
            layout.metadata.append(payload)
        position = end
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImage(f"The JPEG has more than {MAX_JPEG_SCANS} scans; it is not accepted.")
            position = _end_of_scan(content, position)
    layout.end = position
    following = len(content) - len(content[position:].lstrip(PADDING))
    if content[following : following + 1] == b"\xd8" and following > position:
        following -= 1  # the padding took the 0xFF of the next picture's SOI
    if content[following : following + 2] == b"\xff\xd8" and depth < MAX_JPEG_PICTURES:
        _jpeg_structure(content, layout, following, depth + 1)  # the next picture of a multi-picture JPEG


def _end_of_scan(content: bytes, position: int) -> int:
    """The offset of the marker that ends the entropy-coded data starting at `position`."""
    while True:
        found = content.find(b"\xff", position)
        if found < 0 or found + 1 >= len(content):
            raise _truncated("the JPEG ends inside its image data")
        following = content[found + 1]
        if following == 0x00 or following == 0xFF or 0xD0 <= following <= 0xD7:
            position = found + 1
            continue
        return found


def _gif_structure(content: bytes, layout: _Layout) -> None:
    size = len(content)
    if size < 13:
        raise _truncated("the GIF header is incomplete")
    flags, position = content[10], 13
    if flags & 0x80:
        position += 3 << ((flags & 7) + 1)
    while True:
        if position >= size:
            raise _truncated("the GIF ends before its trailer")
        block = content[position]
        if block == 0x3B:
            layout.end = position + 1
            return
        if block == 0x21:
            position = _skip_sub_blocks(content, position + 2, layout.metadata)
        elif block == 0x2C:
            if position + 10 > size:
                raise _truncated("a GIF image descriptor is incomplete")
            flags = content[position + 9]
            position += 10 + ((3 << ((flags & 7) + 1)) if flags & 0x80 else 0) + 1
            position = _skip_sub_blocks(content, position, None)
        else:
            raise _truncated(f"unexpected GIF block 0x{block:02x}")


def _skip_sub_blocks(content: bytes, position: int, collect: list[bytes] | None) -> int:
    start = position
    while True:
        if position >= len(content):
            raise _truncated("the GIF ends inside a data block")
        length = content[position]
        position += 1 + length
        if length == 0:
            if collect is not None:
                collect.append(content[start:position])
            return position


WEBP_IMAGE_DATA = {b"VP8 ", b"VP8L", b"ALPH", b"ANMF", b"VP8X", b"ANIM"}


def _webp_structure(content: bytes, layout: _Layout) -> None:
    declared = struct.unpack("<I", content[4:8])[0]
    if 8 + declared > len(content):
        raise _truncated(f"the WebP says {8 + declared} bytes, the file has {len(content)}")
    end = 8 + declared
    position = 12
    while position + 8 <= end:
        kind, length = struct.unpack("<4sI", content[position : position + 8])
        if position + 8 + length > end:
            raise _truncated(f"the WebP chunk {kind.decode('latin-1')!r} runs past the end of the file")
        data = content[position + 8 : position + 8 + length]
        if kind == b"EXIF":
            layout.exif.append(data[6:] if data.startswith(b"Exif\x00\x00") else data)
        elif kind not in WEBP_IMAGE_DATA:
            layout.metadata.append(data)
        position += 8 + length + (length & 1)
    layout.end = end


TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
TIFF_SUB_IFDS = {0x8769, 0x8825, 0xA005, 0x014A}  # EXIF, GPS, interoperability, sub-images
TIFF_DATA = {273: 279, 324: 325}  # strip offsets -> strip byte counts, tile offsets -> tile byte counts


def _tiff_structure(block: bytes, whole_file: bool) -> int:
    """Walk a TIFF structure (a TIFF file, or the EXIF or multi-picture index inside another format): refuse loops,
    pointers outside the block, too many entries, and values that overlap into far more bytes than the block holds
    (an EXIF bomb: every tag pointing at the same bytes). Returns where the structure's last byte ends."""
    what = "TIFF structure" if whole_file else "EXIF metadata"
    if len(block) < 8 or block[:4] not in (b"II*\x00", b"MM\x00*"):
        raise InvalidImage(f"The image's {what} is damaged (no TIFF header).")
    order = "<" if block[:2] == b"II" else ">"
    pending, visited = [struct.unpack(order + "I", block[4:8])[0]], set()
    entries = declared = 0
    extent = 8
    while pending:
        offset = pending.pop()
        if offset == 0:
            continue
        if offset in visited:
            raise InvalidImage(f"The image's {what} is damaged (its directories form a loop).")
        visited.add(offset)
        if offset + 2 > len(block):
            raise InvalidImage(f"The image's {what} is damaged (a directory lies outside it).")
        count = struct.unpack(order + "H", block[offset : offset + 2])[0]
        end = offset + 2 + 12 * count + 4
        entries += count
        if end > len(block) or entries > MAX_TIFF_ENTRIES or len(visited) > MAX_TIFF_DIRECTORIES:
            raise InvalidImage(f"The image's {what} is damaged or too large (a directory lies outside it, or "
                               f"it has more than {MAX_TIFF_ENTRIES} entries).")  # fmt: skip
        extent = max(extent, end)
        arrays: dict[int, list[int]] = {}
        for at in range(offset + 2, end - 4, 12):
            tag, kind, number = struct.unpack(order + "HHI", block[at : at + 8])
            if kind not in TIFF_TYPE_SIZES:
                continue  # Pillow skips unknown types too
            length = TIFF_TYPE_SIZES[kind] * number
            start = at + 8
            if length > 4:
                start = struct.unpack(order + "I", block[at + 8 : at + 12])[0]
                if start + length > len(block):
                    raise InvalidImage(f"The image's {what} is damaged (a value lies outside it).")
                declared += length
                extent = max(extent, start + length)
            if tag in TIFF_SUB_IFDS and kind in (4, 13) or whole_file and tag in (*TIFF_DATA, *TIFF_DATA.values()):
                if kind not in (3, 4, 13) or number > MAX_TIFF_ENTRIES:
                    raise InvalidImage(f"The image's {what} is damaged (a pointer of the wrong type).")
                code = {3: "H", 4: "I", 13: "I"}[kind]
                arrays[tag] = list(struct.unpack(f"{order}{number}{code}", block[start : start + length]))
        for tag in TIFF_SUB_IFDS & set(arrays):
            pending.extend(arrays[tag])
        for offsets_tag, counts_tag in TIFF_DATA.items():
            for start, length in zip(arrays.get(offsets_tag, []), arrays.get(counts_tag, []), strict=False):
                if start + length > len(block):
                    raise _truncated("the TIFF image data runs past the end of the file")
                extent = max(extent, start + length)
        if declared > len(block) + 4096:
            raise InvalidImage(
                f"The image's {what} declares {_human(declared)} of values in {_human(len(block))} "
                "(an EXIF bomb); it is not accepted."
            )
        pending.append(struct.unpack(order + "I", block[end - 4 : end])[0])
    return extent


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
