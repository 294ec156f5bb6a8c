"""Server-rendered catalog pages: the product grid and the product page with its look-alikes."""

from __future__ import annotations

import logging

from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, render

from webapp.catalog import selectors
from webapp.catalog.models import Category, ProductImage
from webapp.recommendations.serving import similar_ranked
from webapp.search.experiments import client_key_for, serving_version_for
from webapp.search.feedback import results_served
from webapp.search.models import ShopperEvent
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
    similar, similar_unavailable = [], False
    try:
        similar = similar_ranked(product=product, k=SIMILAR_PRODUCTS, version=version)
    except VectorStoreUnavailable:
        logger.warning("similar products of %s unavailable: vector store unreachable", product.pk, exc_info=True)
        similar_unavailable = True
    feedback_token = results_served(
        version=version,
        surface=ShopperEvent.Surface.SIMILAR,
        product_ids=[hit.product.pk for hit in similar],
        query_ref=f"shop:{product.sku}",
    )
    images = list(product.images.all())
    return render(
        request,
        "catalog/product_detail.html",
        {
            "product": product,
            "images": images,
            "similar": similar,
            "similar_unavailable": similar_unavailable,
            "has_ready_image": any(image.status == ProductImage.Status.READY for image in images),
            "model_version": version.model_version if version is not None else "",
            "feedback_token": feedback_token or "",
        },
    )
