"""Shared fixtures: a real Milvus Lite server over gRPC, real Celery worker processes, images."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from webapp.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


INTEGRATION_FIXTURES = {"milvus_uri", "celery_worker", "live_server", "fresh_worker", "localize_worker"}
INTEGRATION_MARKERS = {"worker", "browser"}


def pytest_collection_modifyitems(config, items):
    """Tests that start processes or reach services (Milvus server, worker, browser) are integration tests; those
    that reach the Milvus server of `milvus_uri` (the engine MILVUS_ENGINE names) are also marked `milvus`."""
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames) or INTEGRATION_MARKERS & {m.name for m in item.iter_markers()}:
            item.add_marker(pytest.mark.integration)
        if "milvus_uri" in item.fixturenames:
            item.add_marker(pytest.mark.milvus)


def require_service(reason: str):
    """Skip with the reason printed; when REQUIRE_REAL_SERVICES=1 (CI) a missing service fails instead."""
    if os.environ.get("REQUIRE_REAL_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory):
    """A Milvus server process on 127.0.0.1 of the engine MILVUS_ENGINE names (the product's setting: Milvus Lite by
    default, `standalone` for a real Milvus server), reached over gRPC by the tests and the workers they start
    (which inherit MILVUS_ENGINE, so they build the same index)."""
    from django.conf import settings

    if os.environ.get("TEST_MILVUS_URI"):
        yield os.environ["TEST_MILVUS_URI"]
        return
    data_dir = tmp_path_factory.mktemp("milvus")
    if settings.MILVUS_ENGINE == "standalone":
        from scripts.milvus_standalone import start

        server = start(data_dir / "data", log_path=data_dir / "server.log")
        try:
            yield server.uri
        finally:
            server.stop()
        return
    port = free_port()
    with open(data_dir / "server.log", "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                str(VENV_BIN / "milvus-lite"),
                "server",
                "--data-dir",
                str(data_dir / "data"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def milvus_names():
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return {"prefix": prefix, "alias": f"{prefix}_active"}


@pytest.fixture
def vector_store(settings, milvus_uri, milvus_names):
    """The product's vector store on the test server, emptied before each test."""
    return emptied_vector_store(settings, milvus_uri, milvus_names)


def emptied_vector_store(settings, uri: str, names: dict):
    """Point the product at the Milvus server at `uri` under fresh names, and drop whatever is there."""
    from webapp.search.registry import get_vector_store, reset_active_version_cache

    settings.MILVUS_URI = uri
    settings.MILVUS_COLLECTION_PREFIX = names["prefix"]
    settings.MILVUS_ALIAS = names["alias"]
    reset_active_version_cache()
    store = get_vector_store()
    store.drop_alias()
    for name in store.list_collections():
        store.drop_collection(name)
    return store


@pytest.fixture
def serving_version(db):
    """The ImageNet stand-in registered as the active version, as `make run`'s setup leaves it (no store call)."""
    from webapp.search.models import ModelVersion
    from webapp.search.registry import reset_active_version_cache
    from webapp.search.versions import model_version_register

    version, _ = model_version_register(kind=ModelVersion.Kind.IMAGENET)
    ModelVersion.objects.filter(pk=version.pk).update(state=ModelVersion.State.ACTIVE)
    reset_active_version_cache()
    yield ModelVersion.objects.get(pk=version.pk)
    reset_active_version_cache()


@pytest.fixture
def visnet_version(vector_store):
    """The shipped VisNet (models/visnet-default) active on an empty catalog, as after `make run`'s activation."""
    from webapp.search import activation, registry
    from webapp.search.versions import model_version_register

    version, _ = model_version_register(artifact_dir=ROOT / "models" / "visnet-default")
    activation.model_version_activate(version=version, queue=False)
    assert activation.catalog_reembed(version_id=version.pk) is True
    registry.reset_active_version_cache()
    yield registry.active_version(fresh=True)
    registry.reset_active_version_cache()


