"""The product's processes, started the way the product starts them: Milvus Lite server, manage.py commands,
one Celery worker for ingest,default and one for localize (workers/start_worker.sh, app webapp.celery) and gunicorn,
on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks.harness import (
    ROOT,
    VENV_BIN,
    BenchError,
    Context,
    log,
    machine_busy,
    session_cpu_seconds,
    tail,
    wait_port,
)
from webapp.ports import free_port

BENCH_ALIAS = "bench_active"
BENCH_PREFIX = "bench"
DEFAULT_DETECTOR = ROOT / "models" / "detector-default"
FALLBACK_DETECTOR = ROOT / "tests" / "fixtures" / "tiny-detector"  # untrained: plumbing and timing only


def resolve_detector(
    requested: str | Path, default: Path = DEFAULT_DETECTOR, fallback: Path = FALLBACK_DETECTOR
) -> tuple[Path, str | None]:
    """(the detector artifact to serve, a warning when it is not the one asked for).

    Only the default may fall back (to the untrained tiny fixture, while models/detector-default is being
    trained); a directory given explicitly must exist.
    """
    path = Path(requested)
    path = path if path.is_absolute() else ROOT / path
    if path.is_dir():
        return path, None
    if path.resolve() == default.resolve() and fallback.is_dir():
        return fallback, (
            f"{default} does not exist: the localize worker serves the UNTRAINED fixture {fallback} "
            f"(plumbing and timings only; its boxes mean nothing and a trained detector may be slower)"
        )
    raise BenchError(f"detector artifact {path} does not exist (--detector)")


def needs_localize(args) -> bool:
    """The localize worker is started only when the search phase runs."""
    return not args.only or "search" in args.only.split(",")


def prepare_dirs(ctx: Context) -> None:
    if ctx.var_dir.exists() and not ctx.args.keep:
        if any(ctx.var_dir.iterdir()) and not (ctx.var_dir / ".bench").exists():
            raise BenchError(f"refusing to wipe {ctx.var_dir}: not empty and not made by this script")
        log(f"wiping {ctx.var_dir}")
        shutil.rmtree(ctx.var_dir)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    (ctx.var_dir / ".bench").write_text("created by python -m benchmarks\n")


def make_env(ctx: Context) -> dict:
    env = dict(os.environ)
    for key in ("MEDIA_ROOT", "STATIC_ROOT", "CELERY_BROKER_DIR", "MILVUS_TOKEN"):
        env.pop(key, None)
    env.update(
        VAR_DIR=str(ctx.var_dir),
        MILVUS_URI=f"http://127.0.0.1:{ctx.milvus_port}",
        MILVUS_ALIAS=BENCH_ALIAS,
        MILVUS_COLLECTION_PREFIX=BENCH_PREFIX,
        CELERY_BROKER_URL=ctx.args.broker_url,
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="bench-only-" + uuid.uuid4().hex,
        YOLO_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
        MPLBACKEND="Agg",
        # One load generator is one client: the per-client abuse limits would measure themselves, not the product.
        SEARCH_THROTTLE_RATE="",
        UPLOAD_THROTTLE_RATE="",
    )
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{ctx.var_dir / 'db.sqlite3'}"
    else:
        ctx.note("DATABASE_URL was set: the benchmark wrote to that database.")
    if ctx.args.image_size:
        env["EMBEDDER_IMAGE_SIZE"] = str(ctx.args.image_size)
    return env


def start_milvus(ctx: Context) -> None:
    ctx.milvus_port = free_port()
    log_path = ctx.logs / "milvus.log"
    argv = [
        str(VENV_BIN / "milvus-lite"),
        "server",
        "--data-dir",
        str(ctx.var_dir / "milvus"),
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.milvus_port),
    ]
    process = ctx.stack.start("milvus-lite", argv, os.environ.copy(), log_path)
    wait_port(ctx.milvus_port, 90, process, log_path)
    ctx.sessions["milvus-lite"] = process.pid
    ctx.milvus = process
    log(f"Milvus Lite server on 127.0.0.1:{ctx.milvus_port} (pid {process.pid})")


def manage(ctx: Context, *argv: str, timeout: float = 600) -> str:
    log_path = ctx.logs / f"manage-{argv[0]}.log"
    process = ctx.stack.start(f"manage {argv[0]}", [sys.executable, "manage.py", *argv], ctx.env, log_path)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        ctx.stack.stop(process)
        raise BenchError(f"manage.py {' '.join(argv)} took longer than {timeout}s:\n{tail(log_path)}") from None
    if process.returncode != 0:
        raise BenchError(f"manage.py {' '.join(argv)} failed ({process.returncode}):\n{tail(log_path)}")
    return log_path.read_text(errors="replace")


def _start_celery(
    ctx: Context, name: str, queues: str, node: str, log_name: str, env: dict, extra: tuple[str, ...] = ()
) -> None:
    """One worker process of the product's Celery app (workers/start_worker.sh), concurrency 1; waits for ready."""
    log_path = ctx.logs / log_name
    env = dict(ctx.env, CELERY=str(VENV_BIN / "celery"), CELERY_CONCURRENCY="1", CELERY_LOGLEVEL="INFO", **env)
    argv = [
        str(ROOT / "workers" / "start_worker.sh"),
        queues,
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"{node}-{uuid.uuid4().hex[:6]}@%h",
        *extra,
    ]
    process = ctx.stack.start(name, argv, env, log_path)
    deadline = time.monotonic() + 90
    while "ready." not in log_path.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise BenchError(f"{name} did not start:\n{tail(log_path)}")
        time.sleep(0.2)
    ctx.sessions[name] = process.pid
    log(f"{name} ready (queues {queues}, concurrency 1, pid {process.pid}, log {log_path.name})")


