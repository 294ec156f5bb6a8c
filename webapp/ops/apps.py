from django.apps import AppConfig


class OpsConfig(AppConfig):
    """What an operator needs: request ids in every log line (web and worker), health, queue depth and lag."""

    name = "webapp.ops"
    label = "ops"

    def ready(self):
        from webapp.ops import request_ids

        request_ids.connect_celery_signals()
