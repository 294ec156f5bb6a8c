"""Faults injected while the product works, each with its outcome counted.

Every ingestion scenario ends the same way (tests/faults.py `finish_with_reconcile`): the queue drains, the images
left with no task are counted (`lost_before_reconcile`: real information, e.g. the message a SIGKILLed worker held),
reconcile repairs them, and then 0 lost images, 0 duplicated vectors, 0 rows without files or files without rows, and
a reconcile check that is clean. Real processes throughout: a private Milvus Lite server, a private redis-server and a
private PostgreSQL cluster that the tests kill and restart, real Celery workers, gunicorn.

The CI subset runs small catalogs; `python -m benchmarks.reliability` runs the same tests at full scale
(FAULTS_SCALE=full) and collects each Outcome into docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, VENV_BIN, emptied_vector_store, require_service, start_worker, stop_worker
from tests.faults import (
    MilvusServer,
    Outcome,
    PostgresCluster,
    RedisServer,
    catalog_state,
    finish_with_reconcile,
    full_scale,
    kill_tree,
    partial_files,
    reconcile,
    vector_counts,
    wait_for,
)
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Product, ProductImage
from webapp.ports import free_port, wait_for_port

pytestmark = pytest.mark.integration

TINY_VISNET = ROOT / "tests" / "fixtures" / "tiny-visnet"
CATALOG_SIZE = 200 if full_scale() else 10
# One image per task (as an import queues them): about 2 s each on the filesystem broker's polling cycle.
DRAIN_TIMEOUT = 120 + 3 * CATALOG_SIZE


# Fixtures: private servers the tests may kill ----------------------------------------------------
@pytest.fixture(scope="module")
def fault_milvus(tmp_path_factory):
    server = MilvusServer(tmp_path_factory.mktemp("fault-milvus")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory):
    if not RedisServer.available():
        require_service("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("fault-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def fault_store(settings, fault_milvus, milvus_names, transactional_db):
    """The product's vector store on the private Milvus server, emptied."""
    from webapp.search.registry import reset_active_version_cache

    yield emptied_vector_store(settings, fault_milvus.uri, milvus_names)
    reset_active_version_cache()


@pytest.fixture
def tiny_active(fault_store):
    """The tiny VisNet fixture active on an empty catalog (fast to embed: the embedder is not the point here)."""
    from webapp.search import activation, registry
    from webapp.search.versions import model_version_register

    version, _ = model_version_register(artifact_dir=TINY_VISNET)
    activation.model_version_activate(version=version, queue=False)
    assert activation.catalog_reembed(version_id=version.pk) is True
    registry.reset_active_version_cache()
    return registry.active_version(fresh=True)


class Broker:
    """The broker this process publishes to and the workers consume from (filesystem folders or Redis)."""

    def __init__(self, name: str, url: str, options: dict, worker_env: dict, redis: RedisServer | None = None):
        self.name, self.url, self.options, self.worker_env, self.redis = name, url, options, worker_env, redis


def _use_broker(app, url: str, options: dict) -> None:
    # Both spellings: the namespaced key read from Django's settings wins over the plain one.
    app.conf.update(
        broker_url=url, CELERY_BROKER_URL=url, broker_transport_options=options, CELERY_BROKER_TRANSPORT_OPTIONS=options
    )
    app._pool = None  # kombu keeps one pool per broker URL: the next publish takes the new URL's
    app.amqp._producer_pool = None


@contextlib.contextmanager
def _published_to(broker: Broker, monkeypatch):
    from webapp.celery import app

    # Celery lets the CELERY_BROKER_URL environment variable override any app's broker (CI sets it).
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app.set_current()
    app.set_default()
    saved = app.conf.broker_url, app.conf.broker_transport_options
    _use_broker(app, broker.url, broker.options)
    try:
        yield
    finally:
        _use_broker(app, *saved)


def _filesystem_broker(tmp_path: Path) -> Broker:
    folders = {name: tmp_path / "broker" / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
        "polling_interval": 0.05,
    }
    return Broker("filesystem", "filesystem://", options, {"CELERY_BROKER_DIR": str(tmp_path / "broker")})


