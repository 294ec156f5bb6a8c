"""Thin Celery tasks of the curation wing (routed in settings.CELERY_TASK_ROUTES; autodiscovered)."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from webapp.curation.mining import triplets_mine

MINE_TRIPLETS = "curation.mine_triplets"


@shared_task(name=MINE_TRIPLETS, acks_late=True)
def mine_triplets(
    limit: int | None = None, since: str | None = None, since_minutes: float | None = None, full: bool = False
) -> dict:
    """Mine candidate triplets for review, anchored on recently created products.

    By default (the periodic job) the window is twice MINE_TRIPLETS_EVERY_MINUTES, so a late run loses nothing
    (re-mining a product adds nothing); `since_minutes` sets another window, `since` an ISO 8601 time, and
    `full=True` mines the whole catalog (what `manage.py mine_triplets` does).
    """
    after = None
    if since:
        after = parse_datetime(since)
        if after is None:
            raise ValueError(f"since {since!r} is not an ISO 8601 date and time")
    elif not full:
        minutes = (
            since_minutes if since_minutes is not None else 2 * getattr(settings, "MINE_TRIPLETS_EVERY_MINUTES", 30)
        )
        after = timezone.now() - timedelta(minutes=float(minutes))
    report = triplets_mine(limit=int(limit or settings.CURATION_MINE_LIMIT), since=after)
    return {
        "products": report.products,
        "new_products": report.new_products,
        "catalog_mined": report.catalog_mined,
        "street_mined": report.street_mined,
        "created": report.created,
        "unchanged": report.unchanged,
        "errors": len(report.errors),
        "seconds": round(report.seconds, 2),
    }
