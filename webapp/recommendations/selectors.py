"""Reads: a product's precomputed similar list, filtered at request time. Nothing here writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from webapp.catalog.models import Product
from webapp.recommendations.models import SimilarList, SimilarListBuild, unpack_neighbours
from webapp.search import registry
from webapp.search.models import ModelVersion
from webapp.search.vector_store import SearchFilters


@dataclass(frozen=True)
class StoredList:
    """A product's stored neighbours under one version, best first, as the build or the last update wrote them."""

    product_ids: list[int]
    scores: list[float]
    exhaustive: bool
    computed_at: datetime


def stored_list(*, version_id: int, product_id: int) -> StoredList | None:
    """The stored list of `product_id` under `version_id` as written (nothing filtered), or None."""
    found = SimilarList.objects.filter(version_id=version_id, product_id=product_id).values_list(
        "neighbours", "exhaustive", "computed_at"
    )[:1]  # unique per (version, product): no ORDER BY needed, unlike .first()
    if not found:
        return None
    packed, exhaustive, computed_at = found[0]
    ids, scores = unpack_neighbours(packed)
    return StoredList(ids.tolist(), scores.tolist(), exhaustive, computed_at)


def stored_neighbours_filtered(
    *,
    stored: StoredList,
    product_id: int,
    k: int,
    filters: SearchFilters,
    attributes: Mapping[int, tuple[int, Decimal, bool]],
) -> list[tuple[int, float]] | None:
    """The first `k` neighbours of `stored` that pass `filters`, judged on `attributes` (product id -> current
    category id, price, in stock); products missing from `attributes` (deleted since) are dropped. None when the
    list cannot fill `k` (and is not exhaustive): the caller then asks the vector store."""
    if k < 1 or (len(stored.product_ids) < k and not stored.exhaustive):
        return None
    max_price = Decimal(str(filters.max_price)) if filters.max_price is not None else None
    kept = []
    for neighbour_id, score in zip(stored.product_ids, stored.scores, strict=True):
        found = attributes.get(neighbour_id)
        if found is None or neighbour_id in (product_id, filters.exclude_product_id):
            continue
        category_id, price, in_stock = found
        if filters.category_id is not None and category_id != filters.category_id:
            continue
        if max_price is not None and price > max_price:
            continue
        if filters.in_stock is not None and in_stock != filters.in_stock:
            continue
        kept.append((neighbour_id, score))
        if len(kept) == k:
            return kept
    return kept if stored.exhaustive else None


def stored_similar(
    *,
    product: Product,
    k: int,
    filters: SearchFilters = SearchFilters(),
    version: ModelVersion | None = None,
) -> list[tuple[int, float]] | None:
    """The `k` products most like `product` as (product id, score), best first, from the stored list of `version`
    (default: the active one), with the category / max price / stock filters applied to the current catalog rows.

    None when there is no stored list, or when its over-fetched neighbours cannot fill `k` once filtered: the caller
    then asks the vector store (`similar_products`), which applies the filters inside the ANN query. Products
    deleted since the list was written are dropped here (the lazy half of the incremental update).
    """
    version = version if version is not None else registry.active_version()
    if version is None or k < 1:
        return None
    stored = stored_list(version_id=version.pk, product_id=product.pk)
    if stored is None or (len(stored.product_ids) < k and not stored.exhaustive):
        return None
    attributes = {
        pk: (category_id, price, in_stock)
        for pk, category_id, price, in_stock in Product.objects.filter(pk__in=stored.product_ids).values_list(
            "pk", "category_id", "price", "in_stock"
        )
    }
    return stored_neighbours_filtered(stored=stored, product_id=product.pk, k=k, filters=filters, attributes=attributes)


def similar_build_progress(*, version: ModelVersion) -> SimilarListBuild | None:
    """The build job of `version` (state, done/total), or None when its lists were never built."""
    return SimilarListBuild.objects.filter(version=version).first()
