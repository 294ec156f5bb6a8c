"""The Celery app. Each Django app keeps its tasks in its own `tasks.py`; they call plain services."""

import os

from celery import Celery

from webapp.broker import use_atomic_filesystem_transport

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
use_atomic_filesystem_transport()

app = Celery("visnet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
