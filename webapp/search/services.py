"""Writes to the vector store: ingestion of product images, sync and removal of their vectors.

Each keeps the precomputed similar lists (webapp.recommendations) in step: an ingested batch queues one update of
its products' lists once it commits; a removal updates the lists before it deletes the vectors (they tell which
lists held a deleted product); a price, category or stock edit drops the cached responses that show the product.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from PIL import Image

from ml.detection.crops import embed_items, item_crops
from webapp.catalog.images import InvalidImage, looks_like_product_shot, make_thumbnail, open_stored_image
from webapp.catalog.models import Product, ProductImage
from webapp.recommendations import services as recommendations
from webapp.search import registry
from webapp.search.localization import LocalizationUnavailable, detect_items
from webapp.search.models import ModelVersion
from webapp.search.vector_store import MilvusVectorStore, VectorStoreUnavailable
from webapp.search.versions import default_version_ensure

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


def _prepare(images: list[ProductImage], report: IngestReport) -> list[tuple[ProductImage, list[Image.Image], bytes]]:
    """Decode each stored image (validated again: the file may have changed on disk), thumbnail the whole image,
    and choose what is embedded: the main item of a scene, the whole of a clean product shot."""
    prepared = []
    for image in images:
        try:
            picture = open_stored_image(image.image)
            thumbnail = make_thumbnail(picture, settings.THUMBNAIL_SIZE)
        except (InvalidImage, FileNotFoundError, OSError) as exc:
            report.failed[image.pk] = f"{type(exc).__name__}: {exc}"
            continue
        image.item_box = main_item_box(picture)
        prepared.append((image, item_pictures(picture, image.item_box), thumbnail))
    return prepared


def main_item_box(picture: Image.Image) -> list[int] | None:
    """The box of a scene's main item (the detector's most confident), None for a clean product shot or when
    nothing (or no detector) is found: then the whole image is embedded."""
    if looks_like_product_shot(picture):
        return None
    try:
        items = detect_items(picture)
    except LocalizationUnavailable as exc:
        logger.warning("catalog image embedded whole: %s", exc)
        return None
    return list(items[0].box) if items else None


def item_pictures(picture: Image.Image, item_box: list[int] | None) -> list[Image.Image]:
    """What is embedded for a catalog image (one vector, their mean): its main item's crops, or the whole image."""
    return item_crops(picture, item_box or None, settings.CROP_CONTEXTS)


def _active_or_default() -> ModelVersion:
    return registry.active_version(fresh=True) or default_version_ensure()


def images_ingest(*, image_ids: list[int]) -> IngestReport:
    """Validate, normalise, thumbnail, embed and upsert the given images (idempotent per image id).

    A bad image is marked failed with its reason; a vector-store outage raises VectorStoreUnavailable
    so the caller can retry, leaving the images as they were.
    """
    report = IngestReport()
    images = list(ProductImage.objects.select_related("product").filter(pk__in=image_ids))
    report.missing = sorted(set(image_ids) - {img.pk for img in images})
    ProductImage.objects.filter(pk__in=[img.pk for img in images]).update(status=ProductImage.Status.PROCESSING)
    prepared = _prepare(images, report)
    if report.failed:
        images_mark_failed(image_ids=list(report.failed), reason_by_id=report.failed)
    if not prepared:
        return report

    # The active version, read fresh (no TTL): its embedder writes into its own collection by name,
    # so a batch that straddles an alias swap never mixes models. If the version changed while we
    # embedded, embed again with the new one (the re-embed's catch-up also covers this).
    version = _active_or_default()
    for _ in range(3):
        used, embedder = version, registry.embedder_for(version)
        vectors = embed_items(embedder, [pictures for _, pictures, _ in prepared])
        version = _active_or_default()
        if version.model_version == used.model_version:
            break
    collection = collection_ensure(version=used, dim=embedder.dim)
    registry.get_vector_store().upsert(
        [
            vector_row(image, vector, embedder.model_version)
            for (image, _, _), vector in zip(prepared, vectors, strict=True)
        ],
        collection=collection,
    )
    _ingest_into_candidates([(image, pictures) for image, pictures, _ in prepared], serving=used)
    marked = _mark_ready(prepared, embedder.model_version)
    for image, _, _ in prepared:
        if image.pk in marked:
            report.ready.append(image.pk)
        else:  # deleted while we embedded it: do not leave its vector behind
            registry.get_vector_store().collection(collection).delete_images([image.pk])
            for store in _kept_stores():
                store.delete_images([image.pk])
            report.missing.append(image.pk)
    ready = set(report.ready)
    recommendations.similar_lists_after_ingest(
        product_ids=[image.product_id for image, _, _ in prepared if image.pk in ready], version=used
    )
    return report


def ab_versions() -> list[ModelVersion]:
    """The A/B candidate and a version being prepared as one: ingestion keeps their collections current too."""
    return list(
        ModelVersion.objects.filter(
            Q(state=ModelVersion.State.CANDIDATE) | Q(state=ModelVersion.State.EMBEDDING, ab_share__gt=0)
        )
    )


