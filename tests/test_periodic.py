"""Periodic jobs: the seed command (idempotent, respects what people changed), the nightly retrain's setting and
threshold, and a real celery beat process (database scheduler, the configured broker) that gets a job to a worker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.conftest import ROOT, VENV_BIN, _database_url, start_worker, stop_worker, wait_until
from webapp.curation.models import Triplet
from webapp.search import tasks, training
from webapp.search.models import TrainingRun

SEEDED = {
    "Mine candidate triplets for new products": "curation.mine_triplets",
    "Find near-duplicate products": "catalog.find_near_duplicates",
    "Reconcile the catalog with the vector store": "search.reconcile_vectors",
    "Nightly retrain": "search.nightly_retrain",
}


@pytest.mark.django_db
def test_seeding_is_idempotent_and_keeps_what_people_changed(settings):
    settings.MINE_TRIPLETS_EVERY_MINUTES = 15
    settings.NIGHTLY_RETRAIN_HOUR = 1
    call_command("seed_periodic_tasks")
    call_command("seed_periodic_tasks")
    jobs = {job.name: job for job in PeriodicTask.objects.all()}
    assert {name: job.task for name, job in jobs.items()} == SEEDED
    assert all(job.enabled for job in jobs.values())
    mining = jobs["Mine candidate triplets for new products"]
    assert (mining.interval.every, mining.interval.period, mining.crontab) == (15, "minutes", None)
    nightly = jobs["Nightly retrain"]
    assert (nightly.crontab.hour, nightly.crontab.minute, nightly.interval) == ("1", "0", None)

    # Someone pauses the mining and makes it hourly in the admin: seeding again leaves that alone.
    hourly, _ = IntervalSchedule.objects.get_or_create(every=60, period=IntervalSchedule.MINUTES)
    PeriodicTask.objects.filter(pk=mining.pk).update(enabled=False, interval=hourly)
    call_command("seed_periodic_tasks")
    mining.refresh_from_db()
    assert (mining.enabled, mining.interval.every) == (False, 60)
    assert PeriodicTask.objects.count() == len(SEEDED)
    call_command("seed_periodic_tasks", "--reset")  # unless asked to put the seeded schedule back
    mining.refresh_from_db()
    assert mining.interval.every == 15 and PeriodicTask.objects.count() == len(SEEDED)


def approve(count: int, reviewed_at=None) -> None:
    start = Triplet.objects.count()
    for index in range(start, start + count):
        Triplet.objects.create(
            anchor_ref=f"street:train:{index}",
            positive_ref=f"shop:p{index}",
            negative_ref=f"shop:n{index}",
            kind="street",
            source="test",
            status=Triplet.Status.APPROVED,
            reviewed_at=reviewed_at or timezone.now(),
        )


@pytest.mark.django_db
def test_the_nightly_retrain_needs_the_setting_and_enough_new_approvals(settings, tmp_path, serving_version):
    settings.TRAINED_MODELS_DIR = tmp_path / "trained"
    settings.NIGHTLY_RETRAIN_MIN_APPROVALS = 3
    approve(5)
    settings.NIGHTLY_RETRAIN = False  # the default
    assert tasks.nightly_retrain() == {"started": None}
    assert not TrainingRun.objects.exists()

    settings.NIGHTLY_RETRAIN = True
    run = training.training_nightly_maybe_start()
    assert run is not None and run.config["trigger"] == "nightly" and run.approved_triplets == 5
    assert training.training_nightly_maybe_start() is None  # one is queued already
    TrainingRun.objects.filter(pk=run.pk).update(state="succeeded")

    assert training.approvals_since_last_run() == 0  # approvals before the last run do not count again
    approve(2)
    assert tasks.nightly_retrain() == {"started": None}  # 2 < 3
    approve(1)
    started = tasks.nightly_retrain()["started"]
    assert started is not None and TrainingRun.objects.get(pk=started).approved_triplets == 8

    # A failed run does not reset the count: the next night tries again with the same approvals.
    TrainingRun.objects.filter(pk=started).update(state="failed")
    assert training.approvals_since_last_run() == 3
    TrainingRun.objects.filter(pk=started).update(created_at=timezone.now() - timedelta(days=1))
    assert tasks.nightly_retrain()["started"] is not None


@pytest.mark.worker
def test_celery_beat_sends_the_nightly_job_to_a_worker(settings, tmp_path, milvus_names, transactional_db):
    """A real beat process reads the seeded schedule from the database and publishes on the configured broker; a
    real worker runs the nightly job, which queues a retrain (nothing consumes the `train` queue here)."""
    from webapp.celery import app

    app.set_current()
    app.set_default()
    call_command("seed_periodic_tasks")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(task="search.nightly_retrain").update(interval=every_second, crontab=None)
    PeriodicTask.objects.exclude(task="search.nightly_retrain").update(enabled=False)  # other helpers' jobs
    approve(2)
    env_extra = {
        "NIGHTLY_RETRAIN": "1",
        "NIGHTLY_RETRAIN_MIN_APPROVALS": "2",
        "TRAINED_MODELS_DIR": str(tmp_path / "trained"),
    }
    worker = start_worker(
        tmp_path, "http://127.0.0.1:9", milvus_names, settings.CELERY_BROKER_URL, extra_env=env_extra, queues="default"
    )
    log_path = tmp_path / f"beat-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "w") as log:
        beat = subprocess.Popen(
            [str(VENV_BIN / "celery"), "-A", "webapp", "beat", "--loglevel", "INFO", "--max-interval", "1"],
            cwd=ROOT,
            env={**worker.env, "DATABASE_URL": _database_url()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        run = wait_until(
            lambda: TrainingRun.objects.filter(config__trigger="nightly").first(),
            60,
            interval=0.5,
            message=f"a nightly run (beat: {log_path.read_text()[-1500:]}; worker: {worker.log()[-1500:]})",
        )
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        stop_worker(worker)
    assert run.approved_triplets == 2 and run.state == "queued"
    assert "DatabaseScheduler" in log_path.read_text() and "search.nightly_retrain" in worker.log()
    assert os.path.exists(run.config["approved_triplets_file"])
