from django.core.management.base import BaseCommand

from webapp.search.reconcile import vectors_reconcile


class Command(BaseCommand):
    help = (
        "Compare the catalog with the active collection (and any collection being built): ready images without a "
        "vector, images stuck pending, vectors of deleted or failed images, vectors of another model version, "
        "vector fields that disagree with the row. --repair re-queues or deletes; a second run finds nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("--repair", action="store_true", help="Re-queue ingestion and delete stray vectors.")
        parser.add_argument(
            "--stuck-minutes", type=float, default=None, help="Pending longer than this counts as stuck."
        )

    def handle(self, *args, repair, stuck_minutes, **options):
        from datetime import timedelta

        stuck_after = timedelta(minutes=stuck_minutes) if stuck_minutes is not None else None
        reports = vectors_reconcile(repair=repair, stuck_after=stuck_after)
        if not reports:
            self.stdout.write("no active model version: nothing to compare")
            return
        for report in reports:
            counts = ", ".join(f"{name} {value}" for name, value in report.counts().items())
            state = "clean" if report.clean else ("repaired" if repair else "DRIFT")
            self.stdout.write(f"{report.collection} ({report.role}, {report.model_version}): {state}: {counts}")
        if not repair and not all(report.clean for report in reports):
            self.stdout.write("run with --repair to fix")
