import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from webapp.catalog.importing import ROWS_PER_TRANSACTION, import_catalog, read_rows


class Command(BaseCommand):
    help = "Import a merchant catalog (CSV or JSONL; images as file paths or http(s) URLs)."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--errors", type=Path, help="Write the per-row error report to this CSV file.")
        parser.add_argument(
            "--rows-per-transaction",
            type=int,
            default=ROWS_PER_TRANSACTION,
            help="Rows written per transaction (each row in its own savepoint); the images of a transaction are "
            "queued for ingestion together once it commits, in tasks of 32. 1 writes and queues row by row. "
            f"Default {ROWS_PER_TRANSACTION}.",
        )

    def handle(self, *args, path: Path, errors: Path | None, rows_per_transaction: int, **options):
        if not path.is_file():
            raise CommandError(f"{path} does not exist")
        if rows_per_transaction < 1:
            raise CommandError("--rows-per-transaction must be at least 1")
        try:
            total = sum(1 for _ in read_rows(path))
            with tqdm(total=total, desc=f"import {path.name}", unit="row") as progress:
                report = import_catalog(path, progress=progress, rows_per_transaction=rows_per_transaction)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{report.created} created, {report.updated} updated, {report.images} images queued, "
            f"{len(report.errors)} row(s) with errors"
        )
        for number, sku, message in report.errors:
            self.stdout.write(self.style.WARNING(f"  row {number} (sku {sku or '-'}): {message}"))
        if errors:
            with errors.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["row", "sku", "error"])
                writer.writerows(report.errors)
            self.stdout.write(f"error report written to {errors}")
