"""Pictures of triplet references, large enough for a person to judge.

"shop:<sku>"                   the product's primary image (28x28 for the demo catalog: scaled up, nearest)
"street:<split>:<item_index>"  an item of a street photo of the street-to-shop benchmark (CURATION_BENCHMARK),
                               with its box drawn (mode "photo") or cropped (mode "crop")
"query:<id>"                   a shopper's search photo (QueryPhoto) with the searched box, or its crop

Reads only: the benchmark is loaded when it is on disk and never built here (a request answers a placeholder
that says how to build it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from webapp.catalog.models import Product
from webapp.curation.models import QueryPhoto
from webapp.curation.services import parse_ref

logger = logging.getLogger(__name__)

MODES = ("photo", "crop")
MIN_SIDE = 320  # the shortest side a reviewer gets: a 28 px shop image becomes 336 px
MAX_SIDE = 768
SMALL_IMAGE = 64  # at most this many pixels a side, an image is scaled up with nearest (no blur on 28x28 items)
CROP_CONTEXT = 0.1  # like the benchmark's and the embedder's crops: the box grown by 10% of its side
BOX_COLOUR = (255, 214, 0)
CACHE_SECONDS = 24 * 3600


class RefUnavailable(Exception):
    """The reference cannot be drawn: unknown, or its source (the benchmark) is not on this machine."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RefSource:
    """Where a reference's pixels come from, and a stamp that changes when they do."""

    ref: str
    stamp: str
    label: str
    box: tuple[int, int, int, int] | None  # the item, in pixels of the image (None: the whole image is the item)
    open: Callable[[], Image.Image]


@dataclass(frozen=True)
class RenderedRef:
    content: bytes
    etag: str
    status: int = 200
    max_age: int = CACHE_SECONDS


# -- the benchmark -------------------------------------------------------------------------------------------
_benchmark_lock = threading.Lock()
_benchmark_cache: dict[tuple[str, str], object] = {}


def benchmark_root() -> Path:
    from ml.data.street2shop import default_root

    return default_root(settings.CURATION_BENCHMARK, settings.CURATION_BENCHMARK_SEED)


def benchmark_built() -> bool:
    return (benchmark_root() / "data_hash.txt").exists()


def benchmark_loaded():
    """The CURATION_BENCHMARK as built on disk (loaded once per process and data hash), or RefUnavailable."""
    from ml.data.street2shop import load_benchmark

    root = benchmark_root()
    try:
        data_hash = (root / "data_hash.txt").read_text().strip()
    except FileNotFoundError:
        raise RefUnavailable(
            f"the street-to-shop benchmark ({settings.CURATION_BENCHMARK}, seed {settings.CURATION_BENCHMARK_SEED}) "
            "is not built: run `manage.py mine_triplets --build-benchmark`",
            status=503,
        ) from None
    key = (str(root), data_hash)
    with _benchmark_lock:
        if key not in _benchmark_cache:
            _benchmark_cache.clear()
            _benchmark_cache[key] = load_benchmark(
                root, size=settings.CURATION_BENCHMARK, seed=settings.CURATION_BENCHMARK_SEED
            )
        return _benchmark_cache[key]


# -- resolving -----------------------------------------------------------------------------------------------
def _open_file(field) -> Image.Image:
    try:
        with field.open("rb") as handle, Image.open(handle) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (FileNotFoundError, OSError, UnidentifiedImageError) as exc:
        raise RefUnavailable(f"the image file {field.name} cannot be read: {exc}") from exc


def _shop(sku: str) -> RefSource:
    product = Product.objects.filter(sku=sku).prefetch_related("images").first()
    if product is None:
        raise RefUnavailable(f"no product with SKU {sku!r} in the catalog")
    image = product.primary_image
    if image is None or not image.image:
        raise RefUnavailable(f"product {sku!r} has no image")
    stamp = f"{image.pk}-{image.checksum}"
    return RefSource(f"shop:{sku}", stamp, f"{product.title} ({sku})", None, lambda: _open_file(image.image))


def _street(rest: str) -> RefSource:
    split, _, index_text = rest.rpartition(":")
    bench = benchmark_loaded()
    index = int(index_text)
    if not 0 <= index < len(bench.items):
        raise RefUnavailable(f"street item {index} is not in the {bench.size} benchmark ({len(bench.items)} items)")
    item = bench.items[index]
    if item.split != split:
        raise RefUnavailable(f"street item {index} belongs to the {item.split} split, not {split}")
    label = f"street photo {item.photo_index}, item {index} ({split})"

    def open_photo() -> Image.Image:
        try:
            return bench.street_photo(item.photo_index)
        except OSError as exc:
            raise RefUnavailable(f"street photo {item.photo_index} cannot be read: {exc}", status=503) from exc

    return RefSource(f"street:{rest}", bench.data_hash[:16], label, tuple(item.box), open_photo)


