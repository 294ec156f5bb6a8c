"""Reads: visually similar products and search by photo, ranked, filtered, joined to the catalog."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace

import numpy as np
from django.conf import settings
from django.core.cache import cache
from PIL import Image

from ml.detection.crops import embed_items, item_crops
from webapp.catalog.images import looks_like_product_shot, open_normalised, validate_image_bytes
from webapp.catalog.models import Category, Product
from webapp.search import registry
from webapp.search.localization import ItemBox, LocalizationUnavailable, photo_localize
from webapp.search.models import ModelVersion
from webapp.search.vector_store import Hit, SearchFilters, best_per_product

MAX_K = 100


@dataclass(frozen=True)
class RankedProduct:
    product: Product
    score: float


def _ranked(hits, limit: int) -> list[RankedProduct]:
    """Join hits to live catalog rows, dropping any product deleted since it was indexed."""
    products = (
        Product.objects.select_related("category").prefetch_related("images").in_bulk([h.product_id for h in hits])
    )
    ranked = [RankedProduct(products[h.product_id], h.score) for h in hits if h.product_id in products]
    return ranked[:limit]


def overfetch(k: int) -> int:
    """How many image hits a query for k products asks for: several images can belong to one product."""
    return min(max(4 * k, k + 20), 16384)


def _serving(version: ModelVersion | None) -> ModelVersion | None:
    """The version a read serves: the one given (an A/B arm, webapp.search.experiments), else the active one."""
    return version if version is not None else registry.active_version()


def similar_products(
    *,
    product: Product,
    k: int = 12,
    filters: SearchFilters = SearchFilters(),
    version: ModelVersion | None = None,
) -> list[RankedProduct]:
    """The products that look most like `product`, from the collection of `version` (default: the active one)."""
    k = max(1, min(int(k), MAX_K))
    version = _serving(version)
    if version is None:
        return []  # nothing registered yet: nothing is indexed
    store = registry.version_store(version)  # the version's own collection (pinned by name)
    filters = SearchFilters(filters.category_id, filters.max_price, filters.in_stock, exclude_product_id=product.pk)
    filter_digest = hashlib.sha1(filters.expression().encode()).hexdigest()[:16]
    cache_key = f"similar:{store.target}:{product.pk}:{k}:{filter_digest}"
    cached = cache.get(cache_key)
    if cached is None:
        vectors = store.vectors_for_images(list(product.images.values_list("pk", flat=True)))
        if len(vectors) == 0:
            return []
        hits = best_per_product(store.search(vectors, overfetch(k), filters), k)
        cached = [(h.product_id, h.score) for h in hits]
        cache.set(cache_key, cached, settings.SIMILAR_PRODUCTS_CACHE_SECONDS)
    return _ranked([Hit(image_id=0, product_id=pid, score=score) for pid, score in cached], k)


def search_by_image(
    *,
    content: bytes,
    k: int = 24,
    filters: SearchFilters = SearchFilters(),
    version: ModelVersion | None = None,
) -> list[RankedProduct]:
    """Search the catalog with a shopper's whole photo, with `version` (default: the active one). Raises
    InvalidImage for bad bytes."""
    k = max(1, min(int(k), MAX_K))
    validate_image_bytes(content)
    picture = open_normalised(content)
    # One snapshot of the version: the query is embedded by the same model as the vectors it searches, even
    # while the alias swaps (the previous collection stays until it is dropped).
    version = _serving(version)
    if version is None:
        return []
    return _search_vector(version, registry.embedder_for(version).embed_one(picture), k, filters, None)


# Search by a shopper's photo: localize, choose an item, embed its crop -------------------------------
WHOLE_PHOTO = "whole_photo"
DETECTED = "detected"
CLIENT = "client"
NOTE_PRODUCT_SHOT = "The photo shows one product on a plain background; it was searched whole."
NOTE_NOTHING_FOUND = "No item was found in the photo; the whole photo was searched."
NOTE_NO_LOCALIZATION = "Item detection is unavailable right now ({reason}); the boxes could not be shown."


class InvalidBox(ValueError):
    """A box sent by the client that cannot be searched; the message is safe to show."""


@dataclass(frozen=True)
class PhotoQuery:
    """What was searched: a detected item (`index`), a box the client drew, or the whole photo."""

    kind: str
    box: tuple[int, int, int, int] | None = None
    index: int | None = None
    label: str | None = None
    note: str = ""


@dataclass(frozen=True)
class PhotoSearch:
    width: int
    height: int
    boxes: list[ItemBox]
    query: PhotoQuery
    results: list[RankedProduct]
    timings_ms: dict[str, float] = field(default_factory=dict)  # decode, localize (detect inside it), embed, search


class _Stopwatch:
    def __init__(self) -> None:
        self.timings_ms: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings_ms[stage] = round((now - self._last) * 1000, 2)
        self._last = now


def checked_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """A client's box (x1, y1, x2, y2 in pixels of the upright photo), or InvalidBox with the reason."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise InvalidBox(f"The box {list(box)} has no area: it needs x1 < x2 and y1 < y2.")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InvalidBox(f"The box {list(box)} lies outside the {width}x{height} photo.")
    return box


