"""Health of the product's dependencies and the state of its queues, each check bounded in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from webapp.catalog.models import ProductImage
from webapp.celery import app

BROKER_TIMEOUT_SECONDS = 2.0
QUEUES = ("ingest", "default", "localize", "train")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    ms: float


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except Exception as exc:  # a health check reports every failure, whatever its type
        detail, ok = f"{type(exc).__name__}: {exc}"[:300], False
    return Check(name, ok, detail, round(1000 * (time.perf_counter() - started), 1))


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def _broker() -> str:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
        return conn.as_uri()


def _vector_store_and_model() -> str:
    from webapp.search import registry

    version = registry.active_version(fresh=True)
    store = registry.get_vector_store()
    target = store.active_collection()
    if version is None:
        raise RuntimeError("no active model version (run `manage.py ensure_default_model`)")
    if target is None:
        raise RuntimeError(f"the alias {settings.MILVUS_ALIAS} points at no collection")
    return f"{version.model_version} serving {target} ({store.count(target)} vectors)"


def health_checks() -> list[Check]:
    return [
        _timed("database", _database),
        _timed("broker", _broker),
        _timed("vector_store_and_model", _vector_store_and_model),
    ]


def queue_depths() -> dict[str, int | None]:
    """Messages waiting per queue (None when the broker cannot say)."""
    depths: dict[str, int | None] = {}
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_SECONDS)
            channel = conn.default_channel
            for queue in QUEUES:
                try:
                    depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
                except Exception:  # a queue nobody declared yet: nothing waits in it
                    depths[queue] = 0
    except Exception:  # broker down: the health check says why
        return dict.fromkeys(QUEUES)
    return depths


@dataclass
class IngestionLag:
    pending: int
    processing: int
    failed: int
    oldest_waiting_seconds: float | None
    ready_last_minute: int


def ingestion_lag() -> IngestionLag:
    now = timezone.now()
    waiting = ProductImage.objects.filter(status__in=[ProductImage.Status.PENDING, ProductImage.Status.PROCESSING])
    oldest = waiting.order_by("created_at").values_list("created_at", flat=True).first()
    return IngestionLag(
        pending=ProductImage.objects.filter(status=ProductImage.Status.PENDING).count(),
        processing=ProductImage.objects.filter(status=ProductImage.Status.PROCESSING).count(),
        failed=ProductImage.objects.filter(status=ProductImage.Status.FAILED).count(),
        oldest_waiting_seconds=(now - oldest).total_seconds() if oldest else None,
        ready_last_minute=ProductImage.objects.filter(embedded_at__gte=now - timedelta(minutes=1)).count(),
    )