def start_worker_prefetch(env: dict) -> int:
    """The --prefetch-multiplier workers/start_worker.sh passes in this environment (the script run with CELERY=echo:
    it chooses by broker)."""
    argv = subprocess.run(
        ["bash", str(ROOT / "workers" / "start_worker.sh")],
        env={**env, "CELERY": shutil.which("echo") or "/bin/echo"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(argv[argv.index("--prefetch-multiplier") + 1])


def worker_settings(ctx: Context) -> dict[str, int]:
    """The ingest worker's prefetch and torch threads: --worker-prefetch / --worker-torch-threads, else what
    scripts/run.sh gives it (workers/start_worker.sh's prefetch for the broker, one torch thread)."""
    return {
        "prefetch": ctx.args.worker_prefetch or start_worker_prefetch(ctx.env),
        "torch_threads": ctx.args.worker_torch_threads or 1,
    }


def start_worker(ctx: Context) -> None:
    """ONE worker process of the product's Celery app, concurrency 1, queues ingest and default, with
    `worker_settings` (as scripts/run.sh starts it)."""
    chosen = worker_settings(ctx)
    env = {"CELERY_PREFETCH": str(chosen["prefetch"]), "TORCH_NUM_THREADS": str(chosen["torch_threads"])}
    _start_celery(ctx, "celery worker", "ingest,default", "bench", "worker.log", env)


def start_localize_worker(ctx: Context) -> None:
    """ONE worker on the `localize` queue, as scripts/run.sh starts it (solo pool, prefetch 1, one torch thread
    unless --localize-torch-threads says otherwise, its own log); it loads the detector (DETECTOR_ARTIFACT_DIR,
    in ctx.env) on its first task."""
    env = {"CELERY_PREFETCH": "1", "TORCH_NUM_THREADS": str(ctx.args.localize_torch_threads or 1)}
    _start_celery(ctx, "localize worker", "localize", "localize", "localize.log", env, extra=("--pool", "solo"))


def use_detector(ctx: Context) -> None:
    """Resolve --detector, pass it to every process (DETECTOR_ARTIFACT_DIR) and record which one served."""
    path, warning = resolve_detector(ctx.args.detector)
    if warning:
        log(f"WARNING: {warning}")
        ctx.note(warning)
    version_file = path / "model_version"
    ctx.env["DETECTOR_ARTIFACT_DIR"] = str(path)
    ctx.results["detector"] = {
        "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "model_version": version_file.read_text().strip() if version_file.exists() else None,
        "fallback": warning is not None,
    }
    log(f"detector artifact: {ctx.results['detector']['path']} ({ctx.results['detector']['model_version']})")


PRELOADED = "serving models preloaded"
PRELOAD_FAILED = "preloading the serving models failed"
GUNICORN_CONF = ROOT / "docker" / "gunicorn.conf.py"


def wait_workers_ready(log_path: Path, offset: int, workers: int, timeout: float, process: subprocess.Popen) -> float:
    """Wait until `workers` gunicorn workers logged (after byte `offset` of the log) that their models are loaded
    (docker/gunicorn.conf.py's post_worker_init); returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        if text.count(PRELOADED) + text.count(PRELOAD_FAILED) >= workers:
            return time.monotonic() - t0
        if process.poll() is not None or time.monotonic() - t0 > timeout:
            raise BenchError(f"gunicorn workers did not load their models in {timeout:.0f}s:\n{tail(log_path)}")
        time.sleep(0.05)


def start_web(ctx: Context, extra_env: dict | None = None, port: int | None = None) -> subprocess.Popen:
    """gunicorn with the product's config (docker/gunicorn.conf.py: limits, torch threads per worker, models loaded
    when a worker boots), the benchmark's bind, workers and threads; returns once every worker has its models."""
    args = ctx.args
    ctx.web_port = port or free_port()
    log_path = ctx.logs / "gunicorn.log"
    env = dict(ctx.env, LOG_LEVEL="WARNING", WEB_CONCURRENCY=str(args.web_workers), WEB_THREADS=str(args.threads))
    env["GUNICORN_ACCESS_LOG"] = ""  # the access log, when wanted, goes to its own file (below)
    if args.web_torch_threads:
        env["WEB_TORCH_THREADS"] = str(args.web_torch_threads)
    env.update(extra_env or {})
    argv = [
        str(VENV_BIN / "gunicorn"),
        "webapp.wsgi:application",
        "-c",
        str(GUNICORN_CONF),
        "--bind",
        f"127.0.0.1:{ctx.web_port}",
        "--workers",
        str(args.web_workers),
        "--threads",
        str(args.threads),
        "--timeout",
        "120",
        "--error-logfile",
        str(log_path),
    ]
    if args.access_log:
        argv += ["--access-logfile", str(ctx.logs / "access.log")]
    offset = log_path.stat().st_size if log_path.exists() else 0
    process = ctx.stack.start("gunicorn", argv, env, log_path, stop_signal=signal.SIGINT)  # quick shutdown
    wait_port(ctx.web_port, 90, process, log_path)
    ready_s = None
    if env.get("WEB_PRELOAD_MODELS", "1") != "0":
        ready_s = wait_workers_ready(log_path, offset, args.web_workers, 180, process)
    ctx.sessions["gunicorn"] = process.pid
    log(
        f"gunicorn on 127.0.0.1:{ctx.web_port}: {args.web_workers} workers x {args.threads} threads"
        + (f", models loaded in every worker {ready_s:.1f}s after the port opened" if ready_s is not None else "")
    )
    return process


def setup_django(ctx: Context) -> None:
    """Django in this process, on the benchmark's database and vector store (for the public services)."""
    os.environ.update(ctx.env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    ctx.settings = settings


VISNET_DEFAULT = ROOT / "models" / "visnet-default"


def serve_default_model(ctx: Context) -> None:
    """The model `make run` serves: the shipped VisNet, activated on the still empty catalog (nothing to re-embed,
    so synchronously), else the ImageNet stand-in when the artifact is missing."""
    manage(ctx, "ensure_default_model")
    if (VISNET_DEFAULT / "config.json").exists():
        manage(ctx, "register_model", str(VISNET_DEFAULT), "--activate", "--if-not-active", "--sync", timeout=900)
    else:
        log(f"warning: {VISNET_DEFAULT} is missing: the ImageNet stand-in serves")


def start_stack(ctx: Context) -> None:
    """Milvus, the database (migrate + the default model version, as `make run` does), workers and web."""
    start_milvus(ctx)
    ctx.env = make_env(ctx)
    if needs_localize(ctx.args):
        use_detector(ctx)
    log("migrate ...")
    manage(ctx, "migrate", "--noinput")
    serve_default_model(ctx)
    setup_django(ctx)
    start_worker(ctx)
    if needs_localize(ctx.args):
        start_localize_worker(ctx)
    start_web(ctx)


def wait_machine_quiet(ctx: Context) -> None:
    """Other processes (a test suite, a dev server) skew every number: wait, bounded, for a quiet machine."""
    limit, threshold = ctx.args.wait_idle, ctx.args.idle_threshold
    t0 = time.monotonic()
    while True:
        b0 = machine_busy()
        time.sleep(3)
        b1 = machine_busy()
        busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if busy <= threshold or time.monotonic() - t0 >= limit:
            break
        log(f"machine {busy * 100:.0f}% busy before the start (other processes); waiting up to {limit:.0f}s ...")
    ctx.results["busy_before_start"] = busy
    if busy > threshold:
        ctx.note(
            f"The machine was already {busy * 100:.0f}% busy (processes not started by "
            f"the benchmark) when it started; numbers are pessimistic."
        )
    log(f"machine {busy * 100:.0f}% busy before the start")


def wait_milvus_idle(ctx: Context) -> float:
    """Milvus Lite compacts and builds HNSW indexes in a background thread: wait until its CPU goes quiet."""
    assert ctx.milvus is not None
    t0 = time.monotonic()
    quiet = 0
    last = session_cpu_seconds({"m": ctx.milvus.pid})["m"]
    while time.monotonic() - t0 < ctx.args.settle_timeout:
        time.sleep(1.0)
        now = session_cpu_seconds({"m": ctx.milvus.pid})["m"]
        quiet = quiet + 1 if now - last < 0.05 else 0
        last = now
        if quiet >= 3:
            return time.monotonic() - t0
    ctx.note(f"Milvus Lite was still busy (index build) after {ctx.args.settle_timeout}s.")
    return time.monotonic() - t0
