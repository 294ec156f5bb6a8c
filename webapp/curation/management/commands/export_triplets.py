import sys
from pathlib import Path

from django.core.management.base import BaseCommand

from webapp.curation.services import triplets_export


class Command(BaseCommand):
    help = "Export triplets as JSONL with their review status (for `train_visnet --approved-triplets`)."

    def add_arguments(self, parser):
        parser.add_argument("path", help="Output JSONL file, or - for standard output.")
        parser.add_argument("--approved-only", action="store_true")

    def handle(self, *args, path: str, approved_only: bool, **options):
        if path == "-":
            count = triplets_export(out=sys.stdout, approved_only=approved_only)
            self.stderr.write(f"{count} triplet(s) exported")
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w") as handle:
            count = triplets_export(out=handle, approved_only=approved_only)
        tmp.replace(target)
        self.stdout.write(f"{count} triplet(s) exported to {target}")
