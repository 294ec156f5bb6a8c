"""Serving at scale: `python -m benchmarks.scale [--sizes 10000,100000,1000000] [--only STEPS]`.

For each catalog size N a persistent catalog is built once and reused (`--rebuild` starts it again): PostgreSQL
database `visnet_scale_<N>`, a real Milvus standalone server (scripts/milvus_standalone.py; HNSW by default) and
files under var/scale-<N>/. The build: migrate, register and activate the shipped VisNet (models/visnet-default),
load BASE Fashion-MNIST demo items and ingest them with the product's ingest service (real embeddings), bulk-create
the rest as perturbed copies (benchmarks/catalog_scale.gallery_fill: image rows pointing at the real files, vectors
in `vector_row()` format), flush, wait for Milvus to index every row, then build every product's similar list with
the product's build job (webapp.recommendations.services.similar_lists_build). Every step is timed and sized; a step
already done is skipped on a re-run (var/scale-<N>/build.json).

Then, with gunicorn on the product's config (docker/gunicorn.conf.py; DATABASE_URL to that database, MILVUS_URI to
the standalone, CACHE_URL to Redis db 12) and one `localize` worker:
- threads:   search by photo at c=1 and c=4 with 1 and 2 torch threads per worker, 2 workers (first size only);
- coldstart: the first search after a gunicorn restart, models loaded on first use vs when the worker boots;
- similar:   GET /api/products/{id}/similar/ under wrk: a hot set, Zipf and uniform over every product;
- search:    POST /api/search/ with street-like JPEGs at c=1 and c=4, stages from Server-Timing;
- page:      the product page's HTML at c=8.
Each size runs in its own process (Django binds one database per process); the parent writes docs/scale.json,
docs/scale.md and docs/scale_latency.png from var/scale-*/results.json, so sizes can be run one at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from benchmarks import at_scale
from benchmarks.harness import (
    DOCS,
    ROOT,
    BenchError,
    Context,
    cpu_shares,
    log,
)

SIZES = (10_000, 100_000, 1_000_000)
STEPS = ("build", "threads", "coldstart", "similar", "search", "page")
PG_SERVER = "postgres://postgres@127.0.0.1:5432"
CACHE_URL = "redis://127.0.0.1:6379/12"
# This benchmark's ports (its range: 19600-19699, 9600-9699, 2600-2699, 8600-8699), 20 apart per size so two sizes
# can be up at once (one building while another is measured).
MILVUS_PORT, MILVUS_METRICS_PORT, ETCD_PORT, MILVUS_INTERNAL_PORTS, WEB_PORT = 19600, 9600, 2600, 19610, 8600


def port_offset(size: int) -> int:
    return 20 * (SIZES.index(size) if size in SIZES else 3 + len(str(size)) % 2)


VISNET = ROOT / "models" / "visnet-default"
SIMILAR_PATH = "/api/products/{}/similar/?k=12"
PAGE_PATH = "/products/{}/"


class ScaleContext(Context):
    """The run context of one size: its ports and the photos searched."""

    def __init__(self, args: argparse.Namespace, size: int):
        super().__init__(args)
        self.port_offset = port_offset(size)
        self.photo_requests: tuple[list[bytes], list[tuple[bytes, set[str]]]] = ([], [])


def var_dir(size: int) -> Path:
    return ROOT / "var" / f"scale-{size}"


def database_name(size: int) -> str:
    return f"visnet_scale_{size}"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------------------------
# Services this benchmark starts: PostgreSQL database, Milvus standalone
# --------------------------------------------------------------------------------------------
def ensure_database(name: str, drop: bool = False) -> None:
    import psycopg

    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists and drop:
            conn.execute(f'drop database "{name}" with (force)')
            exists = None
        if not exists:
            conn.execute(f'create database "{name}"')


def start_milvus(ctx: ScaleContext, data_dir: Path):
    sys.path.insert(0, str(ROOT))
    from scripts.milvus_standalone import start

    t0 = time.monotonic()
    offset = ctx.port_offset
    server = start(
        data_dir,
        MILVUS_PORT + offset,
        metrics_port=MILVUS_METRICS_PORT + offset,
        etcd_port=ETCD_PORT + offset,
        etcd_peer_port=ETCD_PORT + offset + 1,
        internal_ports=MILVUS_INTERNAL_PORTS + offset,
        log_path=ctx.logs / "milvus.log",
        timeout=300,
    )
    ctx.sessions["milvus"] = server.pid  # its own session (start_new_session): the CPU meter follows it
    log(f"Milvus standalone on {server.uri} (pid {server.pid}) in {time.monotonic() - t0:.1f}s, data {data_dir}")
    return server


def scale_env(ctx: ScaleContext, size: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MEDIA_ROOT", "STATIC_ROOT", "CELERY_BROKER_DIR", "MILVUS_TOKEN", "MILVUS_ALIAS"):
        env.pop(key, None)
    env.update(
        VAR_DIR=str(ctx.var_dir),
        DATABASE_URL=f"{PG_SERVER}/{database_name(size)}",
        MILVUS_URI=f"http://127.0.0.1:{MILVUS_PORT + ctx.port_offset}",
        MILVUS_ENGINE="standalone",
        MILVUS_INDEX_TYPE=ctx.args.index_type,
        MILVUS_COLLECTION_PREFIX="products",
        CACHE_URL=ctx.args.cache_url,
        CELERY_BROKER_URL="filesystem://",
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="bench-only-" + uuid.uuid4().hex,
        YOLO_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
        MPLBACKEND="Agg",
        SEARCH_THROTTLE_RATE="",
        UPLOAD_THROTTLE_RATE="",
    )
    return env


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------
class BuildRecord:
    """var/scale-<N>/build.json: what each finished step took; a finished step is skipped next time."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.exists() else {"steps": {}}

    def done(self, step: str) -> bool:
        return step in self.data["steps"]

    def record(self, step: str, **values) -> None:
        self.data["steps"][step] = values
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def _sizes(store) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("select pg_database_size(current_database())")
        db_bytes = cursor.fetchone()[0]
        tables = {}
        for table in ("catalog_product", "catalog_productimage", "recommendations_similarlist"):
            cursor.execute("select pg_total_relation_size(%s)", [table])
            tables[table] = cursor.fetchone()[0]
    return {
        "postgres_db_bytes": db_bytes,
        "postgres_table_bytes": tables,
        "milvus_dir_bytes": _du(Path(os.environ["VAR_DIR"]) / "milvus"),
        "vectors": store.count(),
    }


# What a result written before the index parameters were recorded ran with (the product's HNSW defaults then).
OLD_PARAMS = ("M=16, efConstruction=200", "ef=128")


