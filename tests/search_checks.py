"""Checks of search behaviour shared by the unit tests (fakes) and the integration tests (Milvus, VisNet)."""

from __future__ import annotations

from decimal import Decimal

from webapp.search import services as search_services
from webapp.search.selectors import overfetch, search_by_image
from webapp.search.vector_store import SearchFilters


def assert_filter_is_applied_inside_the_vector_query(query: bytes, catalog_size: int) -> None:
    """Make the three products that rank last for `query` the only cheap ones, then search for cheap products.

    With the filter inside the vector query they are found; filtered after an over-fetched query they are lost.
    """
    assert catalog_size > overfetch(3), "the catalog must be larger than what k=3 over-fetches"
    everything = search_by_image(content=query, k=catalog_size)
    assert len(everything) == catalog_size
    cheapest = [r.product for r in everything[-3:]]
    for product in cheapest:
        product.price = Decimal("5.00")
        product.save()
        search_services.product_vectors_sync(product_id=product.pk)
    found = search_by_image(content=query, k=3, filters=SearchFilters(max_price=10.0))
    assert sorted(r.product.pk for r in found) == sorted(p.pk for p in cheapest)


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0
