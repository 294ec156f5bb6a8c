"""The Celery app. Each Django app keeps its tasks in its own `tasks.py`; they call plain services."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("visnet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