def _choose(boxes: list[ItemBox], box: tuple[int, int, int, int] | None, whole_photo: bool, note: str) -> PhotoQuery:
    if box is not None:
        picked = next((item for item in boxes if item.box == tuple(box)), None)
        if picked is not None:  # the client sent back one of the detected boxes: search it as that item
            return PhotoQuery(DETECTED, box=picked.box, index=picked.index, label=picked.label, note=note)
        return PhotoQuery(CLIENT, box=box, note="" if note == NOTE_PRODUCT_SHOT else note)
    if whole_photo:
        return PhotoQuery(WHOLE_PHOTO, note=note)
    if not boxes:
        return PhotoQuery(WHOLE_PHOTO, note=note or NOTE_NOTHING_FOUND)
    best = boxes[0]
    return PhotoQuery(DETECTED, box=best.box, index=best.index, label=best.label, note=note)


def _locate(picture: Image.Image, wanted: bool, clock: _Stopwatch) -> tuple[list[ItemBox], str]:
    """The photo's items (none for a clean product shot). Without localization, a query that needs a detected
    box fails (LocalizationUnavailable); one that does not (a client box, the whole photo) goes on with a note."""
    if looks_like_product_shot(picture):
        return [], NOTE_PRODUCT_SHOT
    try:
        found = photo_localize(picture=picture)
    except LocalizationUnavailable as exc:
        if wanted:
            raise
        return [], NOTE_NO_LOCALIZATION.format(reason=exc)
    clock.lap("localize")
    clock.timings_ms["detect"] = found.detect_ms
    return found.boxes, ""


def search_by_photo(
    *,
    content: bytes,
    k: int = 24,
    filters: SearchFilters = SearchFilters(),
    box: tuple[int, int, int, int] | None = None,
    whole_photo: bool = False,
    version: ModelVersion | None = None,
) -> PhotoSearch:
    """Search with the item a shopper picks in a photo: the best detected item by default, a box they drew, or the
    whole photo, with `version` (default: the active one). Raises InvalidImage, InvalidBox, LocalizationUnavailable
    (only when a detected box is needed)."""
    k = max(1, min(int(k), MAX_K))
    clock = _Stopwatch()
    validate_image_bytes(content)
    picture = open_normalised(content)
    clock.lap("decode")
    if box is not None:
        box = checked_box(box, picture.width, picture.height)
    boxes, note = _locate(picture, wanted=box is None and not whole_photo, clock=clock)
    query = _choose(boxes, box, whole_photo, note)
    version = _serving(version)
    if version is None:
        return PhotoSearch(picture.width, picture.height, boxes, query, [], clock.timings_ms)
    crops = item_crops(picture, query.box, settings.CROP_CONTEXTS)
    vector = embed_items(registry.embedder_for(version), [crops])[0]
    clock.lap("embed")
    results = _search_vector(version, vector, k, filters, query.label)
    clock.lap("search")
    return PhotoSearch(picture.width, picture.height, boxes, query, results, clock.timings_ms)


def _detected_category(label: str | None) -> int | None:
    if not label:
        return None
    category = Category.objects.filter(name__iexact=label).only("pk").first()
    return category.pk if category is not None else None


def _search_vector(
    version: ModelVersion, vector: np.ndarray, k: int, filters: SearchFilters, label: str | None
) -> list[RankedProduct]:
    """Search the version's collection; the detected class narrows or boosts the category unless the shopper chose
    one (DETECTED_CATEGORY_MODE)."""
    store = registry.version_store(version)
    mode = settings.DETECTED_CATEGORY_MODE
    category_id = _detected_category(label) if filters.category_id is None and mode != "off" else None
    if category_id is None:
        return _ranked(best_per_product(store.search(vector, overfetch(k), filters), k), k)
    narrowed = replace(filters, category_id=category_id)
    if mode == "filter":
        return _ranked(best_per_product(store.search(vector, overfetch(k), narrowed), k), k)
    boosted = [
        Hit(h.image_id, h.product_id, h.score + settings.CATEGORY_BOOST)
        for h in store.search(vector, overfetch(k), narrowed)[0]
    ]
    return _ranked(best_per_product([boosted, *store.search(vector, overfetch(k), filters)], k), k)


def detect_in_photo(*, content: bytes) -> tuple[int, int, list[ItemBox]]:
    """(width, height, items) of a photo, from a localize worker. Raises InvalidImage, LocalizationUnavailable."""
    validate_image_bytes(content)
    picture = open_normalised(content)
    return picture.width, picture.height, photo_localize(picture=picture).boxes
