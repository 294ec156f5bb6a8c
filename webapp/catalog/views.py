"""Server-rendered catalog pages: the product grid and the product page with its look-alikes."""

from __future__ import annotations

import logging

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from webapp.catalog import selectors
from webapp.catalog.models import Category, ProductImage
from webapp.recommendations.serving import SimilarRow, similar_row
from webapp.search.experiments import client_key_for, serving_version_for
from webapp.search.feedback import results_served
from webapp.search.models import ShopperEvent
from webapp.search.selectors import RankedProduct
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

PRODUCTS_PER_PAGE = 24
SIMILAR_PRODUCTS = 12


def product_list(request):
    categories = selectors.categories_with_counts()
    current_category = None
    slug = request.GET.get("category")
    if slug:
        current_category = get_object_or_404(Category, slug=slug)
    products = selectors.product_list(category=current_category)
    paginator = Paginator(products, PRODUCTS_PER_PAGE)
    page = paginator.get_page(request.GET.get("page"))
    return render(
        request,
        "catalog/product_list.html",
        {
            "categories": categories,
            "current_category": current_category,
            "page": page,
            "page_range": paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1),
        },
    )


def product_detail(request, pk: int):
    product = get_object_or_404(selectors.product_queryset(), pk=pk)
    # The shopper's A/B arm: the active model version, or a candidate for its share (sticky per session).
    version = serving_version_for(client_key=client_key_for(request, create_session=True))
    row, similar_unavailable = SimilarRow(html="", product_ids=()), False
    try:
        row = similar_row(product=product, k=SIMILAR_PRODUCTS, version=version, render=_similar_items_html)
    except VectorStoreUnavailable:
        logger.warning("similar products of %s unavailable: vector store unreachable", product.pk, exc_info=True)
        similar_unavailable = True
    feedback_token = results_served(
        version=version,
        surface=ShopperEvent.Surface.SIMILAR,
        product_ids=list(row.product_ids),
        query_ref=f"shop:{product.sku}",
    )
    images = list(product.images.all())
    return render(
        request,
        "catalog/product_detail.html",
        {
            "product": product,
            "images": images,
            "similar_row": row,
            "similar_items": mark_safe(row.html),  # rendered by _similar_items_html from our own template
            "similar_unavailable": similar_unavailable,
            "has_ready_image": any(image.status == ProductImage.Status.READY for image in images),
            "model_version": version.model_version if version is not None else "",
            "feedback_token": feedback_token or "",
        },
    )


def _similar_items_html(similar: list[RankedProduct]) -> str:
    """The similar row's items (cached per product and model version by `similar_row`: nothing per request)."""
    return render_to_string("catalog/_similar_items.html", {"similar": similar})