def _database_url() -> str:
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    auth = params["USER"] + (f":{params['PASSWORD']}" if params["PASSWORD"] else "")
    return f"postgres://{auth}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}/{params['NAME']}"


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, log_path: Path, broker_url: str, env: dict):
        self.process, self.log_path, self.broker_url, self.env = process, log_path, broker_url, env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(
    tmp_path: Path,
    milvus_uri: str,
    milvus_names: dict,
    broker_url: str,
    extra_env=None,
    queues: str = "ingest,default",
    pool: str = "prefork",
) -> WorkerProcess:
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(),
        MILVUS_URI=milvus_uri,
        MILVUS_COLLECTION_PREFIX=milvus_names["prefix"],
        MILVUS_ALIAS=milvus_names["alias"],
        CELERY_BROKER_URL=broker_url,
        TORCH_NUM_THREADS="2",
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        VAR_DIR=str(settings.VAR_DIR),
        DETECTOR_ARTIFACT_DIR=str(settings.DETECTOR_ARTIFACT_DIR),
        **(extra_env or {}),
    )
    log_path = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "-A",
                "webapp",
                "worker",
                "-Q",
                queues,
                "--pool",
                pool,
                "--concurrency",
                "1",
                "--prefetch-multiplier",
                "1",
                "--loglevel",
                "INFO",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-n",
                f"test-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(process, log_path, broker_url, env)
    deadline = time.monotonic() + 60
    while "ready." not in worker.log():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"worker did not start:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
    return worker


def stop_worker(worker: WorkerProcess) -> None:
    worker.process.send_signal(signal.SIGQUIT)  # cold shutdown: tests do not wait for a warm drain
    try:
        worker.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        worker.process.kill()


@pytest.fixture
def celery_worker(tmp_path, milvus_uri, milvus_names, vector_store, transactional_db):
    """A real Celery worker process on the configured broker (filesystem by default, Redis in CI)."""
    from django.conf import settings

    worker = start_worker(tmp_path, milvus_uri, milvus_names, settings.CELERY_BROKER_URL)
    yield worker
    stop_worker(worker)


@pytest.fixture
def localize_worker(tmp_path, milvus_uri, milvus_names, transactional_db):
    """A real Celery worker on the `localize` queue with the shipped detector (models/detector-default)."""
    from django.conf import settings

    from webapp.celery import app

    app.set_current()
    app.set_default()
    worker = start_worker(
        tmp_path, milvus_uri, milvus_names, settings.CELERY_BROKER_URL, queues="localize", pool="solo"
    )
    yield worker
    stop_worker(worker)


CATALOG_WRITE_PERMISSIONS = ("add_product", "delete_product", "add_productimage")


def make_catalog_manager(username: str, password: str = "a-long-password-1"):
    """A staff user with the catalog's write permissions (what the API's writes need; a merchandiser has none)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password=password, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="catalog", codename__in=CATALOG_WRITE_PERMISSIONS)
    )
    return user


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def image_bytes(fmt: str = "PNG", size=(64, 48), color=(200, 30, 30), **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def fashion_items():
    """A few real Fashion-MNIST test items as PNG bytes with labels."""
    from ml.data.fashion_mnist import load_fashion_mnist
    from webapp.catalog.demo import item_png

    images, labels = load_fashion_mnist("test")
    return [(item_png(images[i]), int(labels[i])) for i in range(60)]


@pytest.fixture(autouse=True)
def _media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _no_request_rate_limits(settings):
    """Searches and uploads are rate-limited per client, and tests send many from one address: off here;
    tests/test_access.py turns them on where it tests them."""
    settings.REQUEST_THROTTLE_RATES = dict.fromkeys(settings.REQUEST_THROTTLE_RATES)


@pytest.fixture(scope="session", autouse=True)
def _clean_broker_dir():
    from django.conf import settings

    broker_dir = Path(settings.BROKER_DIR)
    if settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        try:
            redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=2).flushdb()
        except redis.RedisError as exc:
            pytest.exit(f"CELERY_BROKER_URL {settings.CELERY_BROKER_URL} is unreachable: {exc}", returncode=1)
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        for folder in ("queue", "processed"):
            shutil.rmtree(broker_dir / folder, ignore_errors=True)
            (broker_dir / folder).mkdir(parents=True, exist_ok=True)
    yield
