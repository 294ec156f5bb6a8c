from django.core.management.base import BaseCommand, CommandError

from webapp.search.vector_store import VectorStoreUnavailable
from webapp.search.versions import default_version_ensure


class Command(BaseCommand):
    help = (
        "Make sure a model version is active: with none, register what the vector-store alias already serves "
        "(or the ImageNet stand-in) and mark it active. Idempotent; run by `make run` before anything is read."
    )

    def handle(self, *args, **options):
        try:
            version = default_version_ensure()
        except VectorStoreUnavailable as exc:
            raise CommandError(f"the vector store is unreachable: {exc}") from exc
        self.stdout.write(f"active model version: {version.model_version}")
