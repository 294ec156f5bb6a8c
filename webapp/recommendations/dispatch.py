"""Queueing the similar-list tasks by name, so services (and later ingestion and activation) never import tasks.

Routing is in settings.CELERY_TASK_ROUTES. Writes queue their work once the transaction commits.
"""

from __future__ import annotations

from django.db import transaction

from webapp.celery import app

BUILD_SIMILAR_LISTS = "recommendations.build_similar_lists"
UPDATE_SIMILAR_LISTS = "recommendations.update_similar_lists"


def build_queue(*, version_id: int, token: str) -> None:
    app.send_task(BUILD_SIMILAR_LISTS, args=[version_id, token])


def build_queue_on_commit(*, version_id: int, token: str) -> None:
    transaction.on_commit(lambda: build_queue(version_id=version_id, token=token))


def update_queue_on_commit(*, product_ids: list[int], version_id: int | None = None) -> None:
    """Queue an incremental update of these products' lists (new, re-embedded, edited or deleted products)."""
    ids = [int(pid) for pid in product_ids]
    transaction.on_commit(lambda: app.send_task(UPDATE_SIMILAR_LISTS, args=[ids, version_id]))
