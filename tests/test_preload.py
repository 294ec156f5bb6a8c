"""No cold start: gunicorn workers load the serving models when they boot (docker/gunicorn.conf.py's post_worker_init
calling webapp.search.registry.serving_models_preload), and torch threads per worker follow the cores."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from webapp.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "docker" / "gunicorn.conf.py"
VENV_BIN = ROOT / ".venv" / "bin"


def _conf(monkeypatch, **env: str) -> dict:
    """docker/gunicorn.conf.py evaluated under `env` (what gunicorn reads from it), os.environ restored after."""
    for name in ("WEB_CONCURRENCY", "WEB_TORCH_THREADS", "TORCH_NUM_THREADS", "WEB_PRELOAD_MODELS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_torch_threads_per_worker_share_the_cores(monkeypatch):
    cores = os.cpu_count() or 1
    conf = _conf(monkeypatch, WEB_CONCURRENCY="2")
    assert conf["torch_threads"] == max(1, cores // 2)
    assert os.environ["TORCH_NUM_THREADS"] == str(max(1, cores // 2))  # what the workers' embedders read
    assert conf["workers"] * conf["torch_threads"] <= max(cores, conf["workers"])


def test_torch_threads_can_be_set_and_preloading_turned_off(monkeypatch):
    conf = _conf(monkeypatch, WEB_CONCURRENCY="8", WEB_TORCH_THREADS="3", WEB_PRELOAD_MODELS="0")
    assert conf["workers"] == 8
    assert conf["torch_threads"] == 3
    assert conf["preload_models"] is False
    assert callable(conf["post_worker_init"])


def test_a_worker_restart_is_rare_at_the_similar_api_target_rate(monkeypatch):
    """Each restarted worker loads the models again: at 2,000 req/s over 2 workers the limit must leave minutes."""
    conf = _conf(monkeypatch)
    assert conf["max_requests"] - conf["max_requests_jitter"] >= 2000 / 2 * 60


@pytest.mark.django_db
def test_preload_without_an_active_version_loads_nothing():
    from webapp.search import registry

    registry.reset_active_version_cache()
    before = dict(registry._embedders)
    timings = registry.serving_models_preload()
    assert set(timings) == {"versions_ms", "urls_ms", "total_ms"}
    assert dict(registry._embedders) == before


def test_preload_loads_the_active_embedder_and_warms_it(db, visnet_version):
    from webapp.search import registry

    with registry._lock:
        registry._embedders.clear()
    timings = registry.serving_models_preload()
    name = visnet_version.model_version
    assert {f"load:{name}_ms", f"warm_up:{name}_ms", f"vector_store:{name}_ms"} <= set(timings)
    key = registry._embedder_key(visnet_version)
    assert key in registry._embedders
    preloaded = registry._embedders[key]
    assert registry.embedder_for(visnet_version) is preloaded  # the first search reuses it, loads nothing


def _gunicorn(tmp_path: Path, extra_env: dict) -> tuple[subprocess.Popen, int, Path]:
    from django.conf import settings

    from tests.conftest import _database_url

    port = free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_database_url(),
        MILVUS_URI=settings.MILVUS_URI,
        MILVUS_COLLECTION_PREFIX=settings.MILVUS_COLLECTION_PREFIX,
        MILVUS_ALIAS=settings.MILVUS_ALIAS,
        VAR_DIR=str(settings.VAR_DIR),
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        WEB_CONCURRENCY="2",
        GUNICORN_ACCESS_LOG="",
        **extra_env,
    )
    process = subprocess.Popen(
        [
            str(VENV_BIN / "gunicorn"),
            "webapp.wsgi:application",
            "-c",
            str(CONF),
            "--bind",
            f"127.0.0.1:{port}",
            "--error-logfile",
            str(log_path),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_port(port, 60, host="127.0.0.1", process=process)
    return process, port, log_path


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _answers(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # 503 (e.g. no broker here) still comes from a booted worker
        return exc.code


@pytest.mark.engine_agnostic
@pytest.mark.parametrize("preload", ["1", "0"])
def test_gunicorn_workers_load_the_models_when_they_boot(tmp_path, transactional_db, visnet_version, preload):
    process, port, log_path = _gunicorn(tmp_path, {"WEB_PRELOAD_MODELS": preload})
    try:
        assert _answers(port) in (200, 503)
        deadline = time.monotonic() + 120
        while preload == "1" and log_path.read_text().count("serving models preloaded") < 2:
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            assert process.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        text = log_path.read_text()
        if preload == "1":
            assert text.count("serving models preloaded") == 2, text[-3000:]  # one line per worker
            assert f"load:{visnet_version.model_version}" in text
            assert "(torch threads 1)" in text or f"(torch threads {max(1, (os.cpu_count() or 1) // 2)})" in text
        else:
            assert "serving models preloaded" not in text
        assert "preloading the serving models failed" not in text
    finally:
        _stop(process)
