"""Consistency between the catalog (the database) and the vector store, and its repair.

Nothing else compares the two: a vector lost in a crash, a message lost in flight or a vector left behind by a
delete would otherwise stay wrong silently. `vectors_reconcile` walks a collection once, batch by batch, and
reports each kind of drift; with `repair=True` it re-queues ingestion or deletes vectors, and a second run finds
nothing (every repair is idempotent). Run by `manage.py reconcile_vectors` and periodically by Celery beat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from webapp.catalog.models import ProductImage
from webapp.recommendations import services as recommendations
from webapp.search import dispatch, registry
from webapp.search.models import ModelVersion
from webapp.search.services import vector_row
from webapp.search.vector_store import VectorStore

logger = logging.getLogger(__name__)

FIELDS = ("image_id", "product_id", "category_id", "price", "in_stock", "model_version")
BATCH = 2000
PRICE_TOLERANCE = 0.005  # the store keeps a float, the catalog a decimal with two places


@dataclass
class Drift:
    """What one collection disagrees on with the catalog (image ids), and what was done about it."""

    collection: str
    model_version: str
    role: str  # "active" or the state of the version whose collection is being built
    vectors: int = 0
    missing: list[int] = field(default_factory=list)  # ready images without a vector
    stuck: list[int] = field(default_factory=list)  # pending or processing for too long: their message was lost
    orphans: list[int] = field(default_factory=list)  # vectors whose image (or product) is gone, or failed
    stale: list[int] = field(default_factory=list)  # vectors written by another model version
    mismatched: list[int] = field(default_factory=list)  # product, category, price or stock differ from the row
    requeued: int = 0
    deleted: int = 0
    rewritten: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.stuck or self.orphans or self.stale or self.mismatched)

    def counts(self) -> dict[str, int]:
        return {
            "vectors": self.vectors,
            "missing": len(self.missing),
            "stuck": len(self.stuck),
            "orphans": len(self.orphans),
            "stale": len(self.stale),
            "mismatched": len(self.mismatched),
            "requeued": self.requeued,
            "deleted": self.deleted,
            "rewritten": self.rewritten,
        }


def _building_versions() -> list[ModelVersion]:
    return list(
        ModelVersion.objects.filter(state__in=[ModelVersion.State.EMBEDDING, ModelVersion.State.CANDIDATE]).exclude(
            dim=None
        )
    )


def vectors_reconcile(*, repair: bool = False, stuck_after: timedelta | None = None) -> list[Drift]:
    """Compare the active collection, and any collection being built or A/B tested, with the catalog."""
    active = registry.active_version(fresh=True)
    store = registry.get_vector_store()
    reports = []
    if active is not None:
        reports.append(
            _reconcile_collection(
                store, store.active_collection() or store.collection_name(active.model_version), active, "active"
            )
        )
    for version in _building_versions():
        name = store.collection_name(version.model_version)
        if store.has_collection(name):
            reports.append(_reconcile_collection(store, name, version, version.state))
    _find_stuck(reports, stuck_after)
    if repair:
        for report in reports:
            _repair(store, report)
    for report in reports:
        logger.info("reconcile %s (%s): %s", report.collection, report.role, report.counts())
    return reports


def _reconcile_collection(store: VectorStore, name: str, version: ModelVersion, role: str) -> Drift:
    view = store.collection(name)
    drift = Drift(collection=name, model_version=version.model_version, role=role)
    seen: set[int] = set()
    batch: list[dict] = []
    for row in view.iter_rows(FIELDS, batch_size=BATCH):
        batch.append(row)
        if len(batch) >= BATCH:
            _compare(batch, version, drift, seen)
            batch = []
    _compare(batch, version, drift, seen)
    drift.vectors = len(seen)
    if role == "active":  # a collection being built is filled by its re-embed's catch-up, not by ingestion
        ready = ProductImage.objects.filter(status=ProductImage.Status.READY).values_list("pk", flat=True)
        drift.missing = sorted(pk for pk in ready.iterator(chunk_size=BATCH) if pk not in seen)
    return drift


def _compare(rows: list[dict], version: ModelVersion, drift: Drift, seen: set[int]) -> None:
    if not rows:
        return
    ids = [int(row["image_id"]) for row in rows]
    seen.update(ids)
    catalog = {
        pk: (product_id, category_id, float(price), in_stock, status)
        for pk, product_id, category_id, price, in_stock, status in ProductImage.objects.filter(pk__in=ids).values_list(
            "pk", "product_id", "product__category_id", "product__price", "product__in_stock", "status"
        )
    }
    for row in rows:
        image_id = int(row["image_id"])
        known = catalog.get(image_id)
        if known is None or known[4] == ProductImage.Status.FAILED:
            drift.orphans.append(image_id)
            continue
        if row.get("model_version") != version.model_version:
            drift.stale.append(image_id)
            continue
        product_id, category_id, price, in_stock, _ = known
        if (
            int(row["product_id"]) != product_id
            or int(row["category_id"]) != category_id
            or abs(float(row["price"]) - price) > PRICE_TOLERANCE
            or bool(row["in_stock"]) != bool(in_stock)
        ):
            drift.mismatched.append(image_id)


def _ingest_backlog() -> int | None:
    """Messages waiting on the ingest queue (None when the broker cannot say)."""
    from webapp.ops.health import queue_depths

    return queue_depths().get("ingest")


def _find_stuck(reports: list[Drift], stuck_after: timedelta | None) -> None:
    """Images still pending or processing long after they were created: no task is left to finish them.

    While messages wait on the ingest queue (a long import) a pending image may simply be behind them, so nothing
    counts as stuck until the queue has drained; re-queueing then would only multiply the backlog.
    """
    backlog = _ingest_backlog()
    if backlog:
        logger.info("reconcile: %s ingest message(s) waiting; the stuck check waits until they drain", backlog)
        return
    age = stuck_after if stuck_after is not None else timedelta(minutes=settings.RECONCILE_STUCK_MINUTES)
    stuck = list(
        ProductImage.objects.filter(
            status__in=[ProductImage.Status.PENDING, ProductImage.Status.PROCESSING],
            created_at__lt=timezone.now() - age,
        ).values_list("pk", flat=True)
    )
    for report in reports:
        if report.role == "active":
            report.stuck = sorted(stuck)


def _repair(store: VectorStore, drift: Drift) -> None:
    view = store.collection(drift.collection)
    if drift.orphans:
        # The lists that hold the orphans' products are found through those vectors: update before deleting.
        recommendations.similar_lists_before_image_removal(image_ids=drift.orphans)
        view.delete_images(drift.orphans)
        drift.deleted = len(drift.orphans)
    if drift.mismatched:
        drift.rewritten = _rewrite_fields(view, drift.mismatched, drift.model_version)
    if drift.role == "active":
        # Ingestion is idempotent per image id: it re-reads the row, embeds with the active version and upserts.
        requeue = sorted(set(drift.missing) | set(drift.stuck) | set(drift.stale))
        if requeue:
            dispatch.ingest_queue(image_ids=requeue)
            drift.requeued = len(requeue)
    elif drift.stale:
        view.delete_images(drift.stale)  # the re-embed's catch-up writes them again with this version
        drift.deleted += len(drift.stale)
    if drift.deleted or drift.rewritten:
        view.flush()


def _rewrite_fields(view: VectorStore, image_ids: list[int], model_version: str) -> int:
    """Rewrite the scalar fields of these vectors from their rows, keeping each vector (fetched one by one: a get
    does not promise the order of its answer, and drift is rare)."""
    rows = []
    for image in ProductImage.objects.filter(pk__in=image_ids).select_related("product").iterator():
        vectors = view.vectors_for_images([image.pk])
        if not len(vectors):
            continue
        rows.append(vector_row(image, vectors[0], model_version))
    if rows:
        view.upsert(rows, flush=False)
    return len(rows)
