from django.core.management.base import BaseCommand, CommandError

from webapp.search import activation
from webapp.search.models import ModelVersion


class Command(BaseCommand):
    help = "Point the alias back at a standby version's collection (by default the one active before)."

    def add_arguments(self, parser):
        parser.add_argument("model_version", nargs="?", help="A standby version (default: the latest standby).")

    def handle(self, *args, model_version=None, **options):
        version = None
        if model_version:
            version = ModelVersion.objects.filter(model_version=model_version).first()
            if version is None:
                raise CommandError(f"no model version {model_version!r}")
        try:
            version = activation.model_version_rollback(version=version)
        except activation.VersionError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"rolled back: {version.model_version} is active")
