"""Serving "visually similar" products: the API response serialised once to bytes and cached, and the product
page's ranked list, both read from the precomputed lists (the live vector query only when a list is missing or
cannot fill the page after filters).

The API body is exactly what `RankedResultsOutputSerializer` rendered by DRF's JSONRenderer would give for the
same rows (tests/test_serving.py compares them), built from a lean catalog query instead of model instances.

Cache layout: one entry in Django's default cache per (model version, product), holding a small dict
{variant -> (body, etag, last modified, counted)}; a variant is the request's scheme and host (the body holds
absolute URLs) plus its parameters in canonical form. Dropping every variant of a product's response is therefore
one delete (`similar_bytes_invalidate`). Each process also keeps the hottest entries in memory for
SIMILAR_LRU_SECONDS (read by the WSGI fast path only, webapp/recommendations/fastpath.py), so another process's
invalidation reaches it within those seconds.

What is cached goes stale for at most SIMILAR_BYTES_CACHE_SECONDS unless invalidated: prices, stock and titles of
the products shown are those of the moment the body was built. A response with no results is never cached, so a
product shows its neighbours as soon as it has any. The feedback token inside a body is the same for every client
(it names what was shown, not who saw it) and outlives the cache entry by far (FEEDBACK_TOKEN_MAX_AGE_SECONDS).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.urls import get_script_prefix, get_urlconf, reverse
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer

from webapp.catalog.models import Product, ProductImage
from webapp.catalog.selectors import product_queryset
from webapp.recommendations.selectors import (
    StoredList,
    stored_list,
    stored_neighbours_filtered,
    stored_similar,
)
from webapp.search import registry
from webapp.search.experiments import served_record
from webapp.search.feedback import results_served
from webapp.search.models import ModelVersion, ShopperEvent
from webapp.search.selectors import MAX_K, RankedProduct, similar_products
from webapp.search.vector_store import CollectionNotFound, SearchFilters

logger = logging.getLogger(__name__)

SURFACE = ShopperEvent.Surface.SIMILAR
SIMILAR_BYTES_KEY_PREFIX = "similar-bytes:v1"
DEFAULT_K = 12  # SimilarProductsInputSerializer's default `k` (a test keeps the two equal)
SIMPLE_PARAMS = frozenset({"k", "category", "max_price", "in_stock"})
IN_STOCK_VALUES = {"true": True, "false": False}


@dataclass(frozen=True)
class SimilarBody:
    """One serialised response: the JSON bytes, a strong ETag (quoted), Last-Modified (Unix seconds) and whether
    it holds results (then each time it is served counts for the A/B rates)."""

    body: bytes
    etag: str
    last_modified: int
    counted: bool

    def as_tuple(self) -> tuple[bytes, str, int, bool]:
        return (self.body, self.etag, self.last_modified, self.counted)


# Cache keys and invalidation -----------------------------------------------------------------------------
def similar_bytes_key(*, version_id: int, product_id: int) -> str:
    return f"{SIMILAR_BYTES_KEY_PREFIX}:{version_id}:{product_id}"


class _LocalEntries:
    """The in-process copy of the hottest cache entries: key -> (expires at, variants), least recently used out."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0] < time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[1]

    def put(self, key: str, variants: dict) -> None:
        seconds = settings.SIMILAR_LRU_SECONDS
        if seconds <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + seconds, variants)
            self._entries.move_to_end(key)
            while len(self._entries) > max(1, settings.SIMILAR_LRU_SIZE):
                self._entries.popitem(last=False)

    def drop(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


local_entries = _LocalEntries()


def similar_bytes_invalidate(*, version_id: int, product_ids: list[int]) -> None:
    """Drop the cached similar-products responses (every parameter variant) of `product_ids` under `version_id`:
    from the shared cache at once, from this process's memory too (other processes' copies expire within
    SIMILAR_LRU_SECONDS)."""
    if not product_ids:
        return
    keys = [similar_bytes_key(version_id=version_id, product_id=int(pid)) for pid in product_ids]
    local_entries.drop(keys)
    cache.delete_many(keys)


# Variants ------------------------------------------------------------------------------------------------
def _single(params: Any, name: str) -> str | None | bool:
    """The one value of `name` (None when absent; False when repeated: not a simple request)."""
    values = params.getlist(name) if hasattr(params, "getlist") else params.get(name, [])
    if not values:
        return None
    if len(values) > 1:
        return False
    return values[0]


def similar_variant(*, params: Any, scheme_host: str) -> str | None:
    """The cache variant of a request's query parameters (a QueryDict, or a dict of value lists), or None when
    they are not simple: a name outside k/category/max_price/in_stock, a repeated name, or a value in a form the
    fast path does not judge (k other than 1-100 in digits, a category other than an id or a slug, a max price
    other than digits with up to 4 decimals, in_stock other than true/false). Values are only checked for form:
    whether a category exists is known once Django has answered (only then is a variant stored)."""
    names = set(params.keys())
    if not names <= SIMPLE_PARAMS:
        return None
    k, category, max_price, in_stock = (_single(params, name) for name in ("k", "category", "max_price", "in_stock"))
    if False in (k, category, max_price, in_stock):
        return None
    if k is None:
        k_value = DEFAULT_K
    elif isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 3 and 1 <= int(k) <= MAX_K:
        k_value = int(k)
    else:
        return None
    if category is not None and not _is_category_ref(str(category)):
        return None
    if max_price is not None and not _is_price(str(max_price)):
        return None
    if in_stock is not None and in_stock not in IN_STOCK_VALUES:
        return None
    return f"{scheme_host} k={k_value} c={category or ''} p={max_price or ''} s={in_stock or ''}"


def _is_category_ref(value: str) -> bool:
    return 0 < len(value) <= 140 and value.isascii() and all(ch.isalnum() or ch in "-_" for ch in value)


def _is_price(value: str) -> bool:
    whole, dot, fraction = value.partition(".")
    if not (whole.isascii() and whole.isdigit() and len(whole) <= 10):
        return False
    return not dot or (fraction.isascii() and fraction.isdigit() and 1 <= len(fraction) <= 4)


# Reading and storing bytes ----------------------------------------------------------------------------
def _shared_entry(key: str) -> dict | None:
    try:
        found = cache.get(key)
    except Exception:  # a cache outage must not fail a read: the response is built instead
        logger.warning("similar bytes cache unreadable", exc_info=True)
        return None
    return found if isinstance(found, dict) else None


SEEN_ENVIRON_KEY = "webapp.similar_bytes_seen"


def _variants_seen(environ: dict | None, key: str) -> dict | None:
    """The variants the fast path read for `key` while handling this request ({} for none), else None."""
    seen = environ.get(SEEN_ENVIRON_KEY) if environ is not None else None
    return seen[1] if seen is not None and seen[0] == key else None


def similar_cached(
    *,
    version: ModelVersion | None,
    product_id: int,
    variant: str | None,
    local: bool = False,
    environ: dict | None = None,
) -> SimilarBody | None:
    """The cached response of `variant` for `product_id` under `version`, or None.

    `local`: look in (and fill) this process's memory first (the fast path; the Django view reads the shared cache
    only). `environ`: the request's WSGI environ (Django's request.META): on a miss the fast path leaves there what
    it read, and the view, handling the same request next, uses that instead of reading the shared cache again.
    """
    if version is None or variant is None:
        return None
    key = similar_bytes_key(version_id=version.pk, product_id=product_id)
    found = None
    if local:
        variants = local_entries.get(key)
        found = variants.get(variant) if variants is not None else None
    if found is None:  # another process may have added this variant since the local copy was taken
        variants = _variants_seen(environ, key)
        if variants is None:
            variants = _shared_entry(key) or {}
            if local and variants:
                local_entries.put(key, variants)
            if environ is not None:
                environ[SEEN_ENVIRON_KEY] = (key, variants)
        found = variants.get(variant)
    return SimilarBody(*found) if found is not None else None


def _variant_store(
    *, version: ModelVersion, product_id: int, variant: str, value: tuple, environ: dict | None = None
) -> None:
    key = similar_bytes_key(version_id=version.pk, product_id=product_id)
    seen = _variants_seen(environ, key)
    variants = dict(seen if seen is not None else (_shared_entry(key) or {}))
    variants.pop(variant, None)
    variants[variant] = value
    while len(variants) > max(1, settings.SIMILAR_BYTES_VARIANTS):
        del variants[next(iter(variants))]  # the oldest
    try:
        cache.set(key, variants, settings.SIMILAR_BYTES_CACHE_SECONDS)
    except Exception:
        logger.warning("similar bytes not cached", exc_info=True)


def similar_served(*, version: ModelVersion | None, found: SimilarBody) -> None:
    """Count a cached response served again (a built one was counted when its token was issued)."""
    if found.counted:
        served_record(version=version, surface=SURFACE)


def ab_test_running() -> bool:
    """Whether a candidate version serves a share of shoppers: responses then depend on the client."""
    active, candidate = registry.active_version(), registry.candidate_version()
    return active is not None and candidate is not None and candidate.pk != active.pk


def similar_cache_control(*, private: bool) -> str:
    return f"{'private' if private else 'public'}, max-age={settings.SIMILAR_HTTP_MAX_AGE}"


# Building a body -----------------------------------------------------------------------------------------
PRODUCT_VALUES = (
    "id",
    "sku",
    "title",
    "brand",
    "price",
    "currency",
    "category_id",
    "category__name",
    "category__slug",
    "attributes",
    "in_stock",
    "updated_at",
)
_price_field = serializers.DecimalField(max_digits=12, decimal_places=2, read_only=True)
_renderer = JSONRenderer()


IMAGE_VALUES = ("images__id", "images__image", "images__thumbnail", "images__status")
_PRODUCT_URL_PLACEHOLDER = 9_876_543_210


def _product_path(product_id: int) -> str:
    """reverse("catalog:product-detail", args=[product_id]) for the current URLconf and script prefix, from a
    template reversed once (reverse costs more than the rest of a product's rendering)."""
    key = (get_urlconf(), get_script_prefix())
    if key not in _product_path_templates:
        placeholder = str(_PRODUCT_URL_PLACEHOLDER)
        before, found, after = reverse("catalog:product-detail", args=[placeholder]).partition(placeholder)
        _product_path_templates[key] = (before, after) if found and placeholder not in after else None
    template = _product_path_templates[key]
    if template is None:
        return reverse("catalog:product-detail", args=[product_id])
    return f"{template[0]}{product_id}{template[1]}"


_product_path_templates: dict[tuple, tuple[str, str] | None] = {}


def _image_urls(images: dict[int, list[tuple[int, str, str, str]]], absolute: Callable[[str], str]) -> dict:
    """product id -> [(id, url, thumbnail url, status)] in ProductImage order, URLs as the serializer makes them."""
    storage_image = ProductImage._meta.get_field("image").storage
    storage_thumbnail = ProductImage._meta.get_field("thumbnail").storage
    return {
        product_id: [
            (
                image_id,
                absolute(storage_image.url(image)) if image else None,
                absolute(storage_thumbnail.url(thumbnail)) if thumbnail else None,
                status,
            )
            for image_id, image, thumbnail, status in found
        ]
        for product_id, found in images.items()
    }


def _product_data(row: dict, images: list, absolute: Callable[[str], str]) -> dict:
    """One product as ProductOutputSerializer renders it (same fields, order and formats)."""
    primary = images[0] if images else None
    return {
        "id": int(row["id"]),
        "sku": str(row["sku"]),
        "title": str(row["title"]),
        "brand": str(row["brand"]),
        "price": _price_field.to_representation(row["price"]),
        "currency": str(row["currency"]),
        "category": {
            "id": int(row["category_id"]),
            "name": str(row["category__name"]),
            "slug": str(row["category__slug"]),
        },
        "attributes": {str(key): value for key, value in (row["attributes"] or {}).items()},
        "in_stock": bool(row["in_stock"]),
        "url": absolute(_product_path(int(row["id"]))),
        "image": (primary[2] or primary[1]) if primary is not None else None,
        "images": [
            {"id": image_id, "url": url, "thumbnail_url": thumbnail_url, "status": status}
            for image_id, url, thumbnail_url, status in images
        ],
    }


@dataclass
class _Rows:
    """Catalog rows read for a response: product id -> its values, and -> its images (id, image, thumbnail, status)
    in ProductImage order."""

    products: dict[int, dict]
    images: dict[int, list[tuple[int, str, str, str]]]


def _rows(product_ids: Iterable[int]) -> _Rows:
    """The products of `product_ids` that exist, with their images: one query (a product with n images comes back
    in n rows)."""
    found = _Rows({}, {})
    ids = list(product_ids)
    if not ids:
        return found
    rows = (
        Product.objects.filter(pk__in=ids)
        .values(*PRODUCT_VALUES, *IMAGE_VALUES)
        .order_by("id", "images__position", "images__id")
    )
    for row in rows:
        product_id = row["id"]
        if product_id not in found.products:
            found.products[product_id] = row
            found.images[product_id] = []
        if row["images__id"] is not None:
            found.images[product_id].append(
                (row["images__id"], row["images__image"], row["images__thumbnail"], row["images__status"])
            )
    return found


def _stored_pairs(
    stored: StoredList, product_id: int, k: int, filters: SearchFilters
) -> tuple[_Rows, list[tuple[int, float]] | None]:
    """The catalog rows read (the product's own among them) and the first `k` neighbours of `stored` passing
    `filters` (None: it cannot fill k). Without filters only the first k + 1 neighbours are read (a product page's
    usual request), all of them when some of those were deleted."""
    unfiltered = filters.category_id is None and filters.max_price is None and filters.in_stock is None
    wanted = stored.product_ids[: k + 1] if unfiltered else stored.product_ids
    while True:
        rows = _rows([*wanted, product_id])
        attributes = {pk: (row["category_id"], row["price"], row["in_stock"]) for pk, row in rows.products.items()}
        pairs = stored_neighbours_filtered(
            stored=stored, product_id=product_id, k=k, filters=filters, attributes=attributes
        )
        if len(wanted) == len(stored.product_ids) or (pairs is not None and len(pairs) == k):
            return rows, pairs
        wanted = stored.product_ids  # some of the first were deleted (or are the product itself): read them all


def similar_body_build(
    *,
    product_id: int,
    k: int,
    filters: SearchFilters,
    version: ModelVersion | None,
    absolute: Callable[[str], str],
    variant: str | None = None,
    environ: dict | None = None,
) -> SimilarBody:
    """Build the similar-products response of product `product_id` served by `version`: the stored list with the
    filters applied, or the live vector query when there is none or it cannot fill `k` (VectorStoreUnavailable then
    propagates). Counts it as served, issues its feedback token, and caches it under `variant` (when given and
    when it has results). `absolute` turns a path into an absolute URL (the request's build_absolute_uri);
    `environ` as for `similar_cached`. Product.DoesNotExist when there is no such product (its list may outlive it
    for the seconds until the incremental update removes it): the product is read with its neighbours, in one
    query, when its stored list answers."""
    k = max(1, min(int(k), MAX_K))
    pairs: list[tuple[int, float]] | None = None
    rows = _Rows({}, {})
    sku: str | None = None
    last_modified = time.time()
    collection = registry.get_vector_store().collection_name(version.model_version) if version is not None else None
    if version is not None:
        stored = stored_list(version_id=version.pk, product_id=product_id)
        if stored is not None:
            rows, pairs = _stored_pairs(stored, product_id, k, filters)
            if product_id not in rows.products:
                raise Product.DoesNotExist(f"no product {product_id}")
            sku = rows.products[product_id]["sku"]
            if pairs is not None:
                shown_updates = [rows.products[pid]["updated_at"].timestamp() for pid, _ in pairs]
                last_modified = max([stored.computed_at.timestamp(), *shown_updates])
    if pairs is None:
        product = Product.objects.get(pk=product_id)
        sku = product.sku
        try:
            ranked = similar_products(product=product, k=k, filters=filters, version=version)
        except CollectionNotFound:
            ranked, collection = [], None  # a fresh install: nothing is indexed yet
        pairs = [(hit.product.pk, hit.score) for hit in ranked]
        rows = _rows(pid for pid, _ in pairs)
        pairs = [(pid, score) for pid, score in pairs if pid in rows.products]  # deleted between the two reads
    shown = {pid for pid, _ in pairs}
    images = _image_urls({pid: found for pid, found in rows.images.items() if pid in shown}, absolute)
    results = [
        {"score": float(score), "product": _product_data(rows.products[pid], images.get(pid, []), absolute)}
        for pid, score in pairs
    ]
    data = {
        "count": len(results),
        "collection": collection,
        "results": results,
        "model_version": version.model_version if version is not None else None,
        "feedback_token": results_served(
            version=version,
            surface=SURFACE,
            product_ids=[pid for pid, _ in pairs],
            query_ref=f"shop:{sku}",
        ),
    }
    body = _renderer.render(data)
    found = SimilarBody(
        body=body,
        etag=f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"',
        last_modified=int(last_modified),
        counted=version is not None and bool(pairs),
    )
    if version is not None and variant is not None and results:
        _variant_store(version=version, product_id=product_id, variant=variant, value=found.as_tuple(), environ=environ)
    return found


# The product page ----------------------------------------------------------------------------------------
def similar_ranked(
    *, product: Product, k: int, filters: SearchFilters = SearchFilters(), version: ModelVersion | None = None
) -> list[RankedProduct]:
    """The product page's similar row: products with category and images loaded, from the stored list of
    `version` (default: the active one), else the live vector query (VectorStoreUnavailable propagates)."""
    pairs = stored_similar(product=product, k=k, filters=filters, version=version)
    if pairs is None:
        return similar_products(product=product, k=k, filters=filters, version=version)
    products = product_queryset().in_bulk([pid for pid, _ in pairs])
    return [RankedProduct(products[pid], score) for pid, score in pairs if pid in products]


PAGE_VARIANT_PREFIX = "page "


@dataclass(frozen=True)
class SimilarRow:
    """The product page's similar row: its items rendered to HTML and the products they show, in order."""

    html: str
    product_ids: tuple[int, ...]


def similar_row(
    *, product: Product, k: int, version: ModelVersion | None, render: Callable[[list[RankedProduct]], str]
) -> SimilarRow:
    """The product page's similar row of `product` served by `version`, rendered by `render` once and cached in
    the entry that holds the API's bytes for the same product (so every invalidation of those drops it too, and it
    goes stale for as long and no longer). VectorStoreUnavailable propagates when no stored list answers."""
    key = similar_bytes_key(version_id=version.pk, product_id=product.pk) if version is not None else None
    variant = f"{PAGE_VARIANT_PREFIX}k={k}"
    if key is not None:
        found = (_shared_entry(key) or {}).get(variant)
        if found is not None:
            return SimilarRow(html=found[0], product_ids=tuple(found[1]))
    ranked = similar_ranked(product=product, k=k, version=version)
    row = SimilarRow(html=render(ranked), product_ids=tuple(hit.product.pk for hit in ranked))
    if version is not None and ranked:  # the fast path never asks for a "page ..." variant
        _variant_store(version=version, product_id=product.pk, variant=variant, value=(row.html, row.product_ids))
    return row


def similar_entries_clear() -> None:
    """Forget this process's in-memory copies (tests; the shared cache is Django's to clear)."""
    local_entries.clear()


def similar_bytes_variants(*, version_id: int, product_id: int) -> Mapping[str, tuple] | None:
    """The cached variants of one product's responses in the shared cache (for tests and the admin)."""
    return _shared_entry(similar_bytes_key(version_id=version_id, product_id=product_id))
