import os

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from ml.data.fashion_mnist import FashionMNISTNotFound
from webapp.catalog.demo import FULL_SIZE, demo_catalog_load
from webapp.catalog.models import ProductImage
from webapp.catalog.services import product_images_queue_ingest


class Command(BaseCommand):
    help = "Load the Fashion-MNIST demo catalog (skips items already loaded) and queue ingestion."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, default=int(os.environ.get("DEMO_CATALOG_SIZE", 3000)))
        parser.add_argument("--full", action="store_true", help=f"All {FULL_SIZE:,} Fashion-MNIST items.")
        parser.add_argument(
            "--requeue-pending",
            action="store_true",
            help="Queue again the images still pending or processing (a worker stopped mid-way).",
        )

    def handle(self, *args, size, full, requeue_pending, **options):
        size = FULL_SIZE if full else size
        if not 1 <= size <= FULL_SIZE:
            raise CommandError(f"--size must be between 1 and {FULL_SIZE}")
        try:
            with tqdm(desc="demo catalog", unit="product") as progress:
                created = demo_catalog_load(size=size, progress=progress)
        except FashionMNISTNotFound as exc:
            raise CommandError(str(exc)) from exc
        requeued = []
        if requeue_pending:
            stuck = ProductImage.objects.filter(
                status__in=[ProductImage.Status.PENDING, ProductImage.Status.PROCESSING]
            )
            requeued = list(stuck.exclude(pk__in=created).values_list("pk", flat=True))
            product_images_queue_ingest(image_ids=requeued)
        self.stdout.write(
            f"demo catalog: {len(created)} new products queued for ingestion"
            + (f", {len(requeued)} pending images re-queued" if requeued else "")
        )
