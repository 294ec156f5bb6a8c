"""Ingest through the worker: `manage.py load_demo_catalog --size N`, then wait until every image is ready."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import Any

from benchmarks.harness import BenchError, Context, cpu_summary, log, percentile, tail
from webapp.search.dispatch import INGEST_IMAGES

TASK_MESSAGE = re.compile(r"Task ([\w.]+)\[([0-9a-f-]+)\] (received|succeeded in ([0-9.]+)s|retry|raised)")
TEXT_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]+\] (.*)$")
DEMO_SKU_PREFIX = "fmnist-"  # load_demo_catalog's products


def log_record(line: str) -> tuple[float, str, dict] | None:
    if line.startswith("{"):
        try:
            record = json.loads(line)
            stamp = dt.datetime.fromisoformat(record["time"]).timestamp()
        except (ValueError, KeyError):
            return None
        return stamp, str(record.get("message", "")), record.get("data") or {}
    match = TEXT_LINE.match(line)
    if match is None:
        return None
    stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return stamp, match.group(2), {}


def worker_tasks(text: str) -> list[dict]:
    """Every task the worker finished: name, received and end (epoch s), run_s, images (ingest tasks, JSON logs)."""
    received: dict[str, tuple[float, int | None]] = {}
    tasks: list[dict[str, Any]] = []
    for line in text.splitlines():
        record = log_record(line)
        if record is None:
            continue
        stamp, message, data = record
        match = TASK_MESSAGE.search(message)
        if match is None:
            continue
        name, task_id, what, run_s = match.groups()
        if what == "received":
            images = None
            if name == INGEST_IMAGES and "args" in data:
                try:
                    images = len(json.loads(data["args"])[0])
                except (ValueError, IndexError, TypeError):
                    images = None
            received[task_id] = (stamp, images)
        elif what.startswith("succeeded") and task_id in received:
            at, images = received.pop(task_id)
            tasks.append({"name": name, "received": at, "end": stamp, "run_s": float(run_s), "images": images})
    tasks.sort(key=lambda task: task["received"])
    return tasks


def worker_task_timeline(text: str) -> list[dict]:
    """Ingest tasks from the worker log (JSON lines, as the product logs, or Celery's text format): run time, and
    the wait between the previous task's end and this one's arrival at the worker (time the worker sat idle with
    work still queued)."""
    tasks = [task for task in worker_tasks(text) if task["name"] == INGEST_IMAGES]
    for previous, task in zip([None, *tasks[:-1]], tasks, strict=False):
        task["wait_s"] = max(0.0, task["received"] - previous["end"]) if previous else None
    return tasks


def _status_counts() -> dict[str, int]:
    from django.db.models import Count

    from webapp.catalog.models import ProductImage

    images = ProductImage.objects.filter(product__sku__startswith=DEMO_SKU_PREFIX)
    return dict(images.values_list("status").annotate(c=Count("id")).order_by())


def _poll_until_ready(
    ctx: Context, loader, loader_log, before: int, t0: float
) -> tuple[list, float | None, float | None]:
    """Poll the database every 100 ms; returns the series (t, rows, ready, failed), first row and loader end."""
    n = ctx.args.ingest
    series = []
    first_row_t = loader_done_t = None
    deadline = t0 + ctx.args.ingest_timeout
    last_print = 0.0
    while True:
        now = time.monotonic()
        counts = _status_counts()
        rows = sum(counts.values()) - before
        ready, failed = counts.get("ready", 0), counts.get("failed", 0)
        series.append((now - t0, rows, ready, failed))
        if rows > 0 and first_row_t is None:
            first_row_t = now - t0
        if loader_done_t is None and loader.poll() is not None:
            loader_done_t = now - t0
            if loader.returncode != 0:
                raise BenchError(f"load_demo_catalog failed:\n{tail(loader_log)}")
        if loader_done_t is not None and ready + failed >= n:
            return series, first_row_t, loader_done_t
        if failed > max(5, 0.1 * n):
            raise BenchError(f"{failed} images failed ingestion:\n{tail(ctx.logs / 'worker.log', 15)}")
        if now > deadline:
            raise BenchError(f"ingest not finished after {ctx.args.ingest_timeout}s: {counts}")
        if now - last_print > 10:
            last_print = now
            log(f"  {ready}/{n} ready, {failed} failed, {rows} rows created")
        time.sleep(0.1)


def _summary(ctx: Context, series: list, first_row_t, loader_done_t, usage: dict) -> dict:
    n = ctx.args.ingest
    all_ready_t, ready_total = series[-1][0], series[-1][2]
    # Steady state: between 10% and 90% ready (leaves out the model load and the last batch).
    lo = next(s for s in series if s[2] >= 0.1 * n)
    hi = next(s for s in series if s[2] >= 0.9 * n)
    steady = (hi[2] - lo[2]) / max(hi[0] - lo[0], 1e-9) if hi[0] > lo[0] else float("nan")
    tasks = worker_task_timeline(ctx.worker_log())
    task_times = [t["run_s"] for t in tasks]
    gaps = [t["wait_s"] for t in tasks[1:] if t["wait_s"] is not None]
    return {
        "images": n,
        "ready": ready_total,
        "failed": series[-1][3],
        "first_queued_s": first_row_t,
        "loader_done_s": loader_done_t,
        "all_ready_s": all_ready_t,
        "img_s_end_to_end": ready_total / max(all_ready_t - (first_row_t or 0.0), 1e-9),
        "img_s_steady": steady,
        "tasks": len(task_times),
        "task_p50_s": percentile(task_times, 50),
        "task_max_s": max(task_times, default=0),
        "first_task_s": task_times[0] if task_times else float("nan"),
        "gap_p50_s": percentile(gaps, 50),
        "idle_between_tasks": sum(gaps) / max(sum(gaps) + sum(task_times[1:]), 1e-9),
        "img_s_in_task": 32 / percentile(task_times[1:], 50) if len(task_times) > 1 else float("nan"),
        "cpu": usage,
        "worker_cpu_s_per_image": usage["cpu_s"]["celery worker"] / max(n, 1),
    }


def bench_ingest(ctx: Context) -> None:
    n = ctx.args.ingest
    log(f"ingest: load_demo_catalog --size {n}, then wait until every image is ready ...")
    before = sum(_status_counts().values())
    cpu = ctx.cpu_meter()
    t0 = time.monotonic()
    loader_log = ctx.logs / "manage-load_demo_catalog.log"
    loader = ctx.stack.start(
        "load_demo_catalog", [sys.executable, "manage.py", "load_demo_catalog", "--size", str(n)], ctx.env, loader_log
    )
    series, first_row_t, loader_done_t = _poll_until_ready(ctx, loader, loader_log, before, t0)
    usage = cpu.stop()
    ing = ctx.results["ingest"] = _summary(ctx, series, first_row_t, loader_done_t, usage)
    log(
        f"ingest: {ing['ready']} ready in {ing['all_ready_s'] - (first_row_t or 0):.1f}s after first queue -> "
        f"{ing['img_s_end_to_end']:.1f} img/s end-to-end, {ing['img_s_steady']:.1f} img/s steady; {cpu_summary(usage)}"
    )
    log(
        f"  {ing['tasks']} tasks: run p50 {ing['task_p50_s']:.2f}s ({ing['img_s_in_task']:.1f} img/s while running), "
        f"worker idle between tasks p50 {ing['gap_p50_s']:.2f}s = {ing['idle_between_tasks'] * 100:.0f}% of the time"
    )
    if ing["failed"]:
        ctx.note(f"{ing['failed']} images failed ingestion (see var/bench/log/worker.log).")