def _redis_broker(server: RedisServer) -> Broker:
    import redis

    redis.Redis.from_url(server.url).flushdb()
    return Broker("redis", server.url, {}, {}, redis=server)


@pytest.fixture
def filesystem_broker(tmp_path, monkeypatch):
    broker = _filesystem_broker(tmp_path)
    with _published_to(broker, monkeypatch):
        yield broker


@pytest.fixture
def redis_broker(fault_redis, monkeypatch):
    broker = _redis_broker(fault_redis)
    with _published_to(broker, monkeypatch):
        yield broker


# Helpers ----------------------------------------------------------------------------------------
def write_catalog(folder: Path, first: int, count: int) -> Path:
    """A merchant CSV of `count` Fashion-MNIST products (distinct items, one image each) with their files."""
    from ml.data.fashion_mnist import load_fashion_mnist
    from webapp.catalog.demo import CLASS_NAMES, item_png

    images, labels = load_fashion_mnist("test")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"catalog-{first}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "price", "category", "image"])
        for index in range(first, first + count):
            (folder / f"{index}.png").write_bytes(item_png(images[index]))
            label = CLASS_NAMES[int(labels[index])]
            writer.writerow([f"fault-{index}", f"{label} {index}", "19.99", label, f"{index}.png"])
    return path


def import_rows(folder: Path, first: int, count: int) -> None:
    from webapp.catalog.importing import import_catalog

    # One task per row, as the scenarios count them (a worker killed between tasks, a task lost in flight); the
    # default import batches a transaction's images into tasks of 32, which would make these few rows one task.
    report = import_catalog(write_catalog(folder, first, count), rows_per_transaction=1)
    assert not report.errors, report.errors[:3]


def launch_worker(tmp_path, fault_milvus, milvus_names, broker: Broker):
    return start_worker(tmp_path, fault_milvus.uri, milvus_names, broker.url, extra_env=broker.worker_env)


def ready_count() -> int:
    return ProductImage.objects.filter(status=ProductImage.Status.READY).count()


def mid_task(ready_at_least: int):
    """True while the worker is inside a task (an image processing) once `ready_at_least` images are ready."""

    def check() -> bool:
        state = catalog_state()
        return state["ready"] >= ready_at_least and state["processing"] > 0

    return check


def assert_nothing_lost(outcome: Outcome) -> None:
    outcome.record()
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.partial == 0, outcome
    assert outcome.reconcile_clean, outcome
    assert outcome.ready == outcome.images, outcome


