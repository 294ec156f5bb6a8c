"""Thin Celery tasks for the precomputed similar lists: load by id, call a service, retry transient failures.

The build runs SIMILAR_LIST_TASK_SECONDS at a time, then queues itself again with the same job token (other work
on the queue interleaves); a newer build of the same version changes the token and the old chain stops.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from webapp.recommendations import dispatch, services
from webapp.search.models import ModelVersion

logger = logging.getLogger(__name__)

MAX_RETRIES = 5


def _backoff_seconds(retries: int) -> int:
    return min(2 ** (retries + 1), 60)


@shared_task(bind=True, name=dispatch.BUILD_SIMILAR_LISTS, max_retries=MAX_RETRIES, acks_late=True)
def build_similar_lists(self, version_id: int, token: str = "") -> dict:
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return {"version_id": version_id, "state": "missing"}
    try:
        done = services.similar_lists_build(
            version=version, token=token, time_budget=float(settings.SIMILAR_LIST_TASK_SECONDS)
        )
    except services.TRANSIENT as exc:
        if self.request.retries >= self.max_retries:
            services.similar_lists_mark_failed(version_id=version_id, reason=f"gave up after retries: {exc}")
            raise
        logger.warning("similar lists of version %s: %s; retrying", version_id, exc)
        raise self.retry(exc=exc, countdown=_backoff_seconds(self.request.retries)) from exc
    except services.BuildFailed as exc:
        return {"version_id": version_id, "state": "failed", "error": str(exc)}
    if not done:
        dispatch.build_queue(version_id=version_id, token=token)
    return {"version_id": version_id, "done": done}


@shared_task(bind=True, name=dispatch.UPDATE_SIMILAR_LISTS, max_retries=MAX_RETRIES, acks_late=True)
def update_similar_lists(self, product_ids: list[int], version_id: int | None = None) -> dict:
    version = None
    if version_id is not None:
        version = ModelVersion.objects.filter(pk=version_id).first()
        if version is None:
            return {"version_id": version_id, "state": "missing"}
    try:
        report = services.similar_lists_update(product_ids=product_ids, version=version)
    except services.TRANSIENT as exc:
        raise self.retry(exc=exc, countdown=_backoff_seconds(self.request.retries)) from exc
    return {
        "versions": report.versions,
        "recomputed": report.recomputed,
        "removed": report.removed,
        "patched": report.patched,
        "changed": {str(pk): len(ids) for pk, ids in report.changed.items()},
    }
