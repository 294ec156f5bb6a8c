import logging

from django.core.management.base import BaseCommand, CommandError

from webapp.search import activation
from webapp.search.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Activate a registered model version: re-embed the catalog into its own collection in the background "
        "worker, then swap the alias (the previous version stays on standby for rollback)."
    )

    def add_arguments(self, parser):
        parser.add_argument("model_version")
        parser.add_argument("--sync", action="store_true", help="Re-embed in this process instead of the worker.")

    def handle(self, *args, model_version, sync, **options):
        version = ModelVersion.objects.filter(model_version=model_version).first()
        if version is None:
            known = ", ".join(ModelVersion.objects.values_list("model_version", flat=True)) or "none"
            raise CommandError(f"no model version {model_version!r} (registered: {known})")
        outcome = activation.model_version_activate(version=version, queue=not sync)
        if outcome == "active":
            self.stdout.write(f"{model_version} is already active")
            return
        if not sync:
            self.stdout.write(
                f"{model_version}: re-embedding the catalog in the background worker; "
                "the alias swaps when it is done (progress in the admin, Model versions)"
            )
            return
        logging.getLogger("webapp.search.activation").setLevel(logging.INFO)
        try:
            activation.catalog_reembed(version_id=version.pk)
        except activation.ReembedFailed as exc:
            raise CommandError(f"{model_version} failed: {exc}") from exc
        version.refresh_from_db()
        self.stdout.write(f"{model_version} is {version.state} ({version.embedded} images embedded)")
