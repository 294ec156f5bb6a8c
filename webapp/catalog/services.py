"""Catalog writes. Views, admin actions, commands and tasks call these, never the ORM directly."""

from __future__ import annotations

import contextlib
import logging
from decimal import Decimal

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils.text import slugify

from webapp.catalog.images import validate_image_bytes
from webapp.catalog.models import Category, Product, ProductImage
from webapp.search import dispatch

logger = logging.getLogger(__name__)


class ImageNotStored(OSError):
    """The image could not be written to the media storage (disk full, folder not writable); nothing was kept."""


def category_get_or_create(*, name: str) -> Category:
    name = name.strip()
    if not name:
        raise ValueError("category name is empty")
    category = Category.objects.filter(name=name).first()
    if category is None:  # the slug's uniqueness queries only for a new category (imports call this per row)
        category, _ = Category.objects.get_or_create(name=name, defaults={"slug": _unique_slug(name)})
    return category


def _unique_slug(name: str) -> str:
    base = slugify(name) or "category"
    slug, n = base, 2
    while Category.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def product_upsert(
    *,
    sku: str,
    title: str,
    price: Decimal,
    category: Category,
    brand: str = "",
    currency: str = "USD",
    attributes: dict | None = None,
    in_stock: bool = True,
) -> tuple[Product, bool]:
    product, created = Product.objects.update_or_create(
        sku=sku,
        defaults={
            "title": title,
            "brand": brand,
            "price": price,
            "currency": currency.upper(),
            "category": category,
            "attributes": attributes or {},
            "in_stock": in_stock,
        },
    )
    return product, created


def product_create(*, category_name: str, **fields) -> Product:
    """Create (or update by SKU) a product, creating its category by name when new; all or nothing."""
    with transaction.atomic():
        category = category_get_or_create(name=category_name)
        product, _ = product_upsert(category=category, **fields)
    return product


def product_image_create(*, product: Product, content: bytes, source_url: str = "", position: int = 0) -> ProductImage:
    """Validate the bytes, store them, and queue ingestion once the transaction commits.

    An image whose bytes are already on the product is returned as it is (re-imports stay idempotent).
    Raises InvalidImage before anything is written, and ImageNotStored (nothing kept: no row, no partial file)
    when the storage cannot take the file.
    """
    validated = validate_image_bytes(content)
    existing = product.images.filter(checksum=validated.checksum).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        image = ProductImage(
            product=product,
            source_url=source_url,
            position=position,
            checksum=validated.checksum,
            width=validated.width,
            height=validated.height,
        )
        _store_file(image, f"{validated.checksum[:16]}.{validated.extension}", content)
        try:
            image.save()
        except BaseException:
            with contextlib.suppress(OSError):  # no row: its file must not stay behind
                image.image.storage.delete(str(image.image.name))
            raise
        dispatch.ingest_queue_on_commit(image_ids=[image.pk])
    return image


def _store_file(image: ProductImage, filename: str, content: bytes) -> None:
    """Write the image's file; on a write error remove what was written (a full disk leaves part of a file)."""
    field = image.image.field
    storage = image.image.storage
    name = storage.get_available_name(field.generate_filename(image, filename), max_length=field.max_length)
    try:
        image.image.save(name.rsplit("/", 1)[-1], ContentFile(content), save=False)
    except OSError as exc:
        with contextlib.suppress(OSError):
            if storage.exists(name):
                storage.delete(name)
        logger.error("image for product %s not stored (%s): nothing kept", image.product_id, exc)
        raise ImageNotStored(f"The image could not be stored ({exc.strerror or exc}); nothing was saved.") from exc


def product_images_queue_ingest(*, image_ids: list[int]) -> int:
    """Queue (re-)ingestion of existing images in batches; returns the number of tasks queued."""
    return dispatch.ingest_queue(image_ids=image_ids)


def product_delete(*, product: Product) -> None:
    """Delete a product and its images; their files and vectors go once the transaction commits (signals)."""
    with transaction.atomic():
        product.delete()
