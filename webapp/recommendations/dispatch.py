"""Queueing the similar-list tasks by name, so services (ingestion, activation) never import tasks.

Routing is in settings.CELERY_TASK_ROUTES. Writes queue their work once the transaction commits.

An update message that cannot be published (broker down) never fails the ingestion that asked for it: the
vectors are written by then. It is logged; the lists it would have patched catch up at the version's next build,
and until then reads drop deleted products and fall back to the vector store where a list cannot fill a page.
"""

from __future__ import annotations

import logging

from django.db import transaction
from kombu.exceptions import OperationalError as BrokerUnavailable

from webapp.celery import app

BUILD_SIMILAR_LISTS = "recommendations.build_similar_lists"
UPDATE_SIMILAR_LISTS = "recommendations.update_similar_lists"

logger = logging.getLogger(__name__)


def build_queue(*, version_id: int, token: str) -> None:
    app.send_task(BUILD_SIMILAR_LISTS, args=[version_id, token])


def build_queue_on_commit(*, version_id: int, token: str) -> None:
    transaction.on_commit(lambda: build_queue(version_id=version_id, token=token))


def update_queue(*, product_ids: list[int], version_id: int | None = None) -> None:
    """Queue an incremental update of these products' lists now (new, re-embedded, edited or deleted products)."""
    ids = [int(pid) for pid in product_ids]
    try:
        app.send_task(UPDATE_SIMILAR_LISTS, args=[ids, version_id])
    except (BrokerUnavailable, OSError) as exc:
        logger.error("broker unreachable, similar-list update of products %s not queued: %s", ids[:10], exc)


def update_queue_on_commit(*, product_ids: list[int], version_id: int | None = None) -> None:
    """Queue an incremental update of these products' lists once the transaction commits."""
    ids = [int(pid) for pid in product_ids]
    transaction.on_commit(lambda: update_queue(product_ids=ids, version_id=version_id))
