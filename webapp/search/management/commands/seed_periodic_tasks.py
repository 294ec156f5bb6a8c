"""Seed celery beat's schedule (django-celery-beat, in the database): the periodic jobs of the product.

Idempotent: a job that already exists keeps its schedule and its enabled flag (people may have changed them in
the admin: Periodic tasks), unless --reset puts the seeded schedule back. `make run` runs this before beat starts.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from webapp.search import dispatch


def periodic_jobs() -> list[dict]:
    """name, task (by name: each app's tasks.py defines it), schedule and what it is for."""
    return [
        {
            "name": "Mine candidate triplets for new products",
            "task": "curation.mine_triplets",
            "interval_minutes": settings.MINE_TRIPLETS_EVERY_MINUTES,
            "description": "Proposes triplets for products added since the last run, for review.",
        },
        {
            "name": "Find near-duplicate products",
            "task": "catalog.find_near_duplicates",
            "crontab_hour": settings.NEAR_DUPLICATES_HOUR,
            "description": "Nightly: flags catalog products whose images are near-duplicates.",
        },
        {
            "name": "Reconcile the catalog with the vector store",
            "task": dispatch.RECONCILE_VECTORS,
            "interval_minutes": settings.RECONCILE_EVERY_MINUTES,
            "description": (
                "Finds and repairs drift: images whose message was lost (stuck pending), vectors missing, left "
                "behind, of another model version or with stale price, category or stock (manage.py reconcile_vectors)."
            ),
        },
        {
            "name": "Nightly retrain",
            "task": dispatch.NIGHTLY_RETRAIN,
            "crontab_hour": settings.NIGHTLY_RETRAIN_HOUR,
            "description": (
                "Starts a retrain when NIGHTLY_RETRAIN is on and at least NIGHTLY_RETRAIN_MIN_APPROVALS "
                "triplets were approved since the last run (it checks both each night)."
            ),
        },
    ]


def _schedule(job: dict) -> dict:
    if "interval_minutes" in job:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=max(1, int(job["interval_minutes"])), period=IntervalSchedule.MINUTES
        )
        return {"interval": interval, "crontab": None}
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="0",
        hour=str(int(job["crontab_hour"])),
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone="UTC",
    )
    return {"crontab": crontab, "interval": None}


class Command(BaseCommand):
    help = (
        "Create celery beat's periodic jobs (triplet mining, near-duplicates, reconcile, nightly retrain); idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true", help="put the seeded schedules back on existing jobs")

    @transaction.atomic
    def handle(self, *args, reset=False, **options):
        for job in periodic_jobs():
            existing = PeriodicTask.objects.filter(name=job["name"]).first()
            if existing is not None and not reset:
                if existing.task != job["task"]:
                    existing.task = job["task"]
                    existing.save(update_fields=["task"])
                self.stdout.write(f"kept     {job['name']} ({existing.task}, {'on' if existing.enabled else 'off'})")
                continue
            fields = {
                "task": job["task"],
                "description": job["description"],
                "args": json.dumps([]),
                "kwargs": json.dumps({}),
                **_schedule(job),
            }
            if existing is None:
                PeriodicTask.objects.create(name=job["name"], enabled=True, **fields)
                self.stdout.write(f"created  {job['name']} ({job['task']})")
            else:
                for key, value in fields.items():
                    setattr(existing, key, value)
                existing.save()
                self.stdout.write(f"reset    {job['name']} ({job['task']})")
