"""Thin Celery tasks of the catalog (routed in settings.CELERY_TASK_ROUTES; autodiscovered).

Beat runs `catalog.find_near_duplicates` nightly (seeded by `manage.py seed_periodic_tasks`).
"""

from __future__ import annotations

import dataclasses
import logging

from celery import shared_task
from django.db import OperationalError

from webapp.catalog import duplicates
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

FIND_NEAR_DUPLICATES = "catalog.find_near_duplicates"
MAX_RETRIES = 3


@shared_task(bind=True, name=FIND_NEAR_DUPLICATES, max_retries=MAX_RETRIES, acks_late=True)
def find_near_duplicates(self, threshold: float | None = None, product_ids: list[int] | None = None) -> dict:
    """Flag near-duplicate products in the active collection (all of them, or those of `product_ids`).

    Idempotent, so a retry after Milvus or the database went away redoes the work without duplicating pairs.
    """
    try:
        report = duplicates.near_duplicates_find(threshold=threshold, product_ids=product_ids)
    except (VectorStoreUnavailable, OperationalError) as exc:
        logger.warning("near-duplicate search failed (%s); retry %s", exc, self.request.retries + 1)
        raise self.retry(exc=exc, countdown=min(60 * 2**self.request.retries, 900)) from exc
    return dataclasses.asdict(report)