# The worker killed mid-import -------------------------------------------------------------------
def _worker_killed_mid_import(tmp_path, settings, fault_milvus, milvus_names, fault_store, broker: Broker) -> Outcome:
    outcome = Outcome("worker SIGKILLed (parent and child) mid-import, restarted", "fault", broker=broker.name)
    started = time.monotonic()
    half = CATALOG_SIZE // 2
    worker = launch_worker(tmp_path, fault_milvus, milvus_names, broker)
    try:
        import_rows(tmp_path / "catalog", 0, half)
        wait_for(mid_task(max(2, half // 4)), DRAIN_TIMEOUT, interval=0.05, message="the worker to be mid-task")
        killed = kill_tree(worker.process.pid)
        outcome.notes.append(f"{killed} worker processes SIGKILLed with {ready_count()}/{half} ready")
        import_rows(tmp_path / "catalog", half, CATALOG_SIZE - half)  # published while no worker runs
        worker = launch_worker(tmp_path, fault_milvus, milvus_names, broker)
        finish_with_reconcile(outcome, worker, fault_store, settings.MEDIA_ROOT, timeout=DRAIN_TIMEOUT)
    finally:
        stop_worker(worker)
    outcome.duration_s = round(time.monotonic() - started, 1)
    return outcome


@pytest.mark.worker
def test_worker_killed_mid_import_loses_nothing_after_reconcile_filesystem_broker(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, filesystem_broker
):
    outcome = _worker_killed_mid_import(tmp_path, settings, fault_milvus, milvus_names, fault_store, filesystem_broker)
    assert_nothing_lost(outcome)
    # The filesystem transport deletes a message when it hands it to the worker: the task the killed worker was
    # running (and any message it had prefetched) has no task left until reconcile re-queues it.
    assert 1 <= outcome.lost_before_reconcile <= 2, outcome


@pytest.mark.worker
@pytest.mark.slow
def test_worker_killed_mid_import_loses_nothing_after_reconcile_redis_broker(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, redis_broker
):
    outcome = _worker_killed_mid_import(tmp_path, settings, fault_milvus, milvus_names, fault_store, redis_broker)
    assert_nothing_lost(outcome)


# The vector store killed ------------------------------------------------------------------------
@pytest.mark.worker
@pytest.mark.slow
def test_vector_store_killed_and_restarted_during_ingestion(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, filesystem_broker
):
    outcome = Outcome("vector store SIGKILLed during ingestion, restarted 2 s later", "fault", broker="filesystem")
    started = time.monotonic()
    worker = launch_worker(tmp_path, fault_milvus, milvus_names, filesystem_broker)
    try:
        import_rows(tmp_path / "catalog", 0, CATALOG_SIZE)
        wait_for(lambda: ready_count() >= max(2, CATALOG_SIZE // 4), DRAIN_TIMEOUT, message="ingestion under way")
        fault_milvus.restart(hard=True, down_seconds=2.0)
        outcome.notes.append(f"Milvus killed with {ready_count()}/{CATALOG_SIZE} ready; the worker retried")
        finish_with_reconcile(outcome, worker, fault_store, settings.MEDIA_ROOT, timeout=DRAIN_TIMEOUT)
    finally:
        stop_worker(worker)
    outcome.duration_s = round(time.monotonic() - started, 1)
    assert_nothing_lost(outcome)


@pytest.mark.worker
@pytest.mark.slow
def test_vector_store_killed_and_restarted_during_reembedding(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, filesystem_broker
):
    """An activation's re-embed (into the new version's collection) with the vector store killed under it: the
    task retries, the alias swaps once every image is in the new collection, once each."""
    from webapp.search import activation, registry, versions
    from webapp.search.models import ModelVersion

    outcome = Outcome("vector store SIGKILLed during an activation's re-embed", "fault", broker="filesystem")
    started = time.monotonic()
    worker = launch_worker(tmp_path, fault_milvus, milvus_names, filesystem_broker)
    try:
        import_rows(tmp_path / "catalog", 0, CATALOG_SIZE)
        wait_for(lambda: ready_count() == CATALOG_SIZE, DRAIN_TIMEOUT, message="the catalog to be ingested")
        new, _ = versions.model_version_register(kind="imagenet", image_size=64)
        activation.model_version_activate(version=new)
        wait_for(
            lambda: ModelVersion.objects.get(pk=new.pk).state == ModelVersion.State.EMBEDDING,
            30,
            message="the re-embed to start",
        )
        if full_scale():  # a few hundred images: kill it part-way through the main pass
            wait_for(
                lambda: ModelVersion.objects.get(pk=new.pk).embedded > 0, DRAIN_TIMEOUT, message="re-embed progress"
            )
        fault_milvus.restart(hard=True, down_seconds=3.0)
        embedded = ModelVersion.objects.get(pk=new.pk).embedded
        outcome.notes.append(f"Milvus killed with {embedded}/{CATALOG_SIZE} re-embedded")
        wait_for(
            lambda: ModelVersion.objects.get(pk=new.pk).state in (ModelVersion.State.ACTIVE, ModelVersion.State.FAILED),
            DRAIN_TIMEOUT,
            interval=0.5,
            message="the activation to finish",
        )
        version = ModelVersion.objects.get(pk=new.pk)
        assert version.state == ModelVersion.State.ACTIVE, (version.state, version.error, worker.log()[-3000:])
        registry.reset_active_version_cache()
        assert fault_store.active_collection() == fault_store.collection_name(new.model_version)
        finish_with_reconcile(outcome, worker, fault_store, settings.MEDIA_ROOT, timeout=DRAIN_TIMEOUT)
    finally:
        stop_worker(worker)
    outcome.duration_s = round(time.monotonic() - started, 1)
    assert_nothing_lost(outcome)
    assert len(vector_counts(fault_store)) == CATALOG_SIZE


# Redis ------------------------------------------------------------------------------------------
@pytest.mark.worker
@pytest.mark.slow
def test_redis_restarted_during_ingestion(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, redis_broker, caplog
):
    """A third imported before, a third while Redis is down (saved; their messages cannot be published: logged,
    left pending), a third after it is back; the worker reconnects by itself."""
    outcome = Outcome("Redis SIGKILLed during ingestion, restarted 3 s later", "fault", broker="redis")
    started = time.monotonic()
    third = CATALOG_SIZE // 3
    worker = launch_worker(tmp_path, fault_milvus, milvus_names, redis_broker)
    try:
        import_rows(tmp_path / "catalog", 0, third)
        wait_for(lambda: ready_count() >= max(2, third // 3), DRAIN_TIMEOUT, message="ingestion under way")
        redis_broker.redis.kill()
        with caplog.at_level(logging.ERROR, logger="webapp.search.dispatch"):
            import_rows(tmp_path / "catalog", third, third)
        unpublished = sum("broker unreachable" in record.getMessage() for record in caplog.records)
        time.sleep(1.0)
        redis_broker.redis.start()
        import_rows(tmp_path / "catalog", 2 * third, CATALOG_SIZE - 2 * third)
        outcome.notes.append(f"{unpublished} row(s) saved while Redis was down (messages logged, not published)")
        finish_with_reconcile(outcome, worker, fault_store, settings.MEDIA_ROOT, timeout=DRAIN_TIMEOUT)
    finally:
        stop_worker(worker)
    outcome.duration_s = round(time.monotonic() - started, 1)
    assert unpublished == third
    assert outcome.lost_before_reconcile >= unpublished
    assert_nothing_lost(outcome)


@pytest.mark.worker
def test_broker_unreachable_when_a_product_is_saved_the_row_is_kept_and_reconcile_queues_it(
    tmp_path, settings, fault_milvus, milvus_names, tiny_active, fault_store, redis_broker, fashion_items, caplog
):
    """POST a product image with Redis down: 201 and the row saved (pending), the failure logged; once Redis is
    back, reconcile_vectors (Celery beat) re-queues the pending image and the worker makes it ready."""
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    outcome = Outcome("broker unreachable when a product image is saved (API)", "fault", broker="redis")
    started = time.monotonic()
    api = APIClient()
    api.force_authenticate(User.objects.create_superuser("merchant"))
    redis_broker.redis.stop()
    try:
        with caplog.at_level(logging.ERROR, logger="webapp.search.dispatch"):
            product = api.post(
                "/api/products/",
                {"sku": "down-1", "title": "Saved while the broker is down", "price": "9.99", "category": "Shirt"},
                format="json",
            )
            assert product.status_code == 201, product.content
            t0 = time.monotonic()
            response = api.post(
                f"/api/products/{product.json()['id']}/images/",
                {"image": _upload(fashion_items[3][0])},
                format="multipart",
            )
            outcome.notes.append(f"answered {response.status_code} in {time.monotonic() - t0:.2f} s")
        outcome.requests = 2
        assert response.status_code == 201, response.content
        assert any("broker unreachable" in record.getMessage() for record in caplog.records)
        assert catalog_state()["pending"] == 1
    finally:
        redis_broker.redis.start()
    worker = launch_worker(tmp_path, fault_milvus, milvus_names, redis_broker)
    try:
        time.sleep(2.0)
        assert catalog_state()["pending"] == 1  # nothing was queued: only reconcile can pick it up
        finish_with_reconcile(outcome, worker, fault_store, settings.MEDIA_ROOT, timeout=DRAIN_TIMEOUT)
    finally:
        stop_worker(worker)
    outcome.duration_s = round(time.monotonic() - started, 1)
    assert outcome.lost_before_reconcile == 1
    assert_nothing_lost(outcome)


def _upload(content: bytes, name: str = "photo.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content, content_type="image/png")


# Disk full, media folder unwritable ---------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        require_service(f"mounting a tmpfs needs root: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _big_png(side: int = 600) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("fault", ["disk full", "read-only media folder"])
def test_upload_to_a_full_or_unwritable_media_folder_is_refused_clearly_and_writes_nothing(
    tmp_path, settings, fault, transactional_db
):
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    outcome = Outcome(f"product image upload, {fault}", "fault")
    started = time.monotonic()
    api = APIClient(raise_request_exception=False)
    api.force_authenticate(User.objects.create_superuser("merchant"))
    category = catalog_services.category_get_or_create(name="Shirt")
    product, _ = catalog_services.product_upsert(sku="full-1", title="t", price=Decimal("5"), category=category)
    content = _big_png()  # about 1 MB: more than the 256 KB the full disk has left
    with _tmpfs(tmp_path / "media", "256k", read_only=fault == "read-only media folder") as media:
        settings.MEDIA_ROOT = media
        response = api.post(f"/api/products/{product.pk}/images/", {"image": _upload(content)}, format="multipart")
        outcome.requests = 1
        body = response.content.decode(errors="replace")
        files = partial_files(media)
        leftovers = [str(p.relative_to(media)) for p in media.rglob("*") if p.is_file()]
    outcome.duration_s = round(time.monotonic() - started, 2)
    outcome.partial = len(files["rows_without_files"]) + len(files["files_without_rows"]) + len(leftovers)
    outcome.images = ProductImage.objects.count()
    if response.status_code >= 500 and response.status_code != 503:
        outcome.server_errors = 1
    else:
        outcome.clean_refusals = 1
    outcome.notes.append(f"{response.status_code}: {body[:160]}")
    outcome.record()
    assert response.status_code == 503, body[:500]
    assert response["Retry-After"]
    assert "could not be stored" in response.json()["detail"]
    assert outcome.images == 0 and outcome.partial == 0, (files, leftovers)


# PostgreSQL restarted under load ----------------------------------------------------------------
@pytest.fixture
def private_postgres(tmp_path_factory):
    if not PostgresCluster.available():
        require_service("PostgreSQL server binaries (initdb, postgres) are not installed")
    # Not under pytest's temporary root: every pytest session resets that to mode 0700, out of the postgres user's
    # reach.
    workdir = Path(tempfile.mkdtemp(prefix="visnet-fault-pg-"))
    cluster = PostgresCluster(workdir).init().start()
    yield cluster
    cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _manage(env: dict, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.engine_agnostic
def test_postgresql_restarted_under_load_requests_fail_cleanly_and_briefly_then_recover(
    tmp_path, private_postgres, milvus_uri
):
    """gunicorn (as `make run` starts it: 2 workers x 4 threads, persistent connections) serves catalog pages and
    API reads from 8 threads while PostgreSQL is restarted (fast shutdown: every connection cut). During the outage
    a request may answer a clean 503 with Retry-After; none may be an unhandled 500, none may hang past the client
    timeout, and once the database is back every request succeeds again."""
    outcome = Outcome("PostgreSQL restarted under load (gunicorn, 8 client threads)", "fault")
    env = dict(
        os.environ,
        DATABASE_URL=private_postgres.url,
        VAR_DIR=str(tmp_path / "var"),
        MEDIA_ROOT=str(tmp_path / "media"),
        MILVUS_URI=milvus_uri,
        CELERY_BROKER_URL="filesystem://",
        DJANGO_DEBUG="1",  # as `make run`: an unhandled error would show Django's traceback page
        LOG_LEVEL="WARNING",
    )
    t0 = time.monotonic()
    _manage(env, "migrate", "--noinput")
    _manage(env, "shell", "-c", _SEED_PRODUCTS)
    setup_s = time.monotonic() - t0
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "webapp.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "120",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, 60, process=server)
        t0 = time.monotonic()
        result = _load_through_restart(port, private_postgres, outcome)
        outcome.duration_s = round(time.monotonic() - t0, 1)
        outcome.notes.append(f"(set-up: migrate and seed {setup_s:.0f} s, warm-up {result['warm_s']:.0f} s)")
    finally:
        kill_tree(server.pid, sig=2)  # gunicorn's quick shutdown
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
        kill_tree(server.pid)
    outcome.record()
    samples = result["samples_500"]
    assert outcome.server_errors == 0, (samples, log_path.read_text()[-3000:])
    assert outcome.hung == 0, result
    assert result["after_ok"] == result["after_total"] > 0, result
    assert result["outage_s"] < 15, result


_SEED_PRODUCTS = """
from decimal import Decimal
from webapp.catalog import services
c = services.category_get_or_create(name="Shirt")
for i in range(30):
    services.product_upsert(sku=f"pg-{i}", title=f"Shirt {i}", price=Decimal("10"), category=c)
"""

CLIENT_TIMEOUT = 10.0


def _load_through_restart(port: int, cluster: PostgresCluster, outcome: Outcome) -> dict:
    base = f"http://127.0.0.1:{port}"
    paths = ["/", "/api/products/", "/api/products/?category=1"]
    # Each gunicorn worker imports the product on its first request (seconds on a busy machine): warm them all.
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: requests.get(f"{base}/api/products/", timeout=120), range(16)))
    warm_s = time.monotonic() - t0
    product_ids = requests.get(f"{base}/api/products/", timeout=CLIENT_TIMEOUT).json()["results"]
    paths += [f"/api/products/{p['id']}/" for p in product_ids[:5]] + [f"/products/{p['id']}/" for p in product_ids[:3]]
    stop = threading.Event()
    phase = {"name": "before"}
    lock = threading.Lock()
    log: list[tuple[str, float, object]] = []
    samples_500: list[str] = []

    def shopper(n: int) -> None:
        session = requests.Session()
        i = n
        while not stop.is_set():
            path = paths[i % len(paths)]
            i += 1
            t0 = time.monotonic()
            try:
                response = session.get(base + path, timeout=CLIENT_TIMEOUT, headers={"Accept": "application/json"})
                status: object = response.status_code
                if response.status_code >= 500 and response.status_code != 503:
                    with lock:
                        samples_500.append(f"{path}: {response.status_code} {response.text[:300]}")
            except requests.Timeout:
                status = "timeout"
            except requests.ConnectionError:
                status = "connection error"
            with lock:
                log.append((phase["name"], time.monotonic() - t0, (path, status)))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(shopper, n) for n in range(8)]
        try:
            time.sleep(3.0)
            phase["name"] = "outage"
            down_at = time.monotonic()
            cluster.stop()
            time.sleep(2.0)
            cluster.start()
            outage_s = time.monotonic() - down_at
            phase["name"] = "recovering"
            time.sleep(3.0)
            phase["name"] = "after"
            time.sleep(3.0)
        finally:
            stop.set()
        for future in futures:
            future.result(timeout=CLIENT_TIMEOUT + 5)
    statuses = [(name, path, status) for name, _, (path, status) in log]
    outcome.requests = len(log)
    outcome.server_errors = sum(
        1 for _, path, status in statuses if isinstance(status, int) and status >= 500 and status != 503
    )
    outcome.clean_refusals = sum(1 for _, _, status in statuses if status == 503 or status == "connection error")
    outcome.hung = sum(1 for _, _, status in statuses if status == "timeout")
    slowest = max((elapsed for _, elapsed, _ in log), default=0.0)
    after = [status for name, _, status in statuses if name == "after"]
    outcome.notes.append(
        f"{outcome.clean_refusals} clean 503 during a {outage_s:.1f} s outage; slowest request {slowest:.2f} s; "
        f"{sum(1 for s in after if s == 200)}/{len(after)} OK afterwards"
    )
    return {
        "samples_500": samples_500[:3],
        "warm_s": warm_s,
        "after_ok": sum(1 for s in after if s == 200),
        "after_total": len(after),
        "outage_s": outage_s,
        "slowest_s": slowest,
        "by_phase": {
            name: sorted({str(s) for n, _, s in statuses if n == name})
            for name in ("before", "outage", "recovering", "after")
        },
    }


def test_fault_helpers_count_partial_files_and_duplicates(
    tmp_path, fault_store, tiny_active, fashion_items, monkeypatch
):
    """The counters themselves can fail: a file without a row, a row without its file, an image id twice."""
    from webapp.search import reconcile as reconcile_module

    monkeypatch.setattr(reconcile_module, "_ingest_backlog", lambda: 0)  # its message lost: no worker consumes here
    media = tmp_path / "media"
    category = catalog_services.category_get_or_create(name="Shirt")
    product, _ = catalog_services.product_upsert(sku="h-1", title="t", price=Decimal("5"), category=category)
    image = catalog_services.product_image_create(product=product, content=fashion_items[0][0])
    assert partial_files(media) == {"rows_without_files": [], "files_without_rows": []}
    (media / "products" / str(product.pk) / "stray.png").write_bytes(b"x")
    Path(image.image.path).unlink()
    found = partial_files(media)
    assert found["rows_without_files"] == [image.image.name]
    assert found["files_without_rows"] == [f"products/{product.pk}/stray.png"]
    assert Product.objects.count() == 1
    assert reconcile(stuck_after_seconds=0)["stuck"] == 1  # pending, and no worker will ever take its message
    assert vector_counts(fault_store) == {}


# The report's arithmetic ------------------------------------------------------------------------
def test_memory_trend_ignores_the_warm_up_and_flags_steady_growth():
    from benchmarks.reliability import memory_trend

    mb = 2**20
    flat = [(t, (900 if t < 10 else 1000) * mb) for t in range(40)]  # models load in the first quarter, then flat
    assert memory_trend(flat)["stable"] is True and memory_trend(flat)["growth_mb"] == 0
    leaking = [(t, (1000 + 10 * t) * mb) for t in range(40)]  # 10 MB per sample, every sample
    trend = memory_trend(leaking)
    assert trend["stable"] is False and trend["growth_mb"] > 200
    assert memory_trend(leaking[:5])["stable"] is None  # too few samples to say


def test_load_errors_are_split_into_server_errors_clean_refusals_and_hung_requests():
    from benchmarks.reliability import classify, row_ok

    result = {
        "ok": 90,
        "errors": 10,
        "error_kinds": {"503": 4, "429": 2, "500": 1, "TimeoutError": 2, "ConnectionResetError": 1},
        "error_samples": [],
        "rps": 5.0,
        **dict.fromkeys(("p50", "p90", "p99", "max", "mean"), 1.0),
    }
    kind = classify(result)
    assert (kind["requests"], kind["server_errors"], kind["clean_refusals"], kind["hung"]) == (100, 2, 6, 2)
    assert row_ok({"server_errors": 0, "hung": 0, "lost": 0, "reconcile_clean": True})
    assert not row_ok({"server_errors": 0, "lost": 0, "reconcile_clean": False})
    assert not row_ok({"duplicated": 1})


def test_report_table_has_a_row_per_class_and_reads_the_hostile_corpus_counts(tmp_path):
    from benchmarks.reliability import hostile_rows, markdown

    (tmp_path / "hostile.json").write_text(
        '{"classes": [{"name": "truncated", "requests": 12, "server_errors": 0, "clean_refusals": 12}]}'
    )
    rows = hostile_rows(tmp_path / "hostile.json")
    assert rows[0]["scenario"] == "hostile input: truncated" and rows[0]["clean_refusals"] == 12
    assert hostile_rows(tmp_path / "absent.json") == []
    fault = {"scenario": "worker killed", "kind": "fault", "broker": "redis", "images": 10, "lost": 0}
    fault |= {"lost_before_reconcile": 2, "duplicated": 0, "partial": 0, "reconcile_clean": True, "notes": ["n"]}
    text = markdown({"quick": True, "finished": "now", "machine": "m", "rows": [fault, *rows], "load": None})
    assert "| fault | worker killed | redis |" in text and "| 0 (2) |" in text
    assert "| input | hostile input: truncated |" in text
    assert "**NO**" not in text
