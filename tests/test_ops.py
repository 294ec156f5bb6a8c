"""Operations: the health endpoint, request ids from the web request into the worker's log lines, queue depth."""

from __future__ import annotations

import json
import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.conftest import wait_until
from tests.test_search_unit import make_product
from webapp.catalog import services
from webapp.catalog.models import ProductImage
from webapp.ops import health
from webapp.ops.request_ids import JsonFormatter, RequestIdFilter, current_request_id


def test_health_answers_503_and_names_what_is_missing(db, settings):
    settings.MILVUS_URI = "http://127.0.0.1:9"  # nothing listens there
    settings.MILVUS_CONNECT_TIMEOUT = 0.5
    response = Client().get("/health/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["vector_store_and_model"]["ok"] is False
    assert response["Cache-Control"].startswith("max-age=0")


def test_health_answers_200_when_everything_answers(db, vector_store, visnet_version):
    response = Client().get("/health/")
    body = response.json()
    assert response.status_code == 200, body
    assert visnet_version.model_version in body["checks"]["vector_store_and_model"]["detail"]


def test_every_response_carries_a_request_id_and_keeps_a_sane_one_offered(db):
    client = Client()
    made = client.get("/health/")["X-Request-ID"]
    assert len(made) == 32
    assert client.get("/health/", HTTP_X_REQUEST_ID="edge-proxy-4f2a91")["X-Request-ID"] == "edge-proxy-4f2a91"
    refused = client.get("/health/", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-ID"]
    assert refused != "bad id\nwith newline" and len(refused) == 32


def test_log_lines_are_json_with_the_request_id():
    record = logging.LogRecord("webapp.test", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    token = current_request_id.set("req-12345678")
    try:
        RequestIdFilter().filter(record)
    finally:
        current_request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hello there" and line["request_id"] == "req-12345678" and line["level"] == "INFO"


@pytest.mark.engine_agnostic
@pytest.mark.worker
def test_the_request_id_follows_the_upload_into_the_worker_log(celery_worker, vector_store, fashion_items):
    staff = get_user_model().objects.create_user("ops-staff", password="x" * 12, is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    product = make_product("ops-traced")
    response = client.post(
        f"/api/products/{product.pk}/images/",
        {"image": _upload(fashion_items[0][0])},
        HTTP_X_REQUEST_ID="trace-upload-0001",
    )
    assert response.status_code == 201, response.content
    wait_until(lambda: ProductImage.objects.filter(product=product, status="ready").exists(), 90, message="ingested")
    lines = [json.loads(line) for line in celery_worker.log().splitlines() if line.startswith("{")]
    traced = [line for line in lines if line.get("request_id") == "trace-upload-0001"]
    assert traced, celery_worker.log()[-3000:]
    assert any(line.get("task", "").startswith("search.ingest_image_batch[") for line in traced)


def _upload(content: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("item.png", content, content_type="image/png")


def test_operations_page_shows_queues_and_ingestion_lag_to_staff_only(db, fashion_items):
    product = make_product("ops-waiting")
    services.product_image_create(product=product, content=fashion_items[0][0])
    lag = health.ingestion_lag()
    assert lag.pending == 1 and lag.oldest_waiting_seconds is not None
    depths = health.queue_depths()
    assert set(depths) == set(health.QUEUES)
    assert all(depth is None or depth >= 0 for depth in depths.values())

    anonymous = Client().get("/admin/operations/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    staff = get_user_model().objects.create_user("ops-viewer", password="x" * 12, is_staff=True)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/operations/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Images pending" in text and "ingest" in text
