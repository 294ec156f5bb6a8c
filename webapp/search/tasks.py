"""Thin Celery tasks of the search wing: load by id, call a service, retry transient failures with backoff.

Queued by name through `webapp.search.dispatch`; routed in settings.CELERY_TASK_ROUTES.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NoReturn

from celery import shared_task

from webapp.search import activation, dispatch, localization, reconcile, services, training

logger = logging.getLogger(__name__)

TRANSIENT = activation.TRANSIENT
MAX_RETRIES = 5
REEMBED_TASK_SECONDS = 60  # one task runs about this long, then queues the next step (ingest interleaves)


def _backoff_seconds(retries: int) -> int:
    return min(2 ** (retries + 1), 60)


def _retry_or_give_up(task, exc: Exception, what: str, give_up: Callable[[str], None]) -> NoReturn:
    """After a transient failure: retry with backoff, or after the last retry record why with `give_up` and fail."""
    attempts = task.request.retries + 1
    if task.request.retries >= task.max_retries:
        give_up(f"gave up after {attempts} attempts: {exc}")
        raise exc
    logger.warning("%s failed (%s); retry %s", what, exc, attempts)
    raise task.retry(exc=exc, countdown=_backoff_seconds(task.request.retries)) from exc


@shared_task(bind=True, name=dispatch.INGEST_IMAGES, max_retries=MAX_RETRIES, acks_late=True)
def ingest_image_batch(self, image_ids: list[int]) -> dict:
    try:
        report = services.images_ingest(image_ids=image_ids)
    except TRANSIENT as exc:
        _retry_or_give_up(
            self,
            exc,
            f"ingest of {image_ids}",
            lambda reason: services.images_mark_failed(image_ids=image_ids, reason=reason),
        )
    return {"ready": report.ready, "failed": report.failed, "missing": report.missing}


@shared_task(bind=True, name=dispatch.REMOVE_IMAGE_VECTORS, max_retries=MAX_RETRIES, acks_late=True)
def remove_image_vectors(self, image_ids: list[int]) -> None:
    try:
        services.image_vectors_remove(image_ids=image_ids)
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_backoff_seconds(self.request.retries)) from exc


@shared_task(bind=True, name=dispatch.SYNC_PRODUCT_VECTORS, max_retries=MAX_RETRIES, acks_late=True)
def sync_product_vectors(self, product_id: int) -> int:
    try:
        return services.product_vectors_sync(product_id=product_id)
    except TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_backoff_seconds(self.request.retries)) from exc


@shared_task(bind=True, name=dispatch.REEMBED_CATALOG, max_retries=MAX_RETRIES, acks_late=True)
def reembed_catalog(self, version_id: int, token: str = "") -> dict:
    """Re-embed the catalog for a model version, then swap the alias (see webapp.search.activation)."""
    try:
        done = activation.catalog_reembed(version_id=version_id, token=token, time_budget=REEMBED_TASK_SECONDS)
    except TRANSIENT as exc:
        _retry_or_give_up(
            self,
            exc,
            f"re-embed of version {version_id}",
            lambda reason: activation.model_version_mark_failed(version_id=version_id, reason=reason),
        )
    except activation.ReembedFailed as exc:
        return {"version_id": version_id, "state": "failed", "error": str(exc)}
    if not done:
        dispatch.reembed_queue(version_id=version_id, token=token)
    return {"version_id": version_id, "done": done}


@shared_task(name=dispatch.LOCALIZE_PHOTO, ignore_result=False, acks_late=False)
def localize_photo(payload: str) -> dict:
    """Boxes of the items in a photo; a web request is waiting for the answer (no retries: it would be late)."""
    return localization.localize_payload(payload)


@shared_task(name=dispatch.RETRAIN_MODEL, acks_late=True)
def retrain_model(run_id: int) -> dict:
    """Train a new VisNet version from approved plus mined triplets (`train` queue; see webapp.search.training).

    No retries: a failed run is recorded on its row with the reason, and a person starts another. acks_late: a
    worker that dies mid-run gets the run delivered again, and it starts over.
    """
    run = training.training_run_execute(run_id=run_id)
    return {"run_id": run_id, "state": run.state if run is not None else "missing"}


@shared_task(name=dispatch.NIGHTLY_RETRAIN)
def nightly_retrain() -> dict:
    """Beat's nightly job: start a retrain when NIGHTLY_RETRAIN is on and enough new triplets were approved."""
    run = training.training_nightly_maybe_start()
    return {"started": run.pk if run is not None else None}


@shared_task(name=dispatch.RECONCILE_VECTORS)
def reconcile_vectors() -> dict:
    """Beat's periodic consistency check: repair what drifted between the catalog and the vector store."""
    reports = reconcile.vectors_reconcile(repair=True)
    return {report.collection: report.counts() for report in reports}
