"""Writes to the vector store: ingestion of product images, sync and removal of their vectors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from webapp.catalog.images import InvalidImage, make_thumbnail, open_normalised, validate_image_bytes
from webapp.catalog.models import ProductImage
from webapp.search import runtime
from webapp.search.runtime import get_embedder, get_vector_store

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    ready: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)


def vector_row(image: ProductImage, vector, model_version: str) -> dict:
    product = image.product
    return {
        "image_id": image.pk,
        "product_id": product.pk,
        "category_id": product.category_id,
        "price": float(product.price),
        "in_stock": bool(product.in_stock),
        "model_version": model_version,
        "vector": [float(x) for x in vector],
    }


def images_ingest(*, image_ids: list[int]) -> IngestReport:
    """Validate, normalise, thumbnail, embed and upsert the given images (idempotent per image id).

    A bad image is marked failed with its reason; a vector-store outage raises VectorStoreUnavailable
    so the caller can retry, leaving the images as they were.
    """
    from django.conf import settings

    report = IngestReport()
    images = list(ProductImage.objects.select_related("product").filter(pk__in=image_ids))
    report.missing = sorted(set(image_ids) - {img.pk for img in images})
    ProductImage.objects.filter(pk__in=[img.pk for img in images]).update(status=ProductImage.Status.PROCESSING)

    prepared = []
    for image in images:
        try:
            with image.image.open("rb") as handle:
                content = handle.read()
            validate_image_bytes(content)
            picture = open_normalised(content)
            prepared.append((image, picture, make_thumbnail(picture, settings.THUMBNAIL_SIZE)))
        except (InvalidImage, FileNotFoundError, OSError) as exc:
            report.failed[image.pk] = f"{type(exc).__name__}: {exc}"
    if report.failed:
        images_mark_failed(image_ids=list(report.failed), reason_by_id=report.failed)
    if not prepared:
        return report

    store = get_vector_store()
    # The active version, read fresh (no TTL): its embedder writes into its own collection by name,
    # so a batch that straddles an alias swap never mixes models. If the version changed while we
    # embedded, embed again with the new one (the re-embed's catch-up also covers this).
    version = runtime.active_version(fresh=True)
    for _ in range(3):
        used, embedder = version, get_embedder(version)
        vectors = embedder.embed([picture for _, picture, _ in prepared])
        version = runtime.active_version(fresh=True)
        if version.model_version == used.model_version:
            break
    collection = collection_ensure(version=used, dim=embedder.dim)
    store.upsert([vector_row(image, vector, embedder.model_version)
                  for (image, _, _), vector in zip(prepared, vectors)], collection=collection)

    now = timezone.now()
    for image, _, thumbnail in prepared:
        with transaction.atomic():
            locked = ProductImage.objects.select_for_update().filter(pk=image.pk).first()
            if locked is None:
                # Deleted while we embedded it: do not leave its vector behind.
                runtime.collection_store(collection).delete_images([image.pk])
                report.missing.append(image.pk)
                continue
            if locked.thumbnail:
                locked.thumbnail.delete(save=False)
            locked.thumbnail.save(f"{image.pk}.webp", ContentFile(thumbnail), save=False)
            locked.status = ProductImage.Status.READY
            locked.error = ""
            locked.attempts = locked.attempts + 1
            locked.model_version = embedder.model_version
            locked.embedded_at = now
            locked.save(update_fields=["thumbnail", "status", "error", "attempts", "model_version", "embedded_at"])
        report.ready.append(image.pk)
    return report


def collection_ensure(*, version, dim: int) -> str:
    """The collection of `version`, created when missing; the alias is pointed at it when it has none."""
    store = get_vector_store()
    name = store.create_collection(version.model_version, dim)
    if store.active_collection() is None:
        store.point_alias(name)
    return name


def _kept_stores():
    """Collections besides the alias that deletes reach (a version being embedded, standby versions)."""
    from webapp.search.versions import kept_collections

    alias_target = get_vector_store().active_collection()
    stores = []
    for name in kept_collections():
        if name == alias_target:
            continue
        store = runtime.collection_store(name)
        if store.exists():
            stores.append(store)
    return stores


def images_mark_failed(*, image_ids: list[int], reason_by_id: dict[int, str] | None = None, reason: str = "") -> None:
    for image in ProductImage.objects.filter(pk__in=image_ids):
        image.status = ProductImage.Status.FAILED
        image.error = (reason_by_id or {}).get(image.pk, reason)[:2000]
        image.attempts = image.attempts + 1
        image.save(update_fields=["status", "error", "attempts"])
        logger.warning("image %s failed ingestion: %s", image.pk, image.error)


def image_vectors_remove(*, image_ids: list[int]) -> None:
    get_vector_store().delete_images(image_ids)
    for store in _kept_stores():  # a rollback or a finishing re-embed must not bring them back
        store.delete_images(image_ids)


def product_vectors_sync(*, product_id: int) -> int:
    """Rewrite the scalar fields (price, category, stock) of a product's vectors; returns rows rewritten."""
    from webapp.catalog.models import Product

    store = get_vector_store()
    product = Product.objects.filter(pk=product_id).first()
    if product is None:
        store.delete_products([product_id])
        for kept in _kept_stores():
            kept.delete_products([product_id])
        return 0
    rows = store.rows_for_product(product_id)
    for row in rows:
        row.update(category_id=product.category_id, price=float(product.price), in_stock=bool(product.in_stock))
    store.upsert(rows)
    return len(rows)