def analyze_tables() -> float:
    """ANALYZE after the bulk load, as autovacuum would (it is off on some machines, this one included): without
    statistics PostgreSQL plans a 13-row image lookup of a 1M-row table as a parallel scan, two worker processes
    started per request (measured: 10 ms and about 5 ms of CPU per similar-products cache miss)."""
    from django.db import connection

    t0 = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return time.monotonic() - t0


def _index_progress(store) -> dict:
    """indexed / total / pending rows of the active collection's vector index (what Milvus reports)."""
    name = store.active_collection()
    info = store._call("describe_index", name, "vector")  # no public adapter call for index progress (yet)
    return {key: info.get(key) for key in ("index_type", "indexed_rows", "total_rows", "pending_index_rows", "state")}


def wait_indexed(store, expected: int, timeout: float) -> dict:
    """Until Milvus reports every row indexed (no pending rows, at least `expected` indexed)."""
    t0 = time.monotonic()
    last_log = 0.0
    while True:
        progress = _index_progress(store)
        indexed, pending = int(progress["indexed_rows"] or 0), int(progress["pending_index_rows"] or 0)
        if pending == 0 and indexed >= expected:
            return progress | {"waited_s": time.monotonic() - t0}
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"Milvus had not indexed every row after {timeout:.0f}s: {progress}")
        if time.monotonic() - last_log > 15:
            last_log = time.monotonic()
            log(f"  index: {indexed:,} indexed, {pending:,} pending of {expected:,} ({progress['state']})")
        time.sleep(1.0)


def _ingest_base(base: int) -> dict:
    """Ingest the demo items still pending with the product's ingest service (decode, thumbnail, embed with the
    active VisNet, upsert), in this process, 32 images per call as the worker's tasks do."""
    from webapp.catalog.models import ProductImage
    from webapp.search.services import images_ingest

    pending = list(ProductImage.objects.filter(status="pending").order_by("pk").values_list("pk", flat=True))
    t0 = time.monotonic()
    for start in range(0, len(pending), 32):
        images_ingest(image_ids=pending[start : start + 32])
        if start % 640 == 0:
            log(f"  ingested {start + 32:,}/{len(pending):,}")
    seconds = time.monotonic() - t0
    ready = ProductImage.objects.filter(status="ready").count()
    return {
        "images": len(pending),
        "ready": ready,
        "seconds": seconds,
        "images_per_s": len(pending) / max(seconds, 1e-9),
    }


def build(ctx: Context, size: int) -> dict:
    from benchmarks.stack import manage, setup_django

    args = ctx.args
    record = BuildRecord(ctx.var_dir / "build.json")
    record.data.update(size=size, index_type=args.index_type, base=args.base, noise=args.noise)
    t_step = time.monotonic()
    if not record.done("migrate"):
        manage(ctx, "migrate", "--noinput")
        record.record("migrate", seconds=time.monotonic() - t_step)
    if not record.done("model"):
        t_step = time.monotonic()
        out = manage(ctx, "register_model", str(VISNET), "--activate", "--sync", timeout=900)
        record.record("model", seconds=time.monotonic() - t_step, output=out.strip().splitlines()[-3:])
    if not record.done("demo_catalog"):
        t_step = time.monotonic()
        manage(ctx, "load_demo_catalog", "--size", str(args.base), timeout=900)
        record.record("demo_catalog", seconds=time.monotonic() - t_step, items=args.base)
    setup_django(ctx)
    from webapp.catalog.models import Product
    from webapp.search.registry import active_version, get_vector_store

    store = get_vector_store()
    version = active_version(fresh=True)
    if version is None or version.model_version != (VISNET / "model_version").read_text().strip():
        raise BenchError(f"the active version is {version}, not {VISNET.name}'s")
    record.data["model_version"] = version.model_version
    if not record.done("ingest"):
        log(f"ingest: the {args.base:,} demo items with the product's ingest service ...")
        record.record("ingest", **_ingest_base(args.base))
    if args.build_until == "ingest":
        log("--build-until ingest: stopping here (the light steps are done)")
        return record.data
    if not record.done("gallery"):
        from benchmarks.catalog_scale import gallery_fill

        log(f"gallery: filling to {size:,} products ...")
        t_step = time.monotonic()
        filled = gallery_fill(store, target=size, noise=args.noise)
        t_flush = time.monotonic()
        store.flush()
        record.record(
            "gallery",
            **filled,
            flush_s=time.monotonic() - t_flush,
            seconds=time.monotonic() - t_step,
            products=Product.objects.count(),
        )
    if not record.done("index"):
        log("index: waiting for Milvus to index every row ...")
        products = Product.objects.count()
        progress = wait_indexed(store, products, timeout=args.index_timeout)
        record.record("index", **progress, seconds=progress["waited_s"])
    if not record.done("similar_lists"):
        lists = build_similar_lists(version, budget=args.lists_budget)
        if lists["state"] != "done":
            record.data["similar_lists_partial"] = lists
            record.path.write_text(json.dumps(record.data, indent=1, default=str))
            log(f"--lists-budget {args.lists_budget:.0f}s spent: the build stops here (a re-run resumes it)")
            return record.data
        record.record("similar_lists", **lists)
    if not record.done("analyze"):
        record.record("analyze", seconds=analyze_tables())
    if not record.done("sizes"):
        record.record("sizes", **_sizes(store))
    record.data["complete"] = True
    record.path.write_text(json.dumps(record.data, indent=1, default=str))
    return record.data


def build_similar_lists(version, budget: float | None = None) -> dict:
    """The product's build job for every product's list, in this process, timed; progress every ~30 s. With a
    `budget` (seconds) it stops once that is spent (the job keeps its cursor: the next call resumes)."""
    from webapp.recommendations.models import SimilarList, SimilarListBuild
    from webapp.recommendations.services import similar_lists_build, similar_lists_build_start

    job = SimilarListBuild.objects.filter(version=version).first()
    if job is not None and job.state in (SimilarListBuild.State.QUEUED, SimilarListBuild.State.RUNNING) and job.cursor:
        log(f"similar lists: resuming the interrupted build at product id {job.cursor} ({job.done:,} done)")
    else:
        similar_lists_build_start(version=version, queue=False)
    log("similar lists: building every product's list with similar_lists_build ...")
    before = SimilarListBuild.objects.get(version=version).done
    t0, cpu0 = time.monotonic(), sum(os.times()[:2])
    while not similar_lists_build(version=version, time_budget=30):
        job = SimilarListBuild.objects.get(version=version)
        elapsed = time.monotonic() - t0
        rate = (job.done - before) / max(elapsed, 1e-9)
        log(f"  {job.done:,}/{job.total:,} products in {elapsed:.0f}s ({rate:.0f} products/s)")
        if budget is not None and elapsed > budget:
            break
    seconds = time.monotonic() - t0
    job = SimilarListBuild.objects.get(version=version)
    lists = SimilarList.objects.filter(version=version).count()
    rate = (job.done - before) / max(seconds, 1e-9)
    log(f"similar lists: {lists:,} lists, {job.done - before:,} built in {seconds:.0f}s ({rate:.0f} products/s)")
    return {
        "seconds": seconds,
        "products": job.done,
        "resumed_from": before,
        "lists": lists,
        "products_per_s": rate,
        "builder_cpu_s": sum(os.times()[:2]) - cpu0,
        "state": job.state,
        "total": job.total,
    }


