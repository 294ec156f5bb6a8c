"""Reads: visually similar products and search by photo, ranked, filtered, joined to the catalog."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from webapp.catalog.images import open_normalised, validate_image_bytes
from webapp.catalog.models import Product
from webapp.search import registry
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


def similar_products(*, product: Product, k: int = 12, filters: SearchFilters = SearchFilters()) -> list[RankedProduct]:
    k = max(1, min(int(k), MAX_K))
    version = registry.active_version()
    if version is None:
        return []  # nothing registered yet: nothing is indexed
    store = registry.version_store(version)  # the active version's own collection (pinned by name)
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


def search_by_image(*, content: bytes, k: int = 24, filters: SearchFilters = SearchFilters()) -> list[RankedProduct]:
    """Search the catalog with a shopper's photo. Raises InvalidImage for bad bytes."""
    k = max(1, min(int(k), MAX_K))
    validate_image_bytes(content)
    picture = open_normalised(content)
    # One snapshot of the active version: the query is embedded by the same model as the vectors it
    # searches, even while the alias swaps (the previous collection stays until it is dropped).
    version = registry.active_version()
    if version is None:
        return []
    vector = registry.embedder_for(version).embed_one(picture)
    hits = best_per_product(registry.version_store(version).search(vector, overfetch(k), filters), k)
    return _ranked(hits, k)
