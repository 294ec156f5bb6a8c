import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from ml.data.fashion_mnist import FashionMNISTNotFound
from webapp.curation.mining import triplets_mine


class Command(BaseCommand):
    help = (
        "Mine candidate triplets for the catalog with the BISS scorers and queue them for review (idempotent: "
        "a re-run adds only what is new and keeps every decision). Street triplets need the CURATION_BENCHMARK."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=settings.CURATION_MINE_LIMIT, help="At most this many.")
        parser.add_argument("--since", help="Only products created after this ISO 8601 time are anchors.")
        parser.add_argument(
            "--build-benchmark",
            action="store_true",
            help="Build the street-to-shop benchmark (CURATION_BENCHMARK, about 10 s for small) if it is missing.",
        )

    def handle(self, *args, limit: int, since: str | None, build_benchmark: bool, **options):
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        after = None
        if since:
            after = parse_datetime(since)
            if after is None:
                raise CommandError(f"--since {since!r} is not an ISO 8601 date and time")
        if build_benchmark:
            self._build_benchmark()
        report = triplets_mine(limit=limit, since=after)
        self.stdout.write(f"mine_triplets: {report.summary()}")
        for number, message in report.errors[:20]:
            self.stdout.write(self.style.WARNING(f"  row {number}: {message}"))

    def _build_benchmark(self):
        from ml.data.street2shop import build_benchmark

        size, seed = settings.CURATION_BENCHMARK, settings.CURATION_BENCHMARK_SEED
        started = time.monotonic()
        try:
            bench = build_benchmark(size, seed, progress=False)
        except FashionMNISTNotFound as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"street-to-shop benchmark {size} seed {seed}: {len(bench.items)} street items in {bench.root} "
            f"({time.monotonic() - started:.1f} s)"
        )
