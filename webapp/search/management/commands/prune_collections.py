"""Drop old model-version collections on purpose: `manage.py prune_collections --keep N [--yes]`.

Without --yes it only lists what would go. Never dropped: the alias target, the active, candidate and embedding
versions' collections, and those of the N most recent standby versions (at least the latest one).
"""

from django.conf import settings
from django.core.management.base import BaseCommand

from webapp.search import activation


class Command(BaseCommand):
    help = "List (and with --yes, drop) model collections beyond the N most recent standby versions."

    def add_arguments(self, parser):
        parser.add_argument(
            "--keep",
            type=int,
            default=settings.MODEL_COLLECTIONS_KEEP,
            help="standby versions whose collections stay for rollback (at least 1; default MODEL_COLLECTIONS_KEEP)",
        )
        parser.add_argument("--yes", action="store_true", help="drop them (without it: only list)")

    def handle(self, *args, keep, yes, **options):
        plan = activation.collections_prune_plan(keep=keep)
        for name, why in plan.keep:
            self.stdout.write(f"keep  {name}  ({why})")
        for name, why in plan.drop:
            self.stdout.write(f"{'drop' if yes else 'would drop'}  {name}  ({why})")
        if not plan.drop:
            self.stdout.write("nothing to prune")
            return
        if not yes:
            self.stdout.write("nothing dropped: run again with --yes to drop the collections listed")
            return
        dropped = activation.collections_prune(keep=keep, only=plan.drop_names)
        self.stdout.write(f"dropped {len(dropped)} collection(s)")
