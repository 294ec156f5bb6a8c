"""Catalog import at scale: `manage.py import_catalog` of an N-row catalog of real Fashion-MNIST images, embedded by
ONE Celery ingest worker started as `make run` starts it (workers/start_worker.sh ingest,default), on its own stack:
a var dir, a database (SQLite there unless --database-url), a Milvus Lite server on a port of 19500-19599 and the
broker `make run` uses (the filesystem queue unless --broker-url).

Measures the import command's rows/s, the images/s embedded (steady 10%-90% and end to end, or over a fixed
--window of the import), the worker's time per task; with --compare-rows, the same catalog imported row by row
(`--rows-per-transaction 1`: one transaction and one ingestion task per row, as before batching) against the default
(rows written in transactions of many rows, their images queued in tasks of 32 once each commits). Writes
docs/import_scale.json (runs merged by label) and docs/import_scale.md, with extrapolations to a million images.

    python -m benchmarks.import_scale --rows 5000 --compare-rows 2000
    python -m benchmarks.import_scale --rows 100000 --window 600 --compare-rows 0
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import at_scale, stack
from benchmarks.harness import DOCS, ROOT, VENV_BIN, BenchError, Context, log, percentile, tail, wait_port
from benchmarks.ingest import TASK_MESSAGE, log_record, worker_tasks

PORTS = range(19500, 19600)  # this benchmark's Milvus port range
WARM_ROWS = 32
SKU_PREFIX = "imp-"
FASHION_MNIST_ITEMS = 70_000
ASSUMED_GPU_FORWARD_MS = 0.5  # EfficientNet-Lite0 at 224 px, batches of 32, host-to-device copy included
SUMMARY_LINE = re.compile(r"(\d+) created, (\d+) updated, (\d+) images queued, (\d+) row\(s\) with errors")


# --------------------------------------------------------------------------------------------
# The catalog: real Fashion-MNIST items as PNG files, made the way the demo catalog makes them
# --------------------------------------------------------------------------------------------
def ensure_images(folder: Path, count: int) -> list[int]:
    """item-NNNNN.png for the first `count` demo items (test split, then train); returns their labels."""
    from ml.data.fashion_mnist import load_fashion_mnist
    from webapp.catalog.demo import item_png

    folder.mkdir(parents=True, exist_ok=True)
    labels: list[int] = []
    made = 0
    for split in ("test", "train"):
        images, split_labels = load_fashion_mnist(split)
        for index in range(len(images)):
            if len(labels) >= count:
                break
            path = folder / f"item-{len(labels):05d}.png"
            if not path.exists():
                path.write_bytes(item_png(images[index]))
                made += 1
                if made % 10_000 == 0:
                    log(f"  {made} image files written ...")
            labels.append(int(split_labels[index]))
    return labels


def write_catalog(folder: Path, name: str, rows: int, prefix: str, fmt: str, labels: list[int]) -> Path:
    """`rows` products, one image file each (item i mod 70,000: rows past 70,000 reuse items on other SKUs)."""
    import random

    from ml.data.fashion_mnist import CLASS_NAMES
    from webapp.catalog.demo import ADJECTIVES, BRANDS, PRICE_RANGES

    path = folder / f"{name}.{fmt}"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as handle:
        fields = ["sku", "title", "brand", "price", "category", "images"]
        writer = csv.DictWriter(handle, fieldnames=fields) if fmt == "csv" else None
        if writer:
            writer.writeheader()
        for index in range(rows):
            item = index % len(labels)
            rng = random.Random(f"{prefix}{index}")
            class_name = CLASS_NAMES[labels[item]]
            low, high = PRICE_RANGES[class_name]
            row = {
                "sku": f"{prefix}{index:07d}",
                "title": f"{rng.choice(ADJECTIVES)} {class_name}",
                "brand": rng.choice(BRANDS),
                "price": f"{rng.randint(low * 100, high * 100) / 100:.2f}",
                "category": class_name,
                "images": f"images/item-{item:05d}.png",
            }
            if writer:
                writer.writerow(row)
            else:
                handle.write(json.dumps(row) + "\n")
    partial.rename(path)
    return path


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------
def milvus_port(requested: int) -> int:
    candidates = [requested] if requested else list(PORTS)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError(f"no free port in {candidates[0]}-{candidates[-1]} for the Milvus Lite server")


def start_milvus(ctx: Context) -> None:
    ctx.milvus_port = milvus_port(ctx.args.milvus_port)
    log_path = ctx.logs / "milvus.log"
    argv = [str(VENV_BIN / "milvus-lite"), "server", "--data-dir", str(ctx.var_dir / "milvus")]
    argv += ["--host", "127.0.0.1", "--port", str(ctx.milvus_port)]
    process = ctx.stack.start("milvus-lite", argv, os.environ.copy(), log_path)
    wait_port(ctx.milvus_port, 90, process, log_path)
    ctx.sessions["milvus-lite"] = process.pid
    ctx.milvus = process
    log(f"Milvus Lite server on 127.0.0.1:{ctx.milvus_port} (pid {process.pid})")


def start(ctx: Context) -> None:
    stack.prepare_dirs(ctx)
    start_milvus(ctx)
    os.environ.pop("DATABASE_URL", None)
    ctx.env = stack.make_env(ctx)
    if ctx.args.database_url:
        ctx.env["DATABASE_URL"] = ctx.args.database_url
    log("migrate ...")
    stack.manage(ctx, "migrate", "--noinput")
    if ctx.args.database_url:  # a database of its own, emptied: the run starts from no catalog
        stack.manage(ctx, "flush", "--noinput")
    stack.serve_default_model(ctx)
    stack.setup_django(ctx)
    if not ctx.args.broker_url.startswith("filesystem"):  # a shared server: drop what earlier runs left queued
        from webapp.celery import app

        purged = app.control.purge()
        if purged:
            log(f"purged {purged} messages left on {ctx.args.broker_url}")
    stack.start_worker(ctx)


def stop_process(ctx: Context, name: str) -> None:
    for started, process, _ in ctx.stack.procs:
        if started == name:
            ctx.stack.stop(process)


def database_kind(ctx: Context) -> str:
    engine = ctx.settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    name = ctx.settings.DATABASES["default"]["NAME"]
    return f"{engine} ({Path(name).name if engine == 'sqlite3' else name})"


# --------------------------------------------------------------------------------------------
# The worker's log
# --------------------------------------------------------------------------------------------
def task_summary(tasks: list[dict], span: tuple[float, float], all_tasks: list[dict]) -> dict:
    """Per ingest task and the worker's time, over `tasks`; idle share: the part of `span` (epoch s) in which the
    worker ran none of `all_tasks` (each counted for the part of its run inside the span)."""
    from webapp.search.dispatch import INGEST_IMAGES

    ingest = [t for t in tasks if t["name"] == INGEST_IMAGES]
    others = [t for t in tasks if t["name"] != INGEST_IMAGES]
    runs = [t["run_s"] for t in ingest]
    sizes = [t["images"] for t in ingest if t["images"] is not None]
    busy = sum(t["run_s"] for t in tasks)
    by_name: dict[str, dict] = {}
    for task in others:
        entry = by_name.setdefault(task["name"], {"tasks": 0, "run_s": 0.0})
        entry["tasks"] += 1
        entry["run_s"] += task["run_s"]
    return {
        "ingest_tasks": len(ingest),
        "images_per_task_mean": sum(sizes) / len(sizes) if sizes else None,
        "images_in_tasks": sum(sizes) if sizes else None,
        "task_run_p50_s": percentile(runs, 50),
        "task_run_p90_s": percentile(runs, 90),
        "task_run_mean_s": sum(runs) / len(runs) if runs else float("nan"),
        "ingest_task_s_per_image": sum(runs) / sum(sizes) if sizes else float("nan"),
        "other_tasks": by_name,
        "worker_busy_s": busy,
        "worker_busy_s_per_image": busy / sum(sizes) if sizes else float("nan"),
        "worker_idle_share": max(0.0, 1 - _busy_within(all_tasks, span) / max(span[1] - span[0], 1e-9)),
    }


def unfinished_tasks(text: str) -> int:
    """Tasks the worker received and has not ended (succeeded, retried or raised)."""
    pending: set[str] = set()
    for line in text.splitlines():
        record = log_record(line)
        match = TASK_MESSAGE.search(record[1]) if record else None
        if match is not None:
            (pending.add if match.group(3) == "received" else pending.discard)(match.group(2))
    return len(pending)


def _busy_within(tasks: list[dict], span: tuple[float, float]) -> float:
    return sum(max(0.0, min(t["end"], span[1]) - max(t["end"] - t["run_s"], span[0])) for t in tasks)


def wait_worker_idle(ctx: Context, timeout: float = 300) -> None:
    """Until every task the worker received has ended and no new one arrived for 3 s (similar-list updates too)."""
    deadline = time.monotonic() + timeout
    quiet_since, last_size = None, -1
    while time.monotonic() < deadline:
        text = ctx.worker_log()
        if unfinished_tasks(text) == 0 and len(text) == last_size:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 3:
                return
        else:
            quiet_since = None
        last_size = len(text)
        time.sleep(0.5)
    ctx.note(f"the worker was still busy {timeout:.0f}s after an import's images were embedded")


# --------------------------------------------------------------------------------------------
# One measured import
# --------------------------------------------------------------------------------------------
def _counts(after_pk: int) -> tuple[int, int, int]:
    """(images created since after_pk, ready, failed)."""
    from django.db.models import Count

    from webapp.catalog.models import ProductImage

    counts = dict(ProductImage.objects.filter(pk__gt=after_pk).values_list("status").annotate(c=Count("id")).order_by())
    return sum(counts.values()), counts.get("ready", 0), counts.get("failed", 0)


def _last_pk() -> int:
    from webapp.catalog.models import ProductImage

    return ProductImage.objects.order_by("-pk").values_list("pk", flat=True).first() or 0


def _head(path: Path, size: int = 8192) -> str:
    try:
        with path.open("rb") as handle:
            return handle.read(size).decode(errors="replace")
    except OSError:
        return ""


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_import(
    ctx: Context, label: str, catalog: Path, rows: int, rows_per_transaction: int | None, window: float = 0.0
) -> dict:
    """Run `manage.py import_catalog` and follow its images until all are embedded (or the window closes)."""
    after_pk = _last_pk()
    argv = ["manage.py", "import_catalog", str(catalog)]
    if rows_per_transaction is not None:
        argv += ["--rows-per-transaction", str(rows_per_transaction)]
    log_path = ctx.logs / f"import-{label}.log"
    interval = 0.2 if rows <= 5000 else 1.0
    timeout = ctx.args.timeout or 120 + 0.5 * rows
    load_start = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    cpu = ctx.cpu_meter()
    children0 = _children_cpu_s()
    wall0 = time.time()
    t0 = time.monotonic()
    process = ctx.stack.start(f"import_catalog {label}", [sys.executable, *argv], ctx.env, log_path)
    log(f"{label}: {' '.join(argv)}" + (f" (steady rate over a {window:.0f}s window)" if window else ""))
    series: list[tuple[float, int, int, int]] = []
    import_s = import_cpu_s = importing_from = None
    progress_bar = f"import {catalog.name}:"  # the command's tqdm bar: Django is up and the rows are counted
    summary = None
    first_row_t = window_open = window_close = None
    last_print = 0.0
    while True:
        now = time.monotonic() - t0
        total, ready, failed = _counts(after_pk)
        series.append((now, total, ready, failed))
        if first_row_t is None and total:
            first_row_t = now
        if importing_from is None and progress_bar in _head(log_path):
            importing_from = now
        if import_s is None and process.poll() is not None:
            import_s = time.monotonic() - t0
            import_cpu_s = _children_cpu_s() - children0
            output = log_path.read_text(errors="replace")
            summary = SUMMARY_LINE.search(output)
            if process.returncode != 0 or summary is None:
                raise BenchError(f"import_catalog failed ({process.returncode}):\n{tail(log_path)}")
            importing_from = importing_from if importing_from is not None else 0.0
            log(
                f"  import_catalog done in {import_s:.1f}s ({import_s - importing_from:.1f}s after its start-up): "
                f"{summary.group(0)} ({rows / (import_s - importing_from):.0f} rows/s)"
            )
        if window:
            if window_open is None and ready:
                window_open = (now, ready)
            if window_open is not None and window_close is None and now >= window_open[0] + window:
                window_close = (now, ready)
                log(f"  window closed: {ready - window_open[1]} images embedded in {now - window_open[0]:.0f}s")
            if window_close is not None and import_s is not None:
                break
        elif summary is not None and ready + failed >= int(summary.group(3)):
            break
        if failed > max(5, 0.01 * rows):
            raise BenchError(f"{failed} images failed ingestion:\n{tail(ctx.logs / 'worker.log', 15)}")
        if now > timeout:
            raise BenchError(f"{label}: not finished after {timeout:.0f}s ({total} images, {ready} ready)")
        if now - last_print >= 30:
            last_print = now
            log(f"  {now:.0f}s: {total} images written, {ready} embedded, {failed} failed")
        time.sleep(interval)
    end_t = time.monotonic() - t0
    usage = cpu.stop({"import_catalog": import_cpu_s or 0.0})
    assert summary is not None and import_s is not None
    created, updated, queued, errors = (int(summary.group(i)) for i in range(1, 5))
    wall_end = time.time()
    if not window:  # the similar-list updates its last ingest tasks queued are part of its cost
        wait_worker_idle(ctx)
    every_task = worker_tasks(ctx.worker_log())
    tasks = [t for t in every_task if wall0 <= t["received"]]
    result = {
        "label": label,
        "command": " ".join(["python", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "rows_per_transaction": rows_per_transaction or "default",
        "import": {
            "wall_s": import_s,
            "startup_s": importing_from,
            "rows_per_s": rows / (import_s - (importing_from or 0.0)),
            "rows_per_s_with_startup": rows / import_s,
            "created": created,
            "updated": updated,
            "images_queued": queued,
            "row_errors": errors,
            "cpu_s": import_cpu_s,
        },
        "first_image_row_s": first_row_t,
        "cpu_cores_used": {name: round(s / usage["wall_s"], 2) for name, s in usage["cpu_s"].items()},
        "machine_busy": usage["machine_busy"],
        "other_processes_cores": usage["other_cpu_s"] / usage["wall_s"],
    }
    final_ready, final_failed = series[-1][2], series[-1][3]
    if window:
        assert window_open is not None and window_close is not None
        wall = window_close[0] - window_open[0]
        in_window = [
            t for t in tasks if t["end"] <= wall0 + window_close[0] and t["received"] >= wall0 + window_open[0]
        ]
        result["ingest"] = {
            "mode": f"window: the rate over {wall:.0f}s of the import, from its first embedded image",
            "window_s": wall,
            "window_opened_s": window_open[0],
            "img_s_window": (window_close[1] - window_open[1]) / wall,
            "embedded_in_window": window_close[1] - window_open[1],
            "embedded_at_end": final_ready,
            "failed_at_end": final_failed,
            "not_yet_embedded_at_end": queued - final_ready - final_failed,
            "img_s_steady": (window_close[1] - window_open[1]) / wall,
        }
        span = (wall0 + window_open[0], wall0 + window_close[0])
        result["worker"] = task_summary(in_window, span, every_task)
    else:
        ingest = _full_rates(series, queued, first_row_t or 0.0)
        ingest["img_s_import_start_to_all_embedded"] = final_ready / end_t
        ingest["ready"], ingest["failed"] = final_ready, final_failed
        result["ingest"] = ingest
        result["worker"] = task_summary(tasks, (wall0 + (first_row_t or 0.0), wall_end), every_task)
    result["worker"]["cpu_s_per_image"] = usage["cpu_s"].get("celery worker", 0.0) / max(
        1, result["ingest"].get("embedded_at_end", final_ready)
    )
    ing, w = result["ingest"], result["worker"]
    log(
        f"  {label}: import {result['import']['rows_per_s']:.0f} rows/s; embedded {ing['img_s_steady']:.1f} img/s "
        f"steady"
        + (f", {ing['img_s_end_to_end']:.1f} end to end" if "img_s_end_to_end" in ing else "")
        + f"; {w['ingest_tasks']} ingest tasks, {w['images_per_task_mean'] or 0:.1f} images each, run p50 "
        f"{w['task_run_p50_s']:.2f}s; worker idle {w['worker_idle_share'] * 100:.0f}%; "
        f"load {result['load_average_end']}"
    )
    return result


def _full_rates(series: list[tuple[float, int, int, int]], images: int, first_row_t: float) -> dict:
    all_ready_t = series[-1][0]
    lo = next((s for s in series if s[2] >= 0.1 * images), None)
    hi = next((s for s in series if s[2] >= 0.9 * images), None)
    steady = (hi[2] - lo[2]) / (hi[0] - lo[0]) if lo and hi and hi[0] > lo[0] else float("nan")
    return {
        "mode": "full: until every image is embedded",
        "img_s_steady": steady,
        "steady_between_s": [lo[0], hi[0]] if lo and hi else None,
        "img_s_end_to_end": series[-1][2] / max(all_ready_t - first_row_t, 1e-9),
        "all_embedded_s": all_ready_t,
    }


# --------------------------------------------------------------------------------------------
# What the GPU would take off: the embedding forward pass, timed in this process on the run's images
# --------------------------------------------------------------------------------------------
def probe_embedding(ctx: Context, repeats: int = 3) -> dict:
    from webapp.catalog.images import open_stored_image
    from webapp.catalog.models import ProductImage
    from webapp.search import registry

    version = registry.active_version(fresh=True)
    if version is None:
        raise BenchError("no active model version to probe")
    embedder = registry.embedder_for(version)
    preprocess: Any = getattr(embedder, "preprocess", None) or (
        lambda img: getattr(embedder, "transform")(img.convert("RGB"))  # noqa: B009 (not every embedder has it)
    )
    images = [open_stored_image(img.image) for img in ProductImage.objects.filter(status="ready")[:32]]
    if len(images) < 32:
        raise BenchError("fewer than 32 embedded images to probe")
    embedder.embed(images)  # warm up
    full, pre, full_cpu, pre_cpu = [], [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        embedder.embed(images)
        full.append(time.perf_counter() - t0)
        full_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        for image in images:
            preprocess(image)
        pre.append(time.perf_counter() - t0)
        pre_cpu.append(time.process_time() - c0)
    embed_ms = min(full) / len(images) * 1000
    preprocess_ms = min(pre) / len(images) * 1000
    forward_cpu_ms = max(0.0, min(full_cpu) - min(pre_cpu)) / len(images) * 1000
    return {
        "model_version": version.model_version,
        "batch": len(images),
        "embed_ms_per_image_cpu": embed_ms,
        "preprocess_ms_per_image_cpu": preprocess_ms,
        "forward_ms_per_image_cpu": max(0.0, embed_ms - preprocess_ms),
        "forward_cpu_seconds_ms_per_image": forward_cpu_ms,
        "torch_threads": __import__("torch").get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def extrapolate(run: dict, probe: dict | None) -> dict:
    rate = run["ingest"]["img_s_steady"]
    out = {
        "basis": f"{run['label']}: {rate:.1f} images/s embedded ({run['ingest']['mode']}), "
        f"{run['import']['rows_per_s']:.0f} rows/s imported",
        "million_images_one_cpu_worker_h": 1e6 / rate / 3600,
        "million_rows_import_command_h": 1e6 / run["import"]["rows_per_s"] / 3600,
    }
    if probe is not None:
        worker_ms = 1000 / rate
        forward_ms = probe["forward_ms_per_image_cpu"]
        gpu_ms = max(worker_ms - forward_ms, 0.1) + ASSUMED_GPU_FORWARD_MS
        out.update(
            worker_ms_per_image_cpu=worker_ms,
            cpu_forward_ms_per_image=forward_ms,
            assumed_gpu_forward_ms_per_image=ASSUMED_GPU_FORWARD_MS,
            gpu_worker_ms_per_image=gpu_ms,
            gpu_worker_img_s=1000 / gpu_ms,
            million_images_one_gpu_worker_h=1e6 * gpu_ms / 1000 / 3600,
        )
        worker_cpu_ms = run["worker"]["cpu_s_per_image"] * 1000
        if worker_cpu_ms > probe["forward_cpu_seconds_ms_per_image"]:
            # What the worker process itself burns per image besides the forward pass: its rate if it never waited.
            rest_cpu_ms = worker_cpu_ms - probe["forward_cpu_seconds_ms_per_image"]
            out.update(worker_cpu_ms_per_image=worker_cpu_ms, gpu_worker_cpu_bound_img_s=1000 / rest_cpu_ms)
    return out


def comparison(old: dict, new: dict) -> dict:
    """The gain, and what one task costs beyond its images: per image, one-image tasks cost overhead + b, tasks of
    n images overhead/n + b, so overhead = (old - new) / (1 - 1/n)."""
    n = new["worker"]["images_per_task_mean"] or 32
    worker_old, worker_new = old["worker"]["worker_busy_s_per_image"], new["worker"]["worker_busy_s_per_image"]
    e2e_old, e2e_new = old["ingest"]["img_s_end_to_end"], new["ingest"]["img_s_end_to_end"]
    return {
        "rows": old["rows"],
        "img_s_end_to_end": {"one_task_per_row": e2e_old, "batched": e2e_new, "gain": e2e_new / e2e_old},
        "img_s_steady": {
            "one_task_per_row": old["ingest"]["img_s_steady"],
            "batched": new["ingest"]["img_s_steady"],
            "gain": new["ingest"]["img_s_steady"] / old["ingest"]["img_s_steady"],
        },
        "import_rows_per_s": {
            "one_task_per_row": old["import"]["rows_per_s"],
            "batched": new["import"]["rows_per_s"],
            "gain": new["import"]["rows_per_s"] / old["import"]["rows_per_s"],
        },
        "worker_busy_ms_per_image": {"one_task_per_row": worker_old * 1000, "batched": worker_new * 1000},
        "task_overhead_worker_ms": (worker_old - worker_new) / (1 - 1 / n) * 1000,
        "task_overhead_wall_ms": (1 / e2e_old - 1 / e2e_new) / (1 - 1 / n) * 1000,
        "images_per_batched_task": n,
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def merge_results(path: Path, invocation: dict, runs: dict[str, dict], extra: dict) -> dict:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("runs", {}).update(runs)
    data.pop("api_path", None)  # rendered from the comparison
    data.setdefault("invocations", []).append(invocation)
    arguments = invocation["command"].removeprefix("python -m benchmarks.import_scale ")
    data["pending"] = [item for item in data.get("pending", []) if arguments not in item]  # this run did it
    data["invocations"] = data["invocations"][-6:]
    for key, value in extra.items():
        data[key] = value
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def _f(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}"


def _worker_settings(run: dict) -> str:
    """The worker's prefetch and torch threads in a run (runs before 2026-12-04 recorded none: prefetch 2 and
    torch's default of one thread per core, 2 here, were what start_worker.sh and the benchmark used then)."""
    found = run.get("worker_settings") or {"prefetch": 2, "torch_threads": 2}
    threads = found["torch_threads"]
    return f"prefetch {found['prefetch']}, {threads} torch thread{'s' if threads != 1 else ''}"


