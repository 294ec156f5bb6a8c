"""Catalog reads. Views, the API and commands call these for lists and lookups."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Count, Q, QuerySet

from webapp.catalog.models import Category, Product


def product_queryset() -> QuerySet[Product]:
    """Products with what every page and API answer shows (category, images) loaded up front."""
    return Product.objects.select_related("category").prefetch_related("images")


def product_list(
    *,
    category: Category | None = None,
    max_price: Decimal | float | None = None,
    in_stock: bool | None = None,
    q: str = "",
) -> QuerySet[Product]:
    """Products in id order, filtered by category, maximum price, stock and a title/brand substring."""
    products = product_queryset()
    if category is not None:
        products = products.filter(category=category)
    if max_price is not None:
        products = products.filter(price__lte=max_price)
    if in_stock is not None:
        products = products.filter(in_stock=in_stock)
    if q := q.strip():
        products = products.filter(Q(title__icontains=q) | Q(brand__icontains=q))
    return products.order_by("id")


def categories_with_counts() -> QuerySet[Category]:
    """Every category by name, each with `product_count`."""
    return Category.objects.annotate(product_count=Count("products")).order_by("name")