# --------------------------------------------------------------------------------------------
# The web tier
# --------------------------------------------------------------------------------------------
def restart_web(ctx: ScaleContext, **env: str):
    """Stop the running gunicorn (if any) and start it again with `env` (WEB_TORCH_THREADS, WEB_PRELOAD_MODELS)."""
    from benchmarks.stack import start_web

    stop_web(ctx)
    return start_web(ctx, extra_env=env, port=WEB_PORT + ctx.port_offset)


def stop_web(ctx: Context) -> None:
    for entry in [e for e in ctx.stack.procs if e[0] == "gunicorn"]:
        _, process, handle = entry
        ctx.stack.stop(process)
        handle.close()
        ctx.stack.procs.remove(entry)


def _photo_requests(ctx: Context) -> tuple[list[bytes], list[tuple[bytes, set[str]]]]:
    from benchmarks.loadgen import multipart_request
    from benchmarks.search import _photos

    photos = _photos(ctx)
    return [
        multipart_request("/api/search/", "image", f"street-{n}.jpg", content, "image/jpeg")
        for n, (content, _) in enumerate(photos)
    ], photos


def _search_runs(ctx: ScaleContext, label: str) -> dict:
    """POST /api/search/ (the product's request: localized) at c=1 on one keep-alive connection, then at c=4."""
    from benchmarks.search import _concurrent, _log_stages, _sequential

    raws, photos = ctx.photo_requests
    out = {}
    load0 = loadavg()
    sequential = _sequential(ctx, {"localized": raws}, photos)["localized"]
    sequential["loadavg"] = [load0, loadavg()]
    log(
        f"search {label} c=1: p50 {sequential['p50']:.0f} / p99 {sequential['p99']:.0f} ms, "
        f"{sequential['errors']} errors"
    )
    _log_stages("c=1", sequential)
    out["c1"] = sequential
    load0 = loadavg()
    concurrent = _concurrent(ctx, "localized", raws)
    concurrent["loadavg"] = [load0, loadavg()]
    log(f"search {label} c={ctx.args.search_concurrency}: p50 {concurrent['p50']:.0f} / p99 {concurrent['p99']:.0f} ms")
    _log_stages(f"c={ctx.args.search_concurrency}", concurrent)
    out["c4"] = concurrent
    for run in out.values():
        run.pop("latencies_s", None)
        run.pop("timings", None)
    return out


def step_threads(ctx: ScaleContext) -> dict:
    """Search latency with 1 and 2 torch threads per worker (2 workers), c=1 and c=4."""
    results = {}
    for threads in ctx.args.thread_options:
        restart_web(ctx, WEB_TORCH_THREADS=str(threads))
        results[str(threads)] = _search_runs(ctx, f"(torch threads {threads} per worker)")
    restart_web(ctx)  # the product's default again
    return results


def _first_search(ctx: Context, raw: bytes) -> dict:
    """One search on a fresh connection: status, client latency and the answer's Server-Timing stages."""
    import re

    from benchmarks.loadgen import KeepAlive
    from benchmarks.search import parse_server_timing

    head, _, body = raw.partition(b"\r\n\r\n")
    match = re.search(rb"Content-Type: (multipart[^\r]+)", head)
    assert match is not None
    client = KeepAlive(ctx.web_port, timeout=120)
    try:
        t0 = time.perf_counter()
        status, _ = client.request("POST", "/api/search/", body=body, headers={"Content-Type": match.group(1).decode()})
        elapsed_ms = (time.perf_counter() - t0) * 1000
        stages = parse_server_timing(client.last_headers.get("server-timing"))
    finally:
        client.close()
    return {"status": status, "ms": elapsed_ms, "stages": stages}