def render_markdown(data: dict) -> str:
    runs = data.get("runs", {})
    lines = [
        "# Catalog import at scale",
        "",
        "Written by `python -m benchmarks.import_scale` (numbers in docs/import_scale.json). Each run: its own stack "
        "(var dir, database, a Milvus Lite server, the filesystem broker `make run` uses unless noted), ONE Celery "
        "worker on `ingest,default` started by workers/start_worker.sh as `make run` starts it (concurrency 1; "
        "its prefetch and torch threads in each run's row), a warm-up import of 32 rows first (model loaded), then "
        "`manage.py import_catalog` of a CSV "
        "whose rows each name one image file of a real Fashion-MNIST item (PNG, as the demo catalog makes them; "
        "rows past 70,000 reuse items on other SKUs: ingestion caches nothing by content).",
        "",
        "- **rows/s**: rows divided by the import command's time from its start-up (Django loaded, rows counted: its "
        "progress bar appears) to its end; the seconds in brackets are its whole wall time.",
        "- **steady img/s**: embedded between 10% and 90% of the run's images; in a *window* run, embedded during the "
        "window (from the first embedded image of the import, for the stated seconds) divided by its length.",
        "- **end to end img/s**: images divided by the time from the first image row written to the last embedded.",
        "- **task run**: the worker's own time per ingest task (its log); *worker busy per image* adds the "
        "similar-list update each ingest task queues on the `default` queue (same worker).",
        "- **other processes**: cores used meanwhile by processes the benchmark did not start (the machine is "
        "shared); every number here is lower than on a quiet machine by about that much contention.",
        "",
    ]
    lines += [
        "## How the import batches",
        "",
        "- Each row is checked and its images read (files or downloads) before any transaction opens; a bad row is "
        "reported (`--errors` CSV) and never stops the others.",
        "- The good rows are written 256 to a transaction (`--rows-per-transaction`), each row in its own savepoint: a "
        "row the database refuses rolls back alone, its stored files deleted, and the transaction's other rows stay.",
        "- The images' ingestion requests made inside the transaction are collected "
        "(`webapp.search.dispatch.ingest_batched_on_commit`) and queued once it commits, in tasks of 32 in the order "
        "written: a worker never sees a row that is not committed, a savepoint rolled back drops its own images, a "
        "transaction rolled back (a storage failure stops the import) queues nothing and deletes its files.",
        "- In the worker each task of 32 checks every image again: a bad one is marked failed with its reason and the "
        "others are embedded (`search.ingest_image_batch`); a vector-store outage retries the task with backoff.",
        "",
    ]
    machine = data.get("machine") or {}
    if machine:
        lines += [
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores ({machine.get('affinity')} usable), "
            f"{machine.get('memory_gib')} GiB, GPU {machine.get('gpu')}; torch {machine.get('torch')}, "
            f"Milvus Lite {machine.get('milvus_lite')}, celery {machine.get('celery')}. Shared with other work: "
            "the load average at each run's start and end is given.",
            "",
        ]
    old = next((r for r in runs.values() if r["label"].startswith("compare-one-task-per-row")), None)
    new = next((r for r in runs.values() if r["label"].startswith("compare-batched")), None)
    cmp_ = data.get("comparison")
    if old and new and cmp_:
        lines += [
            f"## Batched vs one task per row ({cmp_['rows']:,} rows, same items, same stack, one after the other)",
            "",
            "| path | import rows/s | steady img/s | end to end img/s | ingest tasks | images/task | task run p50 "
            "| worker busy per image | other processes | load avg start -> end |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, run in (("`--rows-per-transaction 1` (as before)", old), ("default (batched)", new)):
            w = run["worker"]
            lines.append(
                f"| {name} | {_f(run['import']['rows_per_s'], 0)} | {_f(run['ingest']['img_s_steady'])} "
                f"| {_f(run['ingest']['img_s_end_to_end'])} | {w['ingest_tasks']:,} | {_f(w['images_per_task_mean'])} "
                f"| {_f(w['task_run_p50_s'], 3)} s | {_f(w['worker_busy_s_per_image'] * 1000, 0)} ms "
                f"| {_f(run['other_processes_cores'])} cores "
                f"| {run['load_average_start'][0]} -> {run['load_average_end'][0]} |"
            )
        lines += [
            "",
            f"Gain: **{_f(cmp_['img_s_end_to_end']['gain'], 2)}x** images/s end to end, "
            f"{_f(cmp_['img_s_steady']['gain'], 2)}x steady, {_f(cmp_['import_rows_per_s']['gain'], 2)}x import "
            f"rows/s. One task costs about **{_f(cmp_['task_overhead_worker_ms'], 0)} ms of worker time** beyond its "
            f"images (model-version lookup, one vector-store upsert and flush, one similar-list update task) and "
            f"about {_f(cmp_['task_overhead_wall_ms'], 0)} ms of wall time with the broker's hand-offs.",
            "",
        ]
    scale = [r for r in runs.values() if r["label"].startswith("import-")]
    if scale:
        lines += [
            "## Scale runs (default, batched path)",
            "",
            "| run | database | broker | import rows/s | steady img/s | end to end img/s | ingest tasks | task run p50 "
            "| worker CPU per image | similar-list updates | other processes | load avg start -> end |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in sorted(scale, key=lambda r: r["rows"]):
            ing, w = run["ingest"], run["worker"]
            name = f"{run['rows']:,} rows" + (f", {ing['window_s']:.0f} s window" if "window_s" in ing else "")
            lines.append(
                f"| {name} | {run.get('database', '-')} | {run.get('broker', '-')} ({_worker_settings(run)}) "
                f"| {_f(run['import']['rows_per_s'], 0)} ({_f(run['import']['wall_s'], 0)} s) "
                f"| {_f(ing['img_s_steady'])} | {_f(ing.get('img_s_end_to_end'))} | {w['ingest_tasks']:,} "
                f"| {_f(w['task_run_p50_s'], 2)} s | {_f(w['cpu_s_per_image'] * 1000, 0)} ms "
                f"| {_f(_update_share(w) * 100, 0)}% of the worker's time "
                f"| {_f(run['other_processes_cores'])} cores "
                f"| {run['load_average_start'][0]} -> {run['load_average_end'][0]} |"
            )
        for run in scale:
            ing = run["ingest"]
            if "window_s" in ing:
                lines += [
                    "",
                    f"The {run['rows']:,}-row run measured the steady rate over a fixed window, then stopped: "
                    f"{ing['embedded_in_window']:,} images embedded in {ing['window_s']:.0f} s "
                    f"(window from {ing['window_opened_s']:.0f} s after the command started); the import command "
                    f"wrote all {run['import']['created'] + run['import']['updated']:,} rows in "
                    f"{run['import']['wall_s']:.0f} s; {ing['not_yet_embedded_at_end']:,} images were still queued "
                    "when it stopped.",
                ]
        lines.append("")
    extrapolation = data.get("extrapolation")
    if extrapolation:
        lines += ["## A million images", "", f"From {extrapolation['basis']}.", ""]
        lines.append(
            f"- **One CPU worker** (this machine's 2 cores, one worker process): "
            f"{_f(extrapolation['million_images_one_cpu_worker_h'])} h. Workers scale out on the `ingest` queue "
            "(each takes a task of 32 at a time): N workers on N machines, about N times faster until the database "
            "or the vector store is the limit."
        )
        lines.append(
            f"- **The import command** writes a million rows in about "
            f"{_f(extrapolation['million_rows_import_command_h'])} h, while the workers embed (rows are queued "
            "as each transaction of 256 commits)."
        )
        if "gpu_worker_img_s" in extrapolation:
            probe = data.get("probe", {})
            lines.append(
                f"- **One GPU worker** (not measured here: no GPU): the CPU worker spends "
                f"{_f(extrapolation['worker_ms_per_image_cpu'])} ms per image, of which the model's forward pass is "
                f"{_f(extrapolation['cpu_forward_ms_per_image'])} ms (timed on 32 of the run's images in the "
                f"benchmark process, {probe.get('torch_threads')} torch threads; the preprocessing, "
                f"{_f(probe.get('preprocess_ms_per_image_cpu'))} ms, stays on the CPU). Assuming the forward pass "
                f"takes {ASSUMED_GPU_FORWARD_MS} ms per image on a GPU (EfficientNet-Lite0, 224 px, batches of 32, "
                f"copy included) and everything else (decode, thumbnail, database, vector-store upsert, similar "
                f"lists) costs what it costs here: {_f(extrapolation['gpu_worker_ms_per_image'])} ms per image, "
                f"about {_f(extrapolation['gpu_worker_img_s'], 0)} images/s, a million in "
                f"{_f(extrapolation['million_images_one_gpu_worker_h'])} h"
                + (
                    f" (counting only the worker's own CPU time per image besides the forward pass, "
                    f"{_f(extrapolation['worker_cpu_ms_per_image'] - probe.get('forward_cpu_seconds_ms_per_image', 0))}"
                    f" ms, and no waiting: at most {_f(extrapolation['gpu_worker_cpu_bound_img_s'], 0)} images/s)"
                    if "gpu_worker_cpu_bound_img_s" in extrapolation
                    else ""
                )
                + ". The GPU then waits on CPU work: a GPU "
                "worker wants several worker processes (`CELERY_CONCURRENCY`) or machines feeding it, and the import "
                "command, SQLite and Milvus Lite become the limits (PostgreSQL and a Milvus server for that size)."
            )
        lines.append("")
    api = api_path_text(data.get("comparison"))
    if api:
        lines += ["## The API path (`POST /api/products/{id}/images/`)", "", api, ""]
    pending = data.get("pending", [])
    if pending:
        lines += ["## Not measured yet", "", *[f"- {item}" for item in pending], ""]
    invocations = data.get("invocations", [])
    if invocations:
        lines += ["## Commands", ""]
        lines += [f"- `{inv['command']}` ({inv['started']}, {inv['note']})" for inv in invocations]
        lines.append("")
    notes = sorted({note for run in runs.values() for note in run.get("notes", [])})
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


def _update_share(worker: dict) -> float:
    updates = worker["other_tasks"].get("recommendations.update_similar_lists", {}).get("run_s", 0.0)
    return updates / worker["worker_busy_s"] if worker["worker_busy_s"] else float("nan")


def api_path_text(cmp_: dict | None) -> str:
    if not cmp_:
        return ""
    return (
        "Not coalesced. Each request stores one image in its own transaction and queues its task once that commits; "
        "batching across requests would need a buffer outside any transaction (a list on the broker drained on a "
        "timer), which delays every image by that timer and adds a moving part that can lose or hold work, for a "
        f"saving of about {cmp_['task_overhead_worker_ms']:.0f} ms of worker time per image "
        f"({cmp_['task_overhead_wall_ms']:.0f} ms of wall time with the broker's hand-offs), measured above. "
        f"At {cmp_['img_s_end_to_end']['one_task_per_row']:.0f} images/s per worker for one-image tasks, one worker "
        "keeps up with a merchant, an admin or an integration adding images one at a time; a product page's images "
        "arriving together are a few tasks; a client posting faster only lengthens the queue (its images wait as "
        "pending, nothing is lost). A bulk client (a feed, a migration, thousands of images) should not "
        "loop over this endpoint: it should hand a CSV or JSONL catalog to `manage.py import_catalog` (files or "
        "http(s) URLs), which writes rows in transactions of 256 and queues their images in tasks of 32 "
        f"({cmp_['img_s_end_to_end']['gain']:.1f}x the images/s). There is no bulk HTTP endpoint."
    )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.import_scale",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=5000, help="rows of the measured import (0: none)")
    parser.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="seconds: measure the embedding rate over this window of the --rows import (from its first embedded "
        "image) then stop, once the import command has written every row; 0 waits until every image is embedded",
    )
    parser.add_argument(
        "--compare-rows",
        type=int,
        default=2000,
        help="rows imported once with --rows-per-transaction 1 and once batched, for the gain (0: skip)",
    )
    parser.add_argument("--rows-per-transaction", type=int, default=None, help="for the --rows import")
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="catalog file format")
    parser.add_argument(
        "--broker-url", default="filesystem://", help="Celery broker (make run's filesystem queue by default)"
    )
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL database of its own (emptied); default SQLite in --var-dir"
    )
    parser.add_argument("--milvus-port", type=int, default=0, help="default: the first free port of 19500-19599")
    parser.add_argument(
        "--worker-prefetch", type=int, default=None, help="CELERY_PREFETCH (default: workers/start_worker.sh's)"
    )
    parser.add_argument(
        "--worker-torch-threads", type=int, default=1, help="TORCH_NUM_THREADS of the worker (scripts/run.sh's default)"
    )
    parser.add_argument("--timeout", type=float, default=None, help="per import; default 120 s + 0.5 s per row")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "bench-import"))
    parser.add_argument(
        "--catalog-dir", default=str(ROOT / "var" / "bench-import-catalogs"), help="catalog files, kept between runs"
    )
    parser.add_argument("--json", default=str(DOCS / "import_scale.json"))
    parser.add_argument("--md", default=str(DOCS / "import_scale.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite --md from --json; run nothing")
    return parser


def run(ctx: Context, argv: list[str]) -> None:
    args = ctx.args
    invocation = {
        "command": "python -m benchmarks.import_scale " + " ".join(argv),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    log(f"load average at start: {invocation['load_average_start']}")
    start(ctx)
    catalogs = Path(args.catalog_dir)
    needed = max(args.rows, args.compare_rows, WARM_ROWS)
    log(f"catalog files in {catalogs} ({min(needed, FASHION_MNIST_ITEMS):,} images) ...")
    labels = ensure_images(catalogs / "images", min(needed, FASHION_MNIST_ITEMS))
    warm = write_catalog(catalogs, f"warm-{WARM_ROWS}", WARM_ROWS, "warm-", args.format, labels)
    compare_files = {}
    if args.compare_rows:
        for kind in ("row", "batch"):
            name = f"compare-{kind}-{args.compare_rows}"
            compare_files[kind] = write_catalog(
                catalogs, name, args.compare_rows, f"{SKU_PREFIX}{kind}-", args.format, labels
            )
    main_file = (
        write_catalog(catalogs, f"main-{args.rows}", args.rows, f"{SKU_PREFIX}main-", args.format, labels)
        if args.rows
        else None
    )
    where = {
        "database": database_kind(ctx),
        "broker": ctx.settings.CELERY_BROKER_URL.split("//")[0] + "//",
        "worker_settings": stack.worker_settings(ctx),
    }
    log(f"database {where['database']}, broker {where['broker']}; warm-up import of {WARM_ROWS} rows ...")
    measure_import(ctx, "warm-up", warm, WARM_ROWS, None)
    runs: dict[str, dict] = {}
    extra: dict = {}
    if args.compare_rows:
        old = measure_import(
            ctx, f"compare-one-task-per-row-{args.compare_rows}", compare_files["row"], args.compare_rows, 1
        )
        new = measure_import(
            ctx, f"compare-batched-{args.compare_rows}", compare_files["batch"], args.compare_rows, None
        )
        for result in (old, new):
            runs[result["label"]] = result | where
        extra["comparison"] = comparison(old, new)
    main_run = None
    if main_file is not None:
        label = f"import-{args.rows}" + (f"-window-{args.window:.0f}s" if args.window else "")
        main_run = measure_import(ctx, label, main_file, args.rows, args.rows_per_transaction, args.window)
        runs[label] = main_run | where
    stop_process(ctx, "celery worker")  # the probe below must not share the CPU with it
    probe = probe_embedding(ctx)
    log(
        f"embedding probe: {probe['embed_ms_per_image_cpu']:.1f} ms/image on the CPU, of which the forward pass "
        f"{probe['forward_ms_per_image_cpu']:.1f} ms"
    )
    extra["probe"] = probe
    if main_run is not None:
        extra["extrapolation"] = extrapolate(main_run, probe)
    for result in runs.values():
        result["notes"] = ctx.results["notes"]
    from benchmarks.report import machine_description

    extra["machine"] = machine_description()
    invocation["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    invocation["note"] = f"load average {invocation['load_average_start'][0]} -> {invocation['load_average_end'][0]}"
    data = merge_results(Path(args.json), invocation, runs, extra)
    Path(args.md).write_text(render_markdown(data))
    if Path(args.json).resolve() == (DOCS / "import_scale.json").resolve():
        at_scale.refresh()
    log(f"wrote {args.json} and {args.md}")
    if "extrapolation" in extra:
        e = extra["extrapolation"]
        log(
            f"a million images: {e['million_images_one_cpu_worker_h']:.1f} h on one CPU worker, "
            f"{e.get('million_images_one_gpu_worker_h', float('nan')):.1f} h on one GPU worker (assumed forward pass)"
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.render_only:
        Path(args.md).write_text(render_markdown(json.loads(Path(args.json).read_text())))
        return 0
    if args.rows < 0 or args.compare_rows < 0 or args.window < 0:
        raise SystemExit("--rows, --compare-rows and --window must not be negative")
    args.keep, args.image_size = False, None
    ctx = Context(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        run(ctx, argv)
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything this benchmark started ...")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        ctx.stack.stop_all()
        log("all benchmark processes stopped")


if __name__ == "__main__":
    sys.exit(main())
