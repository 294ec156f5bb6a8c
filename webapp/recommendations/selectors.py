"""Reads: a product's precomputed similar list, filtered at request time. Nothing here writes."""

from __future__ import annotations

from decimal import Decimal

from webapp.catalog.models import Product
from webapp.recommendations.models import SimilarList, SimilarListBuild, unpack_neighbours
from webapp.search import registry
from webapp.search.models import ModelVersion
from webapp.search.vector_store import SearchFilters


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
    row = SimilarList.objects.filter(version=version, product_id=product.pk).values_list("neighbours", "exhaustive")
    found = row.first()
    if found is None:
        return None
    packed, exhaustive = found
    ids, scores = unpack_neighbours(packed)
    if len(ids) < k and not exhaustive:
        return None
    current = {
        pk: (category_id, price, in_stock)
        for pk, category_id, price, in_stock in Product.objects.filter(pk__in=ids.tolist()).values_list(
            "pk", "category_id", "price", "in_stock"
        )
    }
    max_price = Decimal(str(filters.max_price)) if filters.max_price is not None else None
    kept = []
    for product_id, score in zip(ids.tolist(), scores.tolist(), strict=True):
        attributes = current.get(product_id)
        if attributes is None or product_id in (product.pk, filters.exclude_product_id):
            continue
        category_id, price, in_stock = attributes
        if filters.category_id is not None and category_id != filters.category_id:
            continue
        if max_price is not None and price > max_price:
            continue
        if filters.in_stock is not None and in_stock != filters.in_stock:
            continue
        kept.append((product_id, score))
        if len(kept) == k:
            return kept
    return kept if exhaustive else None


def similar_build_progress(*, version: ModelVersion) -> SimilarListBuild | None:
    """The build job of `version` (state, done/total), or None when its lists were never built."""
    return SimilarListBuild.objects.filter(version=version).first()