def step_coldstart(ctx: ScaleContext) -> dict:
    """Restart gunicorn and time the first searches: models loaded on first use (WEB_PRELOAD_MODELS=0) against
    models loaded when a worker boots (the product's default). The clock starts at the restart; the first search is
    sent as soon as a worker answers HTTP (GET /health/, any status), then one more per worker on fresh connections."""
    from benchmarks.loadgen import get_request, http_call
    from benchmarks.stack import start_web

    raws, _ = ctx.photo_requests
    results: dict = {}
    for mode, preload in (("lazy", "0"), ("preload", "1")):
        runs = []
        for attempt in range(ctx.args.coldstart_repeats):
            stop_web(ctx)
            t_restart = time.perf_counter()
            # start_web waits for the preloading workers; for the cold run it returns once the port is open.
            start_web(ctx, extra_env={"WEB_PRELOAD_MODELS": preload}, port=WEB_PORT + ctx.port_offset)
            while True:
                try:
                    status, _ = http_call(ctx.web_port, get_request("/health/", close=True), timeout=60)
                    break
                except OSError:
                    time.sleep(0.05)
            answered_s = time.perf_counter() - t_restart
            first = _first_search(ctx, raws[attempt % len(raws)])
            following = [
                _first_search(ctx, raws[(attempt + i) % len(raws)]) for i in range(1, 1 + ctx.args.web_workers)
            ]
            runs.append(
                {
                    "worker_answers_s": answered_s,
                    "first_search_ms": first["ms"],
                    "first_status": first["status"],
                    "first_stages": first["stages"],
                    "next_stages": [f["stages"] for f in following],
                    "next_searches_ms": [f["ms"] for f in following],
                    "restart_to_first_result_s": answered_s + first["ms"] / 1000,
                }
            )
            log(
                f"coldstart {mode} #{attempt + 1}: a worker answered {answered_s:.1f}s after the restart; first search "
                f"{first['ms']:.0f} ms ({first['status']}; {first['stages']}), "
                f"next {[round(f['ms']) for f in following]} ms"
            )
        results[mode] = {
            "runs": runs,
            "first_search_ms_median": sorted(r["first_search_ms"] for r in runs)[len(runs) // 2],
            "worst_of_first_searches_ms": max(max([r["first_search_ms"], *r["next_searches_ms"]]) for r in runs),
        }
    return results


# --------------------------------------------------------------------------------------------
# Similar products under wrk
# --------------------------------------------------------------------------------------------
WRK_SCRIPT = """
local paths = {%s}
local counter = 1
function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
end
function init(args)
  i = offset or 0
end
function request()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["Accept"] = "text/html"})
end
function done(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, "write": %%d, '
    .. '"status": %%d, "timeout": %%d, "p50": %%d, "p90": %%d, "p99": %%d, "max": %%d, "mean": %%f}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def id_sequence(
    product_ids: list[int], distribution: str, n: int, hot: int, seed: int = 5, zipf_s: float = 1.0
) -> list[int]:
    """`n` product ids drawn from `distribution`: hot (uniform over `hot` products), zipf (s=`zipf_s` over every
    product, the ranks in a random order), uniform (over every product)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.asarray(product_ids)
    if distribution == "hot":
        return [int(x) for x in rng.choice(rng.permutation(ids)[:hot], n)]
    if distribution == "uniform":
        return [int(x) for x in rng.choice(ids, n)]
    if distribution == "zipf":
        ranks = np.arange(1, len(ids) + 1, dtype=np.float64)
        weights = ranks**-zipf_s
        picks = rng.choice(len(ids), n, p=weights / weights.sum())
        return [int(x) for x in rng.permutation(ids)[picks]]
    raise ValueError(distribution)


def wrk_run(ctx: Context, paths: list[str], connections: int, duration: float, label: str) -> dict:
    script = ctx.var_dir / f"wrk-{label}.lua"
    script.write_text(WRK_SCRIPT % ", ".join(f'"{p}"' for p in paths))
    argv = [
        "wrk",
        "-t",
        str(ctx.args.wrk_threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:.0f}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{ctx.web_port}",
    ]
    meter = ctx.cpu_meter()
    load0 = loadavg()
    t0 = time.monotonic()
    wrk = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - t0
    usage = meter.stop()
    line = next((x for x in wrk.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise BenchError(f"wrk gave no result: {wrk.stdout[-500:]} {wrk.stderr[-500:]}")
    raw = json.loads(line[len("WRKJSON ") :])
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    result = {
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50": raw["p50"] / 1000,
        "p90": raw["p90"] / 1000,
        "p99": raw["p99"] / 1000,
        "max": raw["max"] / 1000,
        "mean": raw["mean"] / 1000,
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
        "bytes_per_response": raw["bytes"] / max(1, raw["requests"]),
        "connections": connections,
        "duration_s": wall,
        "cpu_cores": cpu_shares(usage),
        "machine_busy": usage["machine_busy"],
        "loadavg": [load0, loadavg()],
    }
    log(
        f"{label}: {result['rps']:.0f} req/s, p50 {result['p50']:.1f} / p90 {result['p90']:.1f} / p99 "
        f"{result['p99']:.1f} ms, {errors} errors; cores used "
        + ", ".join(f"{name} {cores:.2f}" for name, cores in result["cpu_cores"].items() if cores >= 0.01)
    )
    return result


def step_similar(ctx: Context, product_ids: list[int]) -> dict:
    """The similar API under helper serve's load generator (benchmarks/serving_load.py: wrk walking a seeded id
    sequence per mix, a warm-up pass first), against this size's gunicorn."""
    from benchmarks import serving_load
    from benchmarks.loadgen import get_request, http_call

    args = ctx.args
    status, body = http_call(ctx.web_port, get_request(SIMILAR_PATH.format(product_ids[0])))
    if status != 200 or not json.loads(body).get("results"):
        raise BenchError(f"GET similar -> {status}: {body[:300]!r}")
    load_args = argparse.Namespace(
        mix=args.distributions,
        hot=args.hot_set,
        zipf_s=args.zipf_s,
        seed=0,
        connections=args.similar_connections,
        threads=args.wrk_threads,
        warmup=args.similar_warmup,
        duration=args.similar_duration,
        query="k=12",
        target_rps=2000.0,
        target_p99_ms=100.0,
    )
    runs = serving_load.measure_mixes(
        load_args, f"http://127.0.0.1:{ctx.web_port}", sorted(product_ids), dict(ctx.sessions), "similar"
    )
    results: dict = {"response_bytes": len(body), "tool": "benchmarks/serving_load.py", "zipf_s": args.zipf_s}
    for run in runs:
        latency = run["latency_ms"]
        results[run["mix"]] = {
            "requests": run["requests"],
            "rps": run["rps"],
            "p50": latency["p50"],
            "p90": latency["p90"],
            "p99": latency["p99"],
            "max": latency["max"],
            "mean": latency["mean"],
            "errors": run["error_count"],
            "error_kinds": {k: v for k, v in run["errors"].items() if v},
            "connections": run["connections"],
            "cpu_cores": run["cores_used"],
            "machine_busy": run["machine_busy"],
            "other_cores": run["other_cores"],
            "loadavg": [run["loadavg_start"], run["loadavg_end"]],
            "distinct_ids": run["sequence"]["distinct_ids"],
            "meets_target": run["meets_target"],
        }
    return results


def step_page(ctx: Context, product_ids: list[int]) -> dict:
    args = ctx.args
    ids = id_sequence(product_ids, "zipf", args.wrk_paths, args.hot_set, seed=9, zipf_s=args.zipf_s)
    return wrk_run(ctx, [PAGE_PATH.format(i) for i in ids], 8, args.page_duration, "page-zipf-c8")


# --------------------------------------------------------------------------------------------
# One size, in its own process
# --------------------------------------------------------------------------------------------
def run_size(args: argparse.Namespace, size: int) -> int:
    from benchmarks.report import machine_description

    args.var_dir = str(var_dir(size))
    ctx = ScaleContext(args, size)
    ctx.logs.mkdir(parents=True, exist_ok=True)
    if args.rebuild:
        log(f"--rebuild: dropping {database_name(size)} and {ctx.var_dir}")
        ensure_database(database_name(size), drop=True)
        shutil.rmtree(ctx.var_dir)
        ctx.logs.mkdir(parents=True, exist_ok=True)
    else:
        ensure_database(database_name(size))
    steps = args.steps
    results_path = ctx.var_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(
        size=size,
        machine=machine_description(),
        cache=args.cache_url,
        index_type=args.index_type,
        index_build_params=os.environ.get("MILVUS_INDEX_BUILD_PARAMS") or "the product's defaults",
        index_search_params=os.environ.get("MILVUS_INDEX_SEARCH_PARAMS") or "the product's defaults",
    )
    server = start_milvus(ctx, ctx.var_dir / "milvus")
    try:
        ctx.env = scale_env(ctx, size)
        t0 = time.monotonic()
        results["build"] = build(ctx, size)  # skips every step already done
        results["build"]["this_run_s"] = time.monotonic() - t0
        if set(steps) - {"build"}:
            measure(ctx, size, steps, results)
    finally:
        results["finished"] = dt.datetime.now(dt.UTC).isoformat()
        results_path.write_text(json.dumps(results, indent=1, default=str))
        ctx.stack.stop_all()
        server.stop(timeout=30)
        log(f"size {size:,}: results in {results_path.relative_to(ROOT)}")
    return 0


def measure(ctx: ScaleContext, size: int, steps: list[str], results: dict) -> None:
    from benchmarks import stack
    from webapp.catalog.models import Product

    args = ctx.args
    stack.use_detector(ctx)  # DETECTOR_ARTIFACT_DIR for the localize worker
    stack.start_localize_worker(ctx)
    restart_web(ctx)
    ctx.photo_requests = _photo_requests(ctx)
    product_ids = list(Product.objects.order_by("pk").values_list("pk", flat=True))
    random.Random(3).shuffle(product_ids)
    results["web"] = {
        "workers": args.web_workers,
        "threads": args.threads,
        "torch_threads_per_worker": _torch_threads_default(args.web_workers),
        "cache": args.cache_url,
        "config": "docker/gunicorn.conf.py",
    }
    warm = _first_search(ctx, ctx.photo_requests[0][0])  # the localize worker loads its detector here
    log(f"first search (localize worker loading its detector): {warm['ms']:.0f} ms ({warm['status']})")
    runs = results.setdefault("runs", {})
    for step in steps:
        if step == "build":
            continue
        log(f"=== {step} at {size:,} products (load average {loadavg()}) ===")
        runs[step + "_loadavg_start"] = loadavg()
        if step == "threads":
            runs["threads"] = step_threads(ctx)
        elif step == "coldstart":
            runs["coldstart"] = step_coldstart(ctx)
            restart_web(ctx)
        elif step == "similar":
            runs["similar"] = step_similar(ctx, product_ids)
        elif step == "search":
            runs["search"] = _search_runs(ctx, f"at {size:,} products")
        elif step == "page":
            runs["page"] = step_page(ctx, product_ids)
        runs[step + "_loadavg_end"] = loadavg()


def _torch_threads_default(workers: int) -> int:
    return int(
        os.environ.get("WEB_TORCH_THREADS")
        or os.environ.get("TORCH_NUM_THREADS")
        or max(1, (os.cpu_count() or 1) // max(1, workers))
    )


# --------------------------------------------------------------------------------------------
# Arguments and the parent
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="catalog sizes, comma-separated")
    parser.add_argument("--only", default="", help=f"steps, comma-separated (default all): {','.join(STEPS)}")
    parser.add_argument("--rebuild", action="store_true", help="drop the size's database and files and build again")
    parser.add_argument("--report-only", action="store_true", help="write docs/scale.* from var/scale-*/results.json")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--base", type=int, default=2000, help="real Fashion-MNIST items ingested (embedded)")
    parser.add_argument("--noise", type=float, default=0.3, help="norm of the noise added to copied vectors")
    parser.add_argument(
        "--index-type",
        default="HNSW",
        help="MILVUS_INDEX_TYPE of the collection (the product's default on a server)",
    )
    parser.add_argument("--index-timeout", type=float, default=3600.0)
    parser.add_argument(
        "--lists-budget",
        type=float,
        default=None,
        help="seconds the similar-list build may run in this invocation (it resumes on the next)",
    )
    parser.add_argument(
        "--build-until",
        choices=["ingest"],
        default=None,
        help="stop the build after the light steps (migrate, model, demo catalog, ingest), e.g. outside the lock",
    )
    parser.add_argument("--cache-url", default=CACHE_URL, help="CACHE_URL for gunicorn (Redis db 12)")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--thread-options", default="1,2", help="torch threads per worker compared by `threads`")
    parser.add_argument("--coldstart-repeats", type=int, default=3)
    parser.add_argument("--search-requests", type=int, default=60)
    parser.add_argument("--search-concurrency", type=int, default=4)
    parser.add_argument("--search-timeout", type=float, default=120.0)
    parser.add_argument("--distributions", default="hot,zipf,uniform")
    parser.add_argument("--hot-set", type=int, default=1000, help="products in the hot set")
    parser.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of the zipf mix")
    parser.add_argument("--wrk-paths", type=int, default=50_000, help="request paths drawn per distribution")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--similar-connections", type=int, default=32)
    parser.add_argument("--similar-duration", type=float, default=20.0)
    parser.add_argument("--similar-warmup", type=float, default=10.0)
    parser.add_argument("--page-duration", type=float, default=10.0)
    parser.add_argument("--detector", default="models/detector-default")
    parser.add_argument("--localize-torch-threads", type=int, default=1)
    parser.add_argument("--broker-url", default="filesystem://")
    parser.add_argument("--worker-prefetch", type=int, default=None)
    parser.add_argument("--web-torch-threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--access-log", action="store_true", help="gunicorn access log (off: it costs CPU at load)")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.sizes_list = [int(s) for s in args.sizes.split(",") if s]
    args.steps = [s for s in (args.only.split(",") if args.only else STEPS) if s]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; known: {STEPS}")
    args.thread_options = [int(t) for t in args.thread_options.split(",")]
    args.distributions = [d for d in args.distributions.split(",") if d]
    args.ingest = args.base  # benchmarks.search._photos picks the photos' items among the ingested ones
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if args.size is not None:
        try:
            return run_size(args, args.size)
        except BenchError as exc:
            log(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            log("interrupted")
            return 130
    status = 0
    if not args.report_only:
        for size in args.sizes_list:
            log(f"===== {size:,} products =====")
            code = subprocess.call([sys.executable, "-m", "benchmarks.scale", *argv, "--size", str(size)], cwd=ROOT)
            if code != 0:
                log(f"size {size:,} failed ({code})")
                status = code
    if not args.no_report:
        paths = write_report(argv)
        log("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in paths))
    return status


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def collected_results() -> list[dict]:
    """Every size's results: var/scale-N/results.json where this checkout ran it, else the size as docs/scale.json
    last reported it (a fresh checkout has no var/, and the report must not forget what was measured)."""
    found: dict[int, dict] = {}
    with contextlib.suppress(OSError, ValueError):
        for result in json.loads((DOCS / "scale.json").read_text()).get("sizes", []):
            found[result["size"]] = result | {"reported_from": "docs/scale.json"}
    for path in sorted((ROOT / "var").glob("scale-*/results.json")):
        with contextlib.suppress(ValueError, json.JSONDecodeError):
            result = json.loads(path.read_text())
            found[result["size"]] = result
    return [found[size] for size in sorted(found)]


def _ms(value) -> str:
    return "-" if value is None or value != value else (f"{value:,.0f}" if value >= 100 else f"{value:.1f}")


def _mb(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MB"


def _s(value) -> str:
    return "-" if value is None else f"{value:,.0f} s" if value >= 10 else f"{value:.1f} s"


def _stage(run: dict, name: str, q: str) -> float | None:
    return (run.get("stages", {}).get(name) or {}).get(q)


def _lists_cell(r: dict) -> str:
    build = r.get("build", {})
    done = build.get("steps", {}).get("similar_lists")
    if done:
        return f"{_s(done['seconds'])} ({done['products_per_s']:,.0f} products/s)"
    partial = build.get("similar_lists_partial")
    if partial:
        return (
            f"partial: {partial['products']:,} of {partial['total']:,} in {_s(partial['seconds'])} "
            f"({partial['products_per_s']:,.0f} products/s)"
        )
    return "-"


def build_rows(results: list[dict]) -> list[str]:
    def step(r, name, key="seconds"):
        return r.get("build", {}).get("steps", {}).get(name, {}).get(key)

    rows = [
        "| catalog | " + " | ".join(f"{r['size']:,}" for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    lines = [
        (
            "ingest the real items (product's ingest service)",
            lambda r: (
                f"{step(r, 'ingest', 'images') or 0:,} in "
                f"{_s(step(r, 'ingest'))} ({step(r, 'ingest', 'images_per_s') or 0:.1f} img/s)"
            ),
        ),
        ("bulk-create products + image rows (PostgreSQL)", lambda r: _s(step(r, "gallery", "db_insert_s"))),
        ("upsert vectors (Milvus, rows of 1,000)", lambda r: _s(step(r, "gallery", "vector_upsert_s"))),
        ("flush", lambda r: _s(step(r, "gallery", "flush_s"))),
        ("index every row (the size's index, see above)", lambda r: _s(step(r, "index"))),
        (
            "similar lists (similar_lists_build, K=60)",
            _lists_cell,
        ),
        ("PostgreSQL database", lambda r: _mb(step(r, "sizes", "postgres_db_bytes"))),
        (
            "· similar lists table",
            lambda r: _mb((step(r, "sizes", "postgres_table_bytes") or {}).get("recommendations_similarlist")),
        ),
        ("Milvus data directory", lambda r: _mb(step(r, "sizes", "milvus_dir_bytes"))),
        (
            "vectors (dim)",
            lambda r: (
                "-"
                if step(r, "sizes", "vectors") is None
                else f"{step(r, 'sizes', 'vectors'):,} ({step(r, 'gallery', 'dim')})"
            ),
        ),
        (
            "mean cosine of a copy to its source",
            lambda r: (
                "-"
                if step(r, "gallery", "mean_cos_to_source") is None
                else f"{step(r, 'gallery', 'mean_cos_to_source'):.3f}"
            ),
        ),
    ]
    for label, cell in lines:
        rows.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return rows


def similar_rows(results: list[dict]) -> list[str]:
    rows = [
        "| catalog | ids requested | req/s | p50 ms | p90 ms | p99 ms | errors | gunicorn cores | Milvus cores | "
        "cores used by processes not in the run | load avg (start → end) | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        similar = r.get("runs", {}).get("similar") or {}
        for distribution in ("hot", "zipf", "uniform"):
            run = similar.get(distribution)
            if not run:
                continue
            met = run["rps"] >= 2000 and run["p99"] <= 100 and run["errors"] == 0
            cores = run["cpu_cores"]
            web, milvus = cores.get("gunicorn", 0.0), cores.get("milvus", 0.0)
            rows.append(
                f"| {r['size']:,} | {distribution} ({run.get('distinct_ids', 0):,} distinct) | {run['rps']:,.0f} | "
                f"{_ms(run['p50'])} | {_ms(run['p90'])} | {_ms(run['p99'])} | {run['errors']} | {web:.2f} | "
                f"{milvus:.2f} | {run.get('other_cores', float('nan')):.2f} | "
                f"{run['loadavg'][0][0]} → {run['loadavg'][1][0]} | "
                f"{'**met**' if met else 'not met'} |"
            )
    return rows


def search_rows(results: list[dict]) -> list[str]:
    rows = [
        "| catalog | concurrency | requests | total p50 / p99 ms | embed p50 / p99 | search (Milvus + catalog) "
        "p50 / p99 | localize (queue) p50 / p99 | · detect p50 / p99 | decode p50 | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        search = r.get("runs", {}).get("search") or {}
        for key, label in (("c1", "1"), ("c4", "4")):
            run = search.get(key)
            if not run:
                continue
            rows.append(
                f"| {r['size']:,} | {label} | {run['ok']} ({run['errors']} errors) | {_ms(run['p50'])} / "
                f"{_ms(run['p99'])} | {_ms(_stage(run, 'embed', 'p50'))} / {_ms(_stage(run, 'embed', 'p99'))} | "
                f"{_ms(_stage(run, 'search', 'p50'))} / {_ms(_stage(run, 'search', 'p99'))} | "
                f"{_ms(_stage(run, 'localize', 'p50'))} / {_ms(_stage(run, 'localize', 'p99'))} | "
                f"{_ms(_stage(run, 'detect', 'p50'))} / {_ms(_stage(run, 'detect', 'p99'))} | "
                f"{_ms(_stage(run, 'decode', 'p50'))} | {run['loadavg'][0][0]} → {run['loadavg'][1][0]} |"
            )
    return rows


def page_rows(results: list[dict]) -> list[str]:
    rows = ["| catalog | req/s | p50 ms | p90 ms | p99 ms | errors | load avg |", "|---|---|---|---|---|---|---|"]
    for r in results:
        run = r.get("runs", {}).get("page")
        if run:
            rows.append(
                f"| {r['size']:,} | {run['rps']:,.0f} | {_ms(run['p50'])} | {_ms(run['p90'])} | {_ms(run['p99'])} | "
                f"{run['errors']} | {run['loadavg'][0][0]} → {run['loadavg'][1][0]} |"
            )
    return rows


def threads_rows(threads: dict) -> list[str]:
    rows = [
        "| torch threads per worker (2 workers) | c=1 total p50 / p99 ms | c=1 embed p50 / p99 | c=4 total p50 / p99 "
        "| c=4 embed p50 / p99 | c=4 req/s | load avg (c=1 start → c=4 end) |",
        "|---|---|---|---|---|---|---|",
    ]
    for threads_n, runs in sorted(threads.items()):
        c1, c4 = runs["c1"], runs["c4"]
        rows.append(
            f"| {threads_n} | {_ms(c1['p50'])} / {_ms(c1['p99'])} | {_ms(_stage(c1, 'embed', 'p50'))} / "
            f"{_ms(_stage(c1, 'embed', 'p99'))} | {_ms(c4['p50'])} / {_ms(c4['p99'])} | "
            f"{_ms(_stage(c4, 'embed', 'p50'))} / {_ms(_stage(c4, 'embed', 'p99'))} | {c4['rps']:.1f} | "
            f"{c1['loadavg'][0][0]} → {c4['loadavg'][1][0]} |"
        )
    return rows


def coldstart_rows(cold: dict) -> list[str]:
    rows = [
        "| models | restart → a worker answers (median) | first search ms (each restart) | slowest of the next "
        "searches ms | restart → first result (median) |",
        "|---|---|---|---|---|",
    ]
    for mode, label in (("lazy", "loaded on first use (before)"), ("preload", "loaded when a worker boots (now)")):
        entry = cold.get(mode)
        if not entry:
            continue
        runs = entry["runs"]
        answered = sorted(r["worker_answers_s"] for r in runs)[len(runs) // 2]
        total = sorted(r["restart_to_first_result_s"] for r in runs)[len(runs) // 2]
        rows.append(
            f"| {label} | {answered:.1f} s | {', '.join(_ms(r['first_search_ms']) for r in runs)} | "
            f"{_ms(max(max(r['next_searches_ms']) for r in runs))} | {total:.1f} s |"
        )
    return rows


def findings(results: list[dict]) -> list[str]:
    """What the tables say, computed from them (nothing here is typed in by hand)."""
    lines = []
    for r in results:
        size, runs = r["size"], r.get("runs", {})
        similar = runs.get("similar") or {}
        parts = []
        for mix in ("hot", "zipf", "uniform"):
            run = similar.get(mix)
            if run:
                web = run["cpu_cores"].get("gunicorn", 0.0)
                parts.append(
                    f"{mix} {run['rps']:,.0f} req/s, p99 {_ms(run['p99'])} ms "
                    f"({web / max(run['rps'], 1e-9) * 1000:.2f} ms of web CPU per request)"
                )
        if parts:
            lines.append(f"- **{size:,} products, similar API**: " + "; ".join(parts) + ".")
        search = (runs.get("search") or {}).get("c1")
        if search and "embed" in search.get("stages", {}):
            st = search["stages"]
            lines.append(
                f"- **{size:,} products, search by photo at c=1**: total p50 {_ms(search['p50'])} ms, of which embed "
                f"{_ms(st['embed']['p50'])} ms and search (Milvus + catalog join) {_ms(st['search']['p50'])} ms; "
                f"localize (the round trip to the localize worker) {_ms(st['localize']['p50'])} ms."
            )
        steps = r.get("build", {}).get("steps", {})
        if not r.get("build", {}).get("complete"):
            done = ", ".join(steps) or "nothing"
            text = f"- **{size:,} products**: the build is not complete (steps done: {done})."
            partial = r.get("build", {}).get("similar_lists_partial")
            if partial and partial.get("products_per_s"):
                rate = partial["products_per_s"]
                text += (
                    f" The similar-list build ran {partial['seconds']:,.0f} s under a time budget: "
                    f"{partial['products']:,} of {partial['total']:,} products at {rate:,.0f} products/s, so the "
                    f"whole catalog needs about {partial['total'] / rate / 60:,.0f} min at that rate."
                )
            complete = [c for c in results if c.get("build", {}).get("complete") and c["size"] < size]
            if complete and not partial:
                ref = complete[-1]
                ref_steps, factor = ref["build"]["steps"], size / ref["size"]
                gallery = ref_steps["gallery"]["db_insert_s"] + ref_steps["gallery"]["vector_upsert_s"]
                sizes = ref_steps["sizes"]
                text += (
                    f" Scaled linearly from the {ref['size']:,} build ({factor:g}x): products + vectors about "
                    f"{gallery * factor / 60:,.0f} min, index about {ref_steps['index']['seconds'] * factor / 60:,.0f} "
                    f"min (more: HNSW grows as n log n), similar lists about "
                    f"{size / ref_steps['similar_lists']['products_per_s'] / 60:,.0f} min at "
                    f"{ref_steps['similar_lists']['products_per_s']:,.0f} products/s; PostgreSQL about "
                    f"{sizes['postgres_db_bytes'] * factor / 2**30:,.1f} GB, Milvus data about "
                    f"{sizes['milvus_dir_bytes'] * factor / 2**30:,.0f} GB on disk. Resume with `flock "
                    f"/work/helpers/bench.lock python -m benchmarks.scale --sizes {size} --only build` (it skips the "
                    "steps done), then `--only similar,search,page`."
                )
            lines.append(text)
    return lines


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}

    def add(name, size, run, p50="p50", p99="p99"):
        if run:
            series.setdefault(name, []).append((size, run[p50], run[p99]))

    for r in results:
        runs, size = r.get("runs", {}), r["size"]
        for distribution in ("hot", "zipf", "uniform"):
            add(f"GET similar, {distribution}", size, (runs.get("similar") or {}).get(distribution))
        for key, label in (("c1", "c=1"), ("c4", "c=4")):
            run = (runs.get("search") or {}).get(key)
            add(f"POST search, {label}, total", size, run)
            if run and "embed" in run.get("stages", {}):
                add(f"· embed, {label}", size, run["stages"]["embed"])
                add(f"· search stage, {label}", size, run["stages"]["search"])
        add("product page, c=8", size, runs.get("page"))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, (index, title) in zip(axes, ((1, "p50"), (2, "p99")), strict=True):
        for name, points in series.items():
            points.sort()
            style = "--" if name.startswith("·") else "-"
            ax.plot([p[0] for p in points], [p[index] for p in points], style, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({r["size"] for r in results})
        ax.set_xticks(sizes, [f"{n // 1000:,}k" if n < 1_000_000 else f"{n / 1e6:g}M" for n in sizes])
        ax.set_xlim(min(sizes) / 2, max(sizes) * 2)
        ax.set_xlabel("catalog size (products)")
        ax.set_title(f"{title} latency")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].axhline(100, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_report(argv: list[str]) -> list[Path]:
    results = collected_results()
    json_path, md_path, png_path = DOCS / "scale.json", DOCS / "scale.md", DOCS / "scale_latency.png"
    json_path.write_text(json.dumps({"argv": argv, "sizes": results}, indent=1, default=str))
    if not results:
        return [json_path]
    machine = results[-1].get("machine", {})
    first = results[0].get("runs", {})
    threads = next((r["runs"]["threads"] for r in results if r.get("runs", {}).get("threads")), None)
    cold = next((r["runs"]["coldstart"] for r in results if r.get("runs", {}).get("coldstart")), None)
    lines = [
        "# Serving at scale",
        "",
        "Generated by `python -m benchmarks.scale` from var/scale-N/results.json of every size run so far (all of "
        "them in docs/scale.json). Each size runs in its own process and can be run alone; the catalogs persist "
        "(PostgreSQL `visnet_scale_N`, var/scale-N/), so a re-run measures without rebuilding:",
        "",
        "```",
        "python -m benchmarks.scale --sizes 10000 --only build            # build (resumable; skips finished steps)",
        "python -m benchmarks.scale --sizes 1000000 --only build --index-type IVF_SQ8  # another index than HNSW",
        "python -m benchmarks.scale --sizes 10000 --only threads,coldstart,similar,search,page --no-report",
        "python -m benchmarks.scale --sizes 1000000 --only coldstart,similar,search,page --no-report",
        "python -m benchmarks.scale --report-only                         # this page, docs/scale.json, the PNG",
        "```",
        "",
        "## Machine and stack",
        "",
        f"- CPU: {machine.get('cpu', '?')}, {machine.get('affinity', '?')} usable cores, RAM "
        f"{machine.get('memory_gib', '?')} GiB, GPU {machine.get('gpu', '?')}; {machine.get('os', '')}",
        "- Everything on this one machine over 127.0.0.1, load generator included: PostgreSQL 15 (one database per "
        "size), a real Milvus 2.3.5 standalone server (scripts/milvus_standalone.py; COSINE; "
        + "; ".join(
            f"{r['size']:,}: {r.get('index_type', '?')}, build {r.get('index_build_params', OLD_PARAMS[0])}, search "
            f"{r.get('index_search_params', OLD_PARAMS[1])}"
            for r in results
        )
        + "), Redis db 12 as Django's cache (CACHE_URL), gunicorn with the product's config "
        "(docker/gunicorn.conf.py: 2 workers x 4 threads, torch threads per worker = cores // workers, models loaded "
        "when a worker boots), ONE `localize` Celery worker (solo pool, one torch thread, filesystem broker), wrk "
        "for HTTP GET load (1 thread) and the benchmark's own clients for search by photo.",
        "- The load average at the start and end of every run is given (2.0 is both cores busy). Read each number "
        "with it.",
        *[
            f"- {r['size']:,} products: as last reported in docs/scale.json (run {str(r.get('finished', '?'))[:16]} "
            f"UTC on {r.get('machine', {}).get('cpu', '?')}; its load averages are in the tables); not re-run "
            "from this checkout."
            for r in results
            if r.get("reported_from")
        ],
        f"- Catalogs: {results[0]['build'].get('base', 2000):,} real Fashion-MNIST items ingested with the product's "
        "ingest service and the shipped VisNet "
        f"(`{results[0]['build'].get('model_version', '?')}`); every other product is a perturbed copy of one "
        "(noise norm 0.3, re-normalised; its image row points at the real item's files), as `make bench` does.",
        "",
        "## Build (once per size; reused by later runs)",
        "",
        *build_rows(results),
        "",
        "## Similar products API (`GET /api/products/{id}/similar/?k=12`) from the precomputed lists",
        "",
        "benchmarks/serving_load.py (wrk, 1 thread, 32 keep-alive connections, 20 s per mix after a 10 s warm-up pass "
        "that fills the caches): **hot** = uniform over 1,000 products; **zipf** = Zipf s=1.0 over every product "
        "(ranks shuffled); **uniform** = every product equally likely. "
        "Target: ≥ 2,000 req/s with p99 ≤ 100 ms on these 2 cores.",
        "",
        *similar_rows(results),
        "",
        "## Search by photo (`POST /api/search/`)",
        "",
        "Street-like 1152×864 JPEGs (benchmarks/search.py: 1-3 Fashion-MNIST items pasted on a street-like "
        "background), the product's request (localize the items in the `localize` worker, crop the best, embed, "
        "search). Stages from each answer's Server-Timing: **embed** = the query's forward pass in the web worker; "
        "**search** = the Milvus query plus the catalog join; **localize** = the round trip to the localize worker "
        "(of which **detect** ran the detector).",
        "",
        *search_rows(results),
        "",
        "## Product page (`GET /products/{id}/`, HTML), c=8, Zipf ids",
        "",
        *page_rows(results),
        "",
    ]
    if threads:
        lines += [
            "## Torch threads per web worker",
            "",
            f"Measured at {next(r['size'] for r in results if r.get('runs', {}).get('threads')):,} products, 2 "
            "gunicorn workers, the same photos; the default in docker/gunicorn.conf.py is cores // workers.",
            "",
            *threads_rows(threads),
            "",
        ]
    if cold:
        lines += [
            "## First search after a restart",
            "",
            "gunicorn restarted, then the first search sent as soon as a worker answers HTTP, then one more per "
            "worker on fresh connections (the localize worker stays up, warm).",
            "",
            *coldstart_rows(cold),
            "",
        ]
        if not any("first_stages" in run for run in cold.get("preload", {}).get("runs", [])):
            lines += [
                "This run predates two warm-ups added to the preload since (importing the URL configuration, about "
                "0.8 s at boot, and one search of the collection, about 0.1 s on a worker's first search); re-run "
                "`--only coldstart` to measure them.",
                "",
            ]
    extra = []
    if threads and {"1", "2"} <= set(threads):
        one, two = threads["1"], threads["2"]
        extra.append(
            f"- **Torch threads**: the query's forward pass took p50 {_ms(_stage(one['c1'], 'embed', 'p50'))} ms with "
            f"one thread per worker and {_ms(_stage(two['c1'], 'embed', 'p50'))} ms with two at c=1; at c=4 "
            f"{_ms(_stage(one['c4'], 'embed', 'p50'))} vs {_ms(_stage(two['c4'], 'embed', 'p50'))} ms. With 2 "
            "workers on 2 cores a second thread per worker only oversubscribes the cores (the search's total is "
            "dominated by the single localize worker either way), so docker/gunicorn.conf.py sets cores // workers "
            "(1 here); WEB_TORCH_THREADS overrides it."
        )
    if cold and "lazy" in cold and "preload" in cold:
        extra.append(
            f"- **Cold start**: with the models loaded on first use, the first search after a restart took "
            f"{_ms(cold['lazy']['first_search_ms_median'])} ms (median of {len(cold['lazy']['runs'])} restarts; "
            f"the issue reported about 10 s); loaded when the worker boots, "
            f"{_ms(cold['preload']['first_search_ms_median'])} ms, a normal search. The load moved to the boot "
            "(a worker takes no connection until its model is ready)."
        )
    controls = [
        (r["size"], r["runs"]["search"]["c1"]["stages"])
        for r in results
        if (r.get("runs", {}).get("search") or {}).get("c1", {}).get("stages", {}).get("detect")
    ]
    if len(controls) > 1:
        extra.append(
            "- **Read across sizes with care**: detecting and embedding a photo is the same work at every catalog "
            "size, yet their c=1 p50 went "
            + "; ".join(
                f"{size:,}: detect {_ms(st['detect']['p50'])} ms, embed {_ms(st['embed']['p50'])} ms"
                for size, st in controls
            )
            + ". Those differences are the shared machine (the load average columns: other jobs ran outside the "
            "bench lock), not the catalog; the same share of the slowdown applies to every path in that run."
        )
    lines += ["## What the numbers say", "", *findings(results), *extra, ""]
    lines += ["![latency against catalog size](scale_latency.png)", ""]
    del first
    md_path.write_text("\n".join(lines))
    plot(results, png_path)
    at_scale.refresh()
    return [json_path, md_path, png_path]


if __name__ == "__main__":
    sys.exit(main())
