"""Queueing background work by task name, so services never import the tasks that call them.

Routing (which queue a task goes to) is in settings.CELERY_TASK_ROUTES, keyed by these names.
Writes queue their work once the transaction commits (`*_on_commit`), so a worker never sees a row
that is not there yet, and a rolled-back write queues nothing.

The catalog's on-commit messages (ingest, vector removal, field sync) never fail the write that queued them: by
then the row is saved, so a broker that is down is logged and the work is left to `reconcile_vectors` (Celery
beat), which re-queues images left pending, deletes vectors of deleted images and rewrites stale fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from celery.result import AsyncResult
from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnavailable

from webapp.celery import app

INGEST_IMAGES = "search.ingest_image_batch"
REMOVE_IMAGE_VECTORS = "search.remove_image_vectors"
SYNC_PRODUCT_VECTORS = "search.sync_product_vectors"
REEMBED_CATALOG = "search.reembed_catalog"
LOCALIZE_PHOTO = "search.localize_photo"
RETRAIN_MODEL = "search.retrain_model"  # the `train` queue
NIGHTLY_RETRAIN = "search.nightly_retrain"
RECONCILE_VECTORS = "search.reconcile_vectors"
INGEST_BATCH_SIZE = 32

logger = logging.getLogger(__name__)

# Set inside `ingest_batched_on_commit()`: the image ids of this block whose writes committed, queued together.
_committed_ingest_ids: ContextVar[list[int] | None] = ContextVar("committed_ingest_ids", default=None)


def _publish_after_commit(what: str | Callable[[], str], publish: Callable[[], object]) -> None:
    """Run `publish` once the transaction commits; a broker failure is logged, never raised into the write.

    `what` names the work in that log line (a callable when it is only known at commit time)."""

    def run() -> None:
        try:
            publish()
        except (BrokerUnavailable, OSError) as exc:
            described = what() if callable(what) else what
            logger.error("broker unreachable, %s not queued (reconcile_vectors will pick it up): %s", described, exc)

    transaction.on_commit(run)


def ingest_queue(*, image_ids: list[int], batch_size: int = INGEST_BATCH_SIZE) -> int:
    """Queue ingestion of images in batches; returns the number of tasks queued."""
    batches = [image_ids[i : i + batch_size] for i in range(0, len(image_ids), batch_size)]
    for batch in batches:
        app.send_task(INGEST_IMAGES, args=[batch])
    return len(batches)


def ingest_queue_on_commit(*, image_ids: list[int]) -> None:
    """Queue ingestion after the commit; with the broker down the images stay pending until reconcile.

    Inside `ingest_batched_on_commit()` the ids join that block's batches instead of being queued on their own.
    """
    ids = list(image_ids)
    committed = _committed_ingest_ids.get()
    if committed is not None:
        # An on-commit callback, not a plain append: ids written in a savepoint that rolls back are dropped with it.
        transaction.on_commit(lambda: committed.extend(ids))
        return
    _publish_after_commit(f"ingestion of images {ids[:10]}", lambda: ingest_queue(image_ids=ids))


@contextmanager
def ingest_batched_on_commit(*, batch_size: int = INGEST_BATCH_SIZE) -> Iterator[list[int]]:
    """Coalesce the `ingest_queue_on_commit` calls made in this block into tasks of `batch_size` images.

    Enter it inside the transaction that writes the images: once that transaction commits, the ids of the images
    whose writes committed are queued together, in the order they were written (one task per `batch_size`, not one
    per image). A rolled-back transaction queues nothing; a savepoint rolled back inside it drops its own ids only.
    Outside a transaction each write commits at once and the ids are queued when the block ends. Yields the list
    the committed ids are collected into (filled only once they commit).
    """
    committed: list[int] = []
    token = _committed_ingest_ids.set(committed)
    try:
        yield committed
    finally:
        _committed_ingest_ids.reset(token)
        # Registered after every id's own callback, so it runs after them (Django runs them in order).
        _publish_after_commit(
            lambda: f"ingestion of {len(committed)} images {committed[:10]} (all or some of their tasks)",
            lambda: ingest_queue(image_ids=committed, batch_size=batch_size) if committed else 0,
        )


def image_vectors_removal_on_commit(*, image_ids: list[int]) -> None:
    ids = list(image_ids)
    _publish_after_commit(
        f"vector removal of images {ids[:10]}", lambda: app.send_task(REMOVE_IMAGE_VECTORS, args=[ids])
    )


def product_vectors_sync_on_commit(*, product_id: int) -> None:
    _publish_after_commit(
        f"vector sync of product {product_id}", lambda: app.send_task(SYNC_PRODUCT_VECTORS, args=[product_id])
    )


def reembed_queue(*, version_id: int, token: str, countdown: int | None = None) -> None:
    app.send_task(REEMBED_CATALOG, args=[version_id, token], countdown=countdown)


def reembed_queue_on_commit(*, version_id: int, token: str, countdown: int | None = None) -> None:
    transaction.on_commit(lambda: reembed_queue(version_id=version_id, token=token, countdown=countdown))


def retrain_queue_on_commit(*, run_id: int) -> None:
    transaction.on_commit(lambda: app.send_task(RETRAIN_MODEL, args=[run_id]))


def localize_send(*, payload: str, expires: float) -> AsyncResult:
    """Queue a photo for a localize worker; it is dropped unanswered after `expires` seconds (nobody waits then).

    No publish retries: the web request fails fast when the broker is down rather than hanging.
    """
    return app.send_task(LOCALIZE_PHOTO, args=[payload], expires=expires, retry=False, ignore_result=False)