def _query(rest: str) -> RefSource:
    photo = QueryPhoto.objects.filter(pk=int(rest)).first()
    if photo is None:
        raise RefUnavailable(f"no shopper photo {rest}")
    box = None
    if isinstance(photo.box, list | tuple) and len(photo.box) == 4:
        x0, y0, x1, y1 = (int(v) for v in photo.box)
        box = (x0, y0, x1, y1)
    return RefSource(
        f"query:{rest}", photo.checksum[:16], f"shopper photo {rest}", box, lambda: _open_file(photo.image)
    )


def ref_source(ref: str) -> RefSource:
    """What a reference shows (raises RefUnavailable); its pixels are read only when `open()` is called."""
    try:
        kind, rest = parse_ref(ref)
    except ValueError as exc:
        raise RefUnavailable(str(exc), status=400) from exc
    if kind == "shop":
        return _shop(rest)
    if kind == "street":
        return _street(rest)
    return _query(rest)


# -- drawing -------------------------------------------------------------------------------------------------
def _scaled(image: Image.Image) -> tuple[Image.Image, float]:
    """Scaled so the shortest side is at least MIN_SIDE and the longest at most MAX_SIDE; the factor used."""
    short, long = min(image.size), max(image.size)
    if short >= MIN_SIDE and long <= MAX_SIDE:
        return image, 1.0
    if long <= SMALL_IMAGE:
        factor: float = math.ceil(MIN_SIDE / short)  # whole pixels, nearest: the item's pixels stay sharp
        resample = Image.Resampling.NEAREST
    else:
        factor = min(MIN_SIDE / short, MAX_SIDE / long) if short < MIN_SIDE else MAX_SIDE / long
        resample = Image.Resampling.LANCZOS
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, resample), factor


def _crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    from ml.data.street2shop import crop_box

    return image.crop(crop_box(box, image.size, context=CROP_CONTEXT, square=True))


def _draw_box(image: Image.Image, box: tuple[int, int, int, int], factor: float) -> Image.Image:
    image = image.copy()
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (round(v * factor) for v in box)
    width = max(2, round(min(image.size) / 110))
    draw.rectangle((x0 - width, y0 - width, x1 + width - 1, y1 + width - 1), outline=(0, 0, 0), width=1)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_COLOUR, width=width)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def placeholder_png(message: str) -> bytes:
    image = Image.new("RGB", (MIN_SIDE, MIN_SIDE), (238, 240, 244))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, MIN_SIDE - 1, MIN_SIDE - 1), outline=(180, 186, 198), width=2)
    lines = textwrap.wrap(message, width=44)[:14]
    for number, line in enumerate(lines):
        draw.text((14, 16 + 18 * number), line, fill=(60, 66, 80))
    return _png(image)


def ref_render(*, ref: str, mode: str = "photo") -> RenderedRef:
    """The PNG of a reference: "photo" with the item's box drawn, or "crop" (the item with a little context).

    Unknown references and a missing benchmark give a placeholder picture that says why, with the status a
    client should see (400 bad reference, 404 unknown, 503 benchmark not built); these are never cached.
    """
    if mode not in MODES:
        mode = "photo"
    try:
        source = ref_source(ref)
        key = "curation-ref:" + hashlib.sha256(f"{ref}|{mode}|{source.stamp}".encode()).hexdigest()
        content = cache.get(key)
        image = source.open() if content is None else None
    except RefUnavailable as exc:
        return RenderedRef(placeholder_png(f"{ref}: {exc}"), etag="", status=exc.status, max_age=0)
    if image is not None:
        if source.box is not None and mode == "crop":
            picture, _ = _scaled(_crop(image, source.box))
        else:
            picture, factor = _scaled(image)
            if source.box is not None:
                picture = _draw_box(picture, source.box, factor)
        content = _png(picture)
        cache.set(key, content, CACHE_SECONDS)
    return RenderedRef(content, etag=hashlib.sha256(content).hexdigest()[:32])


def ref_has_context(ref: str) -> bool:
    """Whether the reference is an item inside a larger photo (a crop and a photo with its box both exist)."""
    return ref.startswith(("street:", "query:"))
