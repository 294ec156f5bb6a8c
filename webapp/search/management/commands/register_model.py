from django.core.management.base import BaseCommand, CommandError

from webapp.search import versions
from webapp.search.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Register a trained model artifact (weights.pt, config.json, metrics.json, data_hash) as a version; "
        "--activate re-embeds the catalog with it in the background and swaps the alias."
    )

    def add_arguments(self, parser):
        parser.add_argument("artifact_dir")
        parser.add_argument("--activate", action="store_true", help="Queue the activation (re-embed, then swap).")
        parser.add_argument(
            "--if-not-active",
            action="store_true",
            help="With --activate: do nothing when the version is already active or embedding "
            "(so re-running `make run` never re-embeds again).",
        )
        parser.add_argument("--sync", action="store_true", help="With --activate: re-embed in this process.")

    def handle(self, *args, artifact_dir, activate, if_not_active, sync, **options):
        try:
            version, created = versions.model_version_register(artifact_dir=artifact_dir)
        except versions.ArtifactInvalid as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{version.model_version}: {'registered' if created else 'already registered'} ({version.state})"
        )
        if not activate:
            return
        if if_not_active and version.state in (ModelVersion.State.ACTIVE, ModelVersion.State.EMBEDDING):
            self.stdout.write(f"{version.model_version} is {version.state}; nothing to do")
            return
        from django.core.management import call_command

        call_command("activate_model", version.model_version, *(["--sync"] if sync else []), stdout=self.stdout)
