from django.core.management.base import BaseCommand

from webapp.curation.roles import MERCHANDISER_PERMISSIONS, merchandiser_group_ensure


class Command(BaseCommand):
    help = "Create or update the Merchandisers group with exactly its permissions (migrate does this too)."

    def handle(self, *args, **options):
        group, missing = merchandiser_group_ensure()
        held = len(MERCHANDISER_PERMISSIONS) - len(missing)
        self.stdout.write(f"group '{group.name}': {held} permission(s)")
        for name in missing:
            self.stdout.write(self.style.WARNING(f"  {name} does not exist yet (run migrate); skipped"))
