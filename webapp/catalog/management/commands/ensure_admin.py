import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the admin user for merchandisers if it does not exist yet and print its password."

    def handle(self, *args, **options):
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
