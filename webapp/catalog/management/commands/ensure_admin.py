import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user and a demo merchandiser if they do not exist yet and print their passwords."

    def handle(self, *args, **options):
        self.ensure_admin()
        self.ensure_merchandiser()

    def ensure_merchandiser(self):
        """A demo merchandiser (staff, in the Merchandisers group): reviews triplets, cannot edit the catalog."""
        from webapp.curation.roles import merchandiser_group_ensure

        group, _ = merchandiser_group_ensure()
        username = os.environ.get("MERCHANDISER_USERNAME", "merch")
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("MERCHANDISER_PASSWORD") or secrets.token_urlsafe(12)
            user = user_model.objects.create_user(username=username, email="", password=password, is_staff=True)
            credentials = settings.VAR_DIR / "merchandiser-credentials.txt"
            credentials.write_text(f"{username}\n{password}\n")
            credentials.chmod(0o600)
            self.stdout.write(f"merchandiser user '{username}' created; password: {password} (saved in {credentials})")
        user.groups.add(group)

    def ensure_admin(self):
        username = os.environ.get("ADMIN_USERNAME", "admin")
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            return
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        credentials = settings.VAR_DIR / "admin-credentials.txt"
        credentials.write_text(f"{username}\n{password}\n")
        credentials.chmod(0o600)
        self.stdout.write(f"admin user '{username}' created; password: {password} (saved in {credentials})")
