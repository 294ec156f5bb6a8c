from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from webapp.curation.services import triplets_import


class Command(BaseCommand):
    help = "Import mined triplets (ml/triplets.py JSONL) for review; re-importing is idempotent."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)

    def handle(self, *args, path: Path, **options):
        if not path.is_file():
            raise CommandError(f"{path} does not exist")
        with path.open() as handle:
            total = sum(1 for _ in handle)
        with path.open() as handle, tqdm(total=total, desc=f"import {path.name}", unit="row") as progress:
            report = triplets_import(lines=handle, progress=progress)
        self.stdout.write(
            f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
            f"{len(report.errors)} row(s) with errors"
        )
        for number, message in report.errors[:200]:
            self.stdout.write(self.style.WARNING(f"  line {number}: {message}"))
        if len(report.errors) > 200:
            self.stdout.write(self.style.WARNING(f"  … and {len(report.errors) - 200} more"))
