from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "webapp.catalog"
    label = "catalog"

    def ready(self):
        from webapp.catalog import signals  # noqa: F401
