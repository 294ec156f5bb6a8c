"""Build the precomputed similar lists of a model version: queued for a worker, or here with --inline."""

from django.core.management.base import BaseCommand, CommandError

from webapp.recommendations import services
from webapp.search import registry
from webapp.search.models import ModelVersion


class Command(BaseCommand):
    help = "Build every product's similar list for a model version (default: the active one)."

    def add_arguments(self, parser):
        parser.add_argument("--model-version", help="its model_version name (default: the active version)")
        parser.add_argument("--inline", action="store_true", help="build in this process instead of a worker")

    def handle(self, *args, model_version=None, inline=False, **options):
        if model_version:
            target = ModelVersion.objects.filter(model_version=model_version).first()
            if target is None:
                raise CommandError(f"no model version named {model_version!r}")
        else:
            target = registry.active_version(fresh=True)
            if target is None:
                raise CommandError("no active model version: ingest a product or activate a version first")
        job = services.similar_lists_build_start(version=target, queue=not inline)
        if not inline:
            self.stdout.write(f"queued the similar-list build of {target.model_version}")
            return
        try:
            services.similar_lists_build(version=target, token=job.task_token)
        except services.BuildFailed as exc:
            raise CommandError(str(exc)) from exc
        job.refresh_from_db()
        self.stdout.write(f"built the similar lists of {target.model_version}: {job.progress}")
