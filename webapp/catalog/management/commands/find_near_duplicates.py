"""Flag near-duplicate products (the same item listed twice) for merchandisers to merge or dismiss in the admin."""

from __future__ import annotations

import dataclasses

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.catalog import duplicates
from webapp.search.vector_store import VectorStoreError


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="cosine similarity at or above which two products are flagged "
            "(default settings.NEAR_DUPLICATE_THRESHOLD; see docs/near_duplicates.md)",
        )
        parser.add_argument(
            "--product", type=int, action="append", dest="product_ids", help="only pairs of this product (repeatable)"
        )
        parser.add_argument(
            "--queue", action="store_true", help="queue the task catalog.find_near_duplicates for a worker instead"
        )

    def handle(self, *args, threshold=None, product_ids=None, queue=False, **options):
        if queue:
            from webapp.catalog.tasks import find_near_duplicates

            find_near_duplicates.delay(threshold=threshold, product_ids=product_ids)
            self.stdout.write("Queued catalog.find_near_duplicates.")
            return
        try:
            report = duplicates.near_duplicates_find(threshold=threshold, product_ids=product_ids)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except VectorStoreError as exc:
            raise CommandError(f"The vector store is unavailable: {exc}") from exc
        summary = dataclasses.asdict(report)
        self.stdout.write(
            f"Scanned {summary['images_scanned']} image vector(s) at threshold {summary['threshold']:.3f} "
            f"(settings.NEAR_DUPLICATE_THRESHOLD = {settings.NEAR_DUPLICATE_THRESHOLD}): {summary['pairs_found']} "
            f"pair(s) found, {summary['created']} new, {summary['updated']} updated, {summary['already_decided']} "
            f"already decided, {summary['withdrawn']} withdrawn (no longer found), {summary['stale_removed']} stale "
            "removed."
        )