def _ingest_into_candidates(prepared: list[tuple[ProductImage, list[Image.Image]]], serving: ModelVersion) -> None:
    """Embed the batch with each A/B candidate too and upsert it into the candidate's collection, so activating a
    candidate needs no full re-embed. A candidate that cannot embed is marked failed (it stops serving); ingestion
    of the active version goes on. A vector-store outage propagates (the batch is retried)."""
    for candidate in ab_versions():
        if candidate.model_version == serving.model_version:
            continue
        try:
            embedder = registry.embedder_for(candidate)
            vectors = embed_items(embedder, [pictures for _, pictures in prepared])
            store = registry.get_vector_store()
            name = store.create_collection(candidate.model_version, embedder.dim)
            rows = [
                vector_row(image, vector, candidate.model_version)
                for (image, _), vector in zip(prepared, vectors, strict=True)
            ]
            store.upsert(rows, collection=name)
        except VectorStoreUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 (a broken candidate must not stop ingestion)
            reason = f"ingestion could not embed with the candidate: {type(exc).__name__}: {exc}"
            ModelVersion.objects.filter(pk=candidate.pk).update(
                state=ModelVersion.State.FAILED, error=reason[:4000], ab_share=0.0, task_token=""
            )
            registry.reset_active_version_cache()
            logger.error("A/B candidate %s failed: %s", candidate.model_version, reason)


READY_FIELDS = ["thumbnail", "status", "error", "attempts", "model_version", "embedded_at", "item_box"]


def _mark_ready(prepared: list[tuple[ProductImage, list[Image.Image], bytes]], model_version: str) -> set[int]:
    """Store the thumbnails and mark the batch's images ready, in ONE transaction (a catalog import writing beside
    the worker holds SQLite's single write lock for its own transactions: one wait per batch, not one per image).
    Returns the ids marked; an image deleted while it was embedded is not among them."""
    with transaction.atomic():
        locked = {
            row.pk: row
            for row in ProductImage.objects.select_for_update().filter(pk__in=[image.pk for image, _, _ in prepared])
        }
        now = timezone.now()
        for image, _, thumbnail in prepared:
            row = locked.get(image.pk)
            if row is None:
                continue
            if row.thumbnail:
                row.thumbnail.delete(save=False)
            # A worker killed after writing the thumbnail but before this commit left the file with no row pointing
            # at it: overwrite it rather than save beside it under another name.
            name = row.thumbnail.field.generate_filename(row, f"{image.pk}.webp")
            row.thumbnail.storage.delete(name)
            row.thumbnail.save(f"{image.pk}.webp", ContentFile(thumbnail), save=False)
            row.status = ProductImage.Status.READY
            row.error = ""
            row.attempts = row.attempts + 1
            row.model_version = model_version
            row.embedded_at = now
            row.item_box = image.item_box
        ProductImage.objects.bulk_update(list(locked.values()), READY_FIELDS)
    return set(locked)


def collection_ensure(*, version: ModelVersion, dim: int) -> str:
    """The collection of `version`, created when missing; the alias is pointed at it when it has none."""
    store = registry.get_vector_store()
    name = store.create_collection(version.model_version, dim)
    if store.active_collection() is None:
        store.point_alias(name)
    return name


def _kept_stores() -> list[MilvusVectorStore]:
    """Collections besides the alias that deletes reach (a version being embedded, standby versions)."""
    store = registry.get_vector_store()
    alias_target = store.active_collection()
    kept = [store.collection(name) for name in registry.kept_collections() if name != alias_target]
    return [view for view in kept if view.exists()]


def images_mark_failed(*, image_ids: list[int], reason_by_id: dict[int, str] | None = None, reason: str = "") -> None:
    for image in ProductImage.objects.filter(pk__in=image_ids):
        image.status = ProductImage.Status.FAILED
        image.error = (reason_by_id or {}).get(image.pk, reason)[:2000]
        image.attempts = image.attempts + 1
        image.save(update_fields=["status", "error", "attempts"])
        logger.warning("image %s failed ingestion: %s", image.pk, image.error)


def image_vectors_remove(*, image_ids: list[int]) -> None:
    """Delete the images' vectors everywhere, after updating the similar lists their products are in (a deleted
    product's vectors are what finds the lists that hold it). A transient failure of that update retries the whole
    task; any other is logged and the vectors go anyway (reads drop deleted products; the next build sweeps)."""
    try:
        recommendations.similar_lists_before_image_removal(image_ids=image_ids)
    except recommendations.TRANSIENT:
        raise
    except Exception:  # noqa: BLE001 (the lists are derived data: a bug there must not keep vectors of deleted images)
        logger.exception("similar lists not updated before removing the vectors of images %s", image_ids[:10])
    registry.get_vector_store().delete_images(image_ids)
    for store in _kept_stores():  # a rollback or a finishing re-embed must not bring them back
        store.delete_images(image_ids)


def product_vectors_sync(*, product_id: int) -> int:
    """Rewrite the scalar fields (price, category, stock) of a product's vectors; returns rows rewritten."""
    store = registry.get_vector_store()
    product = Product.objects.filter(pk=product_id).first()
    if product is None:
        recommendations.similar_lists_update(product_ids=[product_id])  # before its vectors go, as for a removal
        store.delete_products([product_id])
        for kept in _kept_stores():
            kept.delete_products([product_id])
        return 0
    rows = store.rows_for_product(product_id)
    for row in rows:
        row.update(category_id=product.category_id, price=float(product.price), in_stock=bool(product.in_stock))
    store.upsert(rows)
    for candidate in ab_versions():  # a candidate serves shoppers: its filters must see the edit too
        view = registry.version_store(candidate)
        candidate_rows = view.rows_for_product(product_id)
        for row in candidate_rows:
            row.update(category_id=product.category_id, price=float(product.price), in_stock=bool(product.in_stock))
        view.upsert(candidate_rows)
    recommendations.similar_lists_holding_invalidate(product_ids=[product_id])
    return len(rows)
