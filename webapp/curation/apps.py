from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CurationConfig(AppConfig):
    name = "webapp.curation"
    label = "curation"
    verbose_name = "Training-data curation"

    def ready(self):
        from webapp.curation.roles import ensure_roles_after_migrate

        # Every app's post_migrate runs this receiver; it acts on the last app's, when all permissions exist.
        post_migrate.connect(ensure_roles_after_migrate, dispatch_uid="curation-ensure-roles")
