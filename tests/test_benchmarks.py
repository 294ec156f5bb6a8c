"""Unit tests of the benchmark harness's pure parts: statistics, log parsing, load results, the report tables."""

from __future__ import annotations

import argparse
import datetime as dt
import math

import pytest

from benchmarks.__main__ import parse_args
from benchmarks.harness import cpu_shares, latency_stats, percentile
from benchmarks.ingest import worker_task_timeline
from benchmarks.loadgen import decode_chunked, merge_load_results
from benchmarks.report import queue_paragraph, report_markdown, search_photo_section
from benchmarks.search import parse_server_timing, request_stages, stage_stats, street_photo
from benchmarks.stack import needs_localize, resolve_detector
from benchmarks.table import fmt, markdown_table, met, render_table, search_stage_table, stage_summary, table_rows


# Statistics ----------------------------------------------------------------------------------
def test_percentile_interpolates_linearly_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_latency_stats_are_in_milliseconds():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040, 0.100])
    assert stats["p50"] == pytest.approx(30.0)
    assert stats["p90"] == pytest.approx(76.0)
    assert stats["p99"] == pytest.approx(97.6)
    assert stats["max"] == pytest.approx(100.0)
    assert stats["mean"] == pytest.approx(40.0)
    assert all(math.isnan(v) for v in latency_stats([]).values())


def test_cpu_shares_divide_by_wall_time():
    shares = cpu_shares({"wall_s": 4.0, "cpu_s": {"gunicorn": 6.0, "milvus-lite": 1.0}})
    assert shares == {"gunicorn": 1.5, "milvus-lite": 0.25}


# Load results ---------------------------------------------------------------------------------
def test_merge_load_results_adds_up_the_processes():
    one = {
        "lat": [0.01, 0.03],
        "end": [10.5, 11.0],
        "start": 10.0,
        "elapsed": 1.0,
        "errors": 1,
        "status": {500: 1},
        "samples": ["500: b'boom'"],
        "cpu_s": 0.2,
        "exhausted": False,
    }
    two = {
        "lat": [0.02],
        "end": [12.0],
        "start": 10.0,
        "elapsed": 2.0,
        "errors": 2,
        "status": {500: 1, "TimeoutError": 1},
        "samples": [],
        "cpu_s": 0.3,
        "exhausted": True,
    }
    merged = merge_load_results([one, two], concurrency=4, procs=2)
    assert merged["ok"] == 3
    assert merged["errors"] == 3
    assert merged["error_kinds"] == {"500": 2, "TimeoutError": 1}
    assert merged["error_samples"] == ["500: b'boom'"]
    assert merged["rps"] == pytest.approx(3 / 2.0)  # over the span every process was sending
    assert merged["p50"] == pytest.approx(20.0)
    assert merged["exhausted"] is True
    assert merged["loadgen_cpu_s"] == pytest.approx(0.5)
    assert (merged["concurrency"], merged["procs"]) == (4, 2)


def test_decode_chunked():
    assert decode_chunked(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n") == b"hello world"


# The worker log ---------------------------------------------------------------------------------
def test_worker_task_timeline_reads_the_json_log_the_worker_writes():
    import json

    def line(time: str, message: str, **data) -> str:
        return json.dumps({"time": time, "level": "INFO", "logger": "celery", "message": message, "data": data})

    task = "Task search.ingest_image_batch"
    log = "\n".join(
        [
            line("2026-01-02T10:00:00.000Z", f"{task}[aaa-1] received", args="[[1, 2, 3]]"),
            line("2026-01-02T10:00:01.500Z", f"{task}[aaa-1] succeeded in 1.4s: {{}}"),
            line("2026-01-02T10:00:01.600Z", "Task recommendations.update_similar_lists[ccc-3] received"),
            line("2026-01-02T10:00:01.900Z", "Task recommendations.update_similar_lists[ccc-3] succeeded in 0.3s"),
            line("2026-01-02T10:00:02.000Z", f"{task}[bbb-2] received", args="[[4]]"),
            line("2026-01-02T10:00:03.000Z", f"{task}[bbb-2] succeeded in 0.9s: {{}}"),
        ]
    )
    tasks = worker_task_timeline(log)
    assert [(t["run_s"], t["images"]) for t in tasks] == [(1.4, 3), (0.9, 1)]
    assert tasks[0]["wait_s"] is None and abs(tasks[1]["wait_s"] - 0.5) < 1e-6


def test_worker_task_timeline_pairs_received_and_succeeded():
    task = "Task search.ingest_image_batch"
    log = "\n".join(
        [
            f"[2026-01-02 10:00:00,000: INFO/MainProcess] {task}[aaa-1] received",
            f"[2026-01-02 10:00:01,500: INFO/ForkPoolWorker-1] {task}[aaa-1] succeeded in 1.4s: {{}}",
            f"[2026-01-02 10:00:02,000: INFO/MainProcess] {task}[bbb-2] received",
            f"[2026-01-02 10:00:03,000: INFO/ForkPoolWorker-1] {task}[bbb-2] succeeded in 0.9s: {{}}",
            "[2026-01-02 10:00:03,100: INFO/MainProcess] Task search.sync_product_vectors[ccc-3] received",
            f"[2026-01-02 10:00:04,000: INFO/MainProcess] {task}[ddd-4] received",  # never finished
        ]
    )
    tasks = worker_task_timeline(log)
    assert [t["run_s"] for t in tasks] == [1.4, 0.9]
    assert tasks[0]["wait_s"] is None
    assert tasks[1]["wait_s"] == pytest.approx(0.5)  # idle between the first's end and the second's arrival
    assert tasks[1]["received"] - tasks[0]["received"] == pytest.approx(2.0)
    assert worker_task_timeline("") == []


# Server-Timing and the per-stage statistics -----------------------------------------------------
def test_parse_server_timing_reads_every_stage_the_api_sends():
    header = "decode;dur=12.5, localize;dur=80.25, detect;dur=20, embed;dur=40.0, search;dur=9.75"
    assert parse_server_timing(header) == {
        "decode": 12.5,
        "localize": 80.25,
        "detect": 20.0,
        "embed": 40.0,
        "search": 9.75,
    }


def test_parse_server_timing_follows_the_spec_edge_cases():
    header = 'db;desc="a, b; c";dur=3.5, cache;desc=hit, app ; DUR = 7 ;dur=9, db;dur=99, bad;dur=x, ;dur=1'
    # desc may hold commas and semicolons in quotes; no dur -> left out; the first dur and the first name count
    assert parse_server_timing(header) == {"db": 3.5, "app": 7.0}
    assert parse_server_timing("") == {}
    assert parse_server_timing(None) == {}


def test_request_stages_derive_queue_server_and_http():
    stages = request_stages({"decode": 10.0, "localize": 80.0, "detect": 20.0, "embed": 40.0, "search": 10.0}, 150.0)
    assert stages["queue"] == pytest.approx(60.0)  # localize - detect: what the queue costs
    assert stages["server"] == pytest.approx(140.0)  # detect is inside localize, not added again
    assert stages["http"] == pytest.approx(10.0)
    assert stages["total"] == 150.0
    # a clean product shot skips localization: no localize, detect or queue
    shot = request_stages({"decode": 5.0, "embed": 30.0, "search": 5.0}, 50.0)
    assert "queue" not in shot and "localize" not in shot
    assert shot["server"] == pytest.approx(40.0) and shot["http"] == pytest.approx(10.0)
    # no header at all: only the client's total
    assert request_stages({}, 42.0) == {"total": 42.0}


def test_stage_stats_per_stage_percentiles_in_request_order():
    requests = [
        request_stages({"decode": d, "localize": loc, "detect": det, "embed": 40.0, "search": 10.0}, total)
        for d, loc, det, total in ((10.0, 50.0, 20.0, 120.0), (20.0, 70.0, 30.0, 150.0), (30.0, 90.0, 40.0, 200.0))
    ] + [request_stages({"decode": 40.0, "embed": 40.0, "search": 10.0}, 100.0)]  # a product shot
    stats = stage_stats(requests)
    assert list(stats) == ["decode", "localize", "detect", "embed", "search", "queue", "server", "http", "total"]
    assert stats["decode"] == {"n": 4, "p50": pytest.approx(25.0), "p99": pytest.approx(39.7), "mean": 25.0}
    assert stats["localize"]["n"] == 3  # only the localized requests count
    assert stats["localize"]["p50"] == pytest.approx(70.0)
    assert stats["queue"]["p50"] == pytest.approx(40.0)  # 30, 40, 50
    assert stats["queue"]["p99"] == pytest.approx(49.8)
    assert stats["total"]["p50"] == pytest.approx(135.0)
    assert stats["http"]["mean"] == pytest.approx(
        (10.0 + 10.0 + 30.0 + 10.0) / 4
    )  # total - (decode + localize + embed + search)
    assert stage_stats([]) == {}
    assert list(stage_stats([{"total": 1.0, "zeta": 2.0}])) == ["total", "zeta"]  # unknown stages last


def test_stage_summary_and_breakdown_table():
    stats = stage_stats(
        [request_stages({"decode": 10.0, "localize": 80.0, "detect": 20.0, "embed": 40.0, "search": 10.0}, 150.0)]
    )
    assert stage_summary(stats) == (
        "p50/p99 ms: decode 10/10, localize 80/80 (detect 20/20 + queue 60/60), embed 40/40, search 10/10, http 10/10"
    )
    assert stage_summary({}) == "no Server-Timing"
    table = search_stage_table({"sequential": {"stages": stats, "ok": 1, "errors": 0, "concurrency": 1}})
    assert table[0] == "| stage (ms) | localized, c=1 p50 | localized, c=1 p99 |"
    assert "| · queue (localize − detect) | 60.0 | 60.0 |" in table
    assert table[-2] == "| **total: upload → results (client)** | 150.0 | 150.0 |"
    assert table[-1] == "| requests | 1 | (0 errors) |"


def test_street_photo_is_a_one_megapixel_jpeg_with_the_items_where_it_says():
    import io
    import random

    import numpy as np
    from PIL import Image

    item = np.zeros((28, 28), dtype=np.uint8)
    item[4:24, 8:20] = 255
    content, boxes = street_photo([item, item, item], random.Random(3))
    photo = Image.open(io.BytesIO(content))
    assert photo.format == "JPEG" and photo.size == (1152, 864)
    assert len(boxes) == 3
    for x1, y1, x2, y2 in boxes:
        assert 200 <= x2 - x1 == y2 - y1 <= 400
        assert x1 >= 0 and x2 <= 1152 and y1 >= 0 and y2 <= 864


# The stack ------------------------------------------------------------------------------------
def test_resolve_detector_falls_back_only_from_the_default(tmp_path):
    default, fallback, other = tmp_path / "detector-default", tmp_path / "tiny", tmp_path / "mine"
    fallback.mkdir()
    path, warning = resolve_detector(default, default, fallback)
    assert path == fallback and "does not exist" in warning and "UNTRAINED" in warning
    default.mkdir()
    assert resolve_detector(default, default, fallback) == (default, None)
    with pytest.raises(Exception, match="does not exist"):
        resolve_detector(other, default, fallback)  # an explicit --detector never falls back


def test_the_localize_worker_starts_only_when_search_runs():
    assert needs_localize(parse_args([]))
    assert needs_localize(parse_args(["--only", "similar,search"]))
    assert not needs_localize(parse_args(["--only", "similar"]))


# Arguments ------------------------------------------------------------------------------------
def test_quick_overrides_only_the_defaults():
    args = parse_args(["--quick", "--duration", "7", "--web-workers", "2"])
    assert (args.ingest, args.catalog, args.fresh_trials) == (300, 5000, 3)
    assert args.duration == 7.0
    assert args.warm_passes == 8
    assert args.ingest_timeout == pytest.approx(60 + 0.5 * 300)
    assert parse_args(["--only", "similar"]).no_report is True


# Report ---------------------------------------------------------------------------------------
def _cpu(wall: float = 10.0) -> dict:
    return {
        "wall_s": wall,
        "cpu_s": {
            "celery worker": 8.0,
            "gunicorn": 4.0,
            "milvus-lite": 2.0,
            "bench (this process)": 0.5,
            "load generator": 1.0,
        },
        "machine_busy": 0.8,
        "other_cpu_s": 0.5,
    }


def _load(ok: int, rps: float, p50: float, p99: float, errors: int = 0, concurrency: int = 32) -> dict:
    return {
        "ok": ok,
        "rps": rps,
        "p50": p50,
        "p90": (p50 + p99) / 2,
        "p99": p99,
        "errors": errors,
        "concurrency": concurrency,
        "latencies_s": [p50 / 1000] * 3,
        "cpu": _cpu(),
    }


def _results() -> dict:
    calls = {
        "resolve active collection": {"p50_ms": 1.0},
        "query by product_id (rows_for_product)": {"p50_ms": 5.0},
        "get by primary key (image_id)": {"p50_ms": 2.0},
        "ANN search k=68, filter product_id != id": {"p50_ms": 6.0},
        "ANN search k=68, no filter": {"p50_ms": 4.0},
    }
    return {
        "started": dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC),
        "notes": ["a note"],
        "phases": {"setup_s": 30.0, "ingest_s": 60.0, "total_s": 180.0},
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "affinity": 2,
            "memory_gib": 7.8,
            "gpu": "none",
            "os": "Linux",
            "python": "3.11.7",
            "torch": "2.0",
            "django": "5.2",
            "gunicorn": "23",
            "celery": "5.5",
            "pymilvus": "2.6",
            "milvus_lite": "3.2",
        },
        "cache": "per-process local-memory",
        "args_web_workers": 4,
        "embedder": "efficientnet_lite0 at 224 px",
        "ingest": {
            "images": 300,
            "ready": 300,
            "failed": 0,
            "first_queued_s": 2.0,
            "loader_done_s": 5.0,
            "all_ready_s": 22.0,
            "img_s_end_to_end": 15.0,
            "img_s_steady": 41.5,
            "tasks": 10,
            "task_p50_s": 1.1,
            "task_max_s": 7.0,
            "first_task_s": 7.0,
            "gap_p50_s": 0.9,
            "idle_between_tasks": 0.4,
            "img_s_in_task": 29.1,
            "cpu": _cpu(20.0),
            "worker_cpu_s_per_image": 0.05,
        },
        "freshness": {
            "trials": [{}, {}, {}],
            "vector_store": {"p50": 0.41, "max": 0.5, "missing": 0},
            "api": {"p50": 0.45, "max": 2.5, "missing": 0},
            "db_ready": {"p50": 0.4, "max": 0.5, "missing": 0},
            "pickup": {"p50": 0.1, "max": 0.2, "missing": 0},
            "task": {"p50": 0.3, "max": 0.3, "missing": 0},
        },
        "flush": {"after ingest": {"collection_rows": 303, "upsert_ms_p50": 14.44, "flush_ms_p50": 14.2}},
        "milvus_calls": {
            "after ingest": {"vectors": 303, "calls": calls},
            "full catalog": {"vectors": 5000, "calls": calls},
        },
        "scale": {
            "products": 5000,
            "vectors": 5000,
            "dim": 1280,
            "real_ingested": 300,
            "synthetic": 4697,
            "noise_norm": 0.3,
            "mean_cos_to_source": 0.957,
            "total_s": 40.0,
            "db_insert_s": 10.0,
            "vector_upsert_s": 20.0,
            "milvus_settle_s": 5.0,
        },
        "similar": {
            "cold": _load(85, 3.2, 8635.7, 18192.8),
            "warm": _load(2824, 2140.1, 19.4, 85.0) | {"prime_s": 12.0},
            "warm_set": 100,
            "cold_pool": 4300,
        },
        "search": {
            "sequential": _load(30, 8.8, 206.0, 377.0, concurrency=1)
            | {"category_precision_at_10": 0.5, "stages": _stages(), "query_kinds": {"detected": 28, "whole_photo": 2}},
            "concurrent": _load(30, 13.8, 264.6, 666.1, errors=1, concurrency=4) | {"stages": _stages(2.0)},
            "whole_sequential": _load(30, 9.0, 150.0, 300.0, concurrency=1) | {"stages": _stages()},
            "whole_concurrent": _load(30, 14.0, 240.0, 500.0, concurrency=4) | {"stages": _stages(2.0)},
            "image_bytes_avg": 153600,
            "photo": {"width": 1152, "height": 864, "quality": 88, "items": [1, 3], "item_pixels": [200, 400]},
            "detector": {"path": "tests/fixtures/tiny-detector", "model_version": "tiny-1", "fallback": True},
            "encode_for_worker": {"p50_ms": 6.0, "payload_bytes_avg": 40000},
            "broker": {"url": "filesystem://", "polling_interval_s": 0.05, "result_backend": "file"},
        },
    }


def _stages(scale: float = 1.0) -> dict:
    """Per-stage stats as stage_stats() makes them: p50 = the value, p99 = twice it."""
    values = {"decode": 15.0, "localize": 70.0, "detect": 20.0, "queue": 50.0, "embed": 60.0, "search": 40.0}
    values |= {"server": 185.0, "http": 21.0, "total": 206.0}
    return {k: {"n": 30, "p50": v * scale, "p99": 2 * v * scale, "mean": v * scale} for k, v in values.items()}


def test_fmt_and_met():
    assert fmt(3.14159) == "3.1"
    assert fmt(3.14159, ".2f") == "3.14"
    assert fmt(None) == "n/a"
    assert fmt(float("nan")) == "n/a"
    assert fmt("x", ".1f") == "x"
    assert met(True) == "**met**"
    assert met(False) == "**not met**"


def test_table_rows_apply_the_targets():
    rows = {row[0]: row for row in table_rows(_results())}
    assert list(rows) == [
        "Ingest (1 worker, concurrency 1)",
        "Freshness: save → searchable",
        "Milvus upsert+flush, 32 rows (after ingest)",
        "GET similar, cold (cache miss)",
        "GET similar, warm (cached)",
        "POST search, localized, sequential",
        "  stages, localized, c=1",
        "POST search, localized, concurrent",
        "  stages, localized, c=4",
        "POST search, whole_photo=true, sequential",
        "POST search, whole_photo=true, concurrent",
    ]
    assert rows["Ingest (1 worker, concurrency 1)"][2] == "41.5 img/s steady, 15.0 img/s end-to-end"
    assert rows["Ingest (1 worker, concurrency 1)"][4] == "**met**"
    assert rows["Freshness: save → searchable"][4] == "**not met**"  # the API took 2.5 s once (> 2 s)
    assert rows["Milvus upsert+flush, 32 rows (after ingest)"][1:] == [
        "303 vectors",
        "upsert 14.4 ms + flush 14.2 ms (p50)",
        "-",
        "-",
    ]
    cold = rows["GET similar, cold (cache miss)"]
    assert cold[1] == "85 req, c=32, 5,000 products"
    assert cold[2] == "3.2 req/s; p50 8635.7 / p90 13414.2 / p99 18192.8 ms; 0 errors"
    assert cold[3] == "≥ 2,000 req/s, p99 ≤ 100 ms"
    assert cold[4] == "**not met**"
    assert rows["GET similar, warm (cached)"][4] == "**met**"
    sequential = rows["POST search, localized, sequential"]
    assert sequential[1] == "30 req, c=1, 1152×864 JPEG"
    assert sequential[3:] == ["p50 ≤ 250 ms, p99 ≤ 600 ms", "**met**"]
    assert rows["  stages, localized, c=1"][2] == (
        "p50/p99 ms: decode 15/30, localize 70/140 (detect 20/40 + queue 50/100), embed 60/120, search 40/80, "
        "http 21/42"
    )
    assert rows["POST search, localized, concurrent"][1:] == [
        "30 req, c=4, 1152×864 JPEG",
        "13.8 req/s; p50 264.6 / p99 666.1 ms; 1 errors",
        "p50 ≤ 250 ms, p99 ≤ 600 ms",
        "**not met**",  # p50 264.6 > 250, p99 666.1 > 600 and an error
    ]
    assert rows["POST search, whole_photo=true, sequential"][3:] == ["-", "-"]  # the comparison row, no target


def test_render_table_aligns_columns_without_markdown():
    rows = [["a", "1", "fast", "-", "**met**"], ["longer name", "22", "slow", "≤ 2 s", "**not met**"]]
    lines = render_table(rows).splitlines()
    assert lines[0].split() == ["benchmark", "load", "result", "target", "status"]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    # widest of header and cells, two spaces between columns, the markdown bold dropped
    assert lines[2] == "a            1     fast    -       met    "
    assert lines[3] == "longer name  22    slow    ≤ 2 s   not met"
    assert markdown_table(rows)[:2] == ["| benchmark | load | result | target | status |", "|---|---|---|---|---|"]
    assert markdown_table(rows)[2] == "| a | 1 | fast | - | **met** |"


def test_report_markdown_has_every_section():
    args = argparse.Namespace(
        web_workers=4, threads=4, load_procs=1, concurrency=32, duration=5.0, warm_passes=16, prime_timeout=30.0
    )
    text = report_markdown(_results(), args, ["--quick"])
    assert text.startswith("# Benchmarks\n\nGenerated by `python -m benchmarks` on 2026-01-02 10:00 UTC (3.0 min).")
    assert "```\npython -m benchmarks --quick\n```" in text
    assert "- CPU: Test CPU, 2 cores (2 usable), RAM 8 GiB, GPU: none" in text
    for heading in (
        "## Machine",
        "## Results",
        "## Catalog and requests",
        "## Search by photo with localization",
        "## Milvus calls behind one similar-products cache miss",
        "## CPU by process during each run",
        "## What limits us",
        "## Notes",
        "## Phase timings",
    ):
        assert f"\n{heading}\n" in text
    assert "| Ingest (1 worker, concurrency 1) | 300 images | 41.5 img/s steady" in text
    assert "| query by product_id (rows_for_product) | 5.0 | 5.0 |" in text
    assert "| ingest | 20 | 80% | 0.40 | 0.00 | 0.20 | 0.10 | 0.05 | 0.03 | 0.03 |" in text
    assert "| · detect (the detector, in the worker) | 20.0 | 40.0 | 40.0 | 80.0 | 20.0 | 40.0 | 40.0 | 80.0 |" in text
    assert "sequential p50 206.0 / p99 377.0 ms **met**; at c=4 p50 264.6 / p99 666.1 ms **not met**." in text
    assert "`tests/fixtures/tiny-detector` (tiny-1) — the UNTRAINED tiny fixture" in text
    assert "one similar-products miss costs about 12 ms of it: at most ~83 misses/s" in text
    assert "Sanity check: 50% of the top-10 results share the category of an item in the photo." in text
    assert "30 1152×864 JPEGs (~150 KB, quality 88) made of 1–3 ingested Fashion-MNIST items (200–400 px)" in text
    assert text.endswith("setup 30 s, ingest 60 s, total 180 s\n")


def test_queue_paragraph_says_whether_the_worker_pays_for_itself():
    se = _results()["search"]
    text = queue_paragraph(se, 4)
    assert "the queue costs p50 50.0 ms (p99 100.0), 24% of the whole request" in text
    assert "the filesystem broker's hop to the worker (polling interval 50 ms)" in text
    slow_broker = se | {"sequential": se["sequential"] | {"stages": _stages() | {"queue": {"p50": 1600.0, "p99": 1.0}}}}
    assert "the worker's consume loop, not the polling, sets it" in queue_paragraph(slow_broker, 4)
    redis = se | {"broker": {"url": "redis://127.0.0.1:6379/13", "polling_interval_s": None}}
    assert "the broker hop (redis)" in queue_paragraph(redis, 4)
    assert "does not pay for itself" in text and "2.5×" in text  # queue 50 ms > detect 20 ms
    assert "total p50 at about 156 ms instead of 206 ms" in text and "each of the 4 gunicorn workers" in text
    slow_detector = se | {"sequential": se["sequential"] | {"stages": _stages() | {"detect": {"p50": 120.0}}}}
    assert "The detector's own time dominates: the queue adds 50.0 ms (24% of the request)" in queue_paragraph(
        slow_detector, 4
    )
    unlocalized = se | {"sequential": se["sequential"] | {"stages": {"total": {"p50": 1.0}}}}
    assert "no request was localized" in queue_paragraph(unlocalized, 4)
    assert search_photo_section({"search": se | {"sequential": se["sequential"] | {"stages": {}}}}) == []


def test_the_at_scale_section_judges_each_figure_and_replaces_itself_in_place(tmp_path):
    import json

    from benchmarks import at_scale

    similar = {"rps": 2500.0, "p50": 5.0, "p90": 9.0, "p99": 40.0, "errors": 0, "distinct_ids": 1000}
    slow = similar | {"rps": 300.0, "p99": 400.0, "distinct_ids": 90_000}
    (tmp_path / "scale.json").write_text(
        json.dumps({"sizes": [{"size": 1_000_000, "runs": {"similar": {"hot": similar, "uniform": slow}}}]})
    )
    winner = {
        "key": "IVF_SQ8",
        "label": "IVF_SQ8 (nlist=1024)",
        "search_params": {"nprobe": 16},
        "recall_at_10": 0.97,
        "c1_p50_ms": 6.0,
        "c1_p99_ms": 20.0,
        "c8_p50_ms": 30.0,
        "c8_qps": 250.0,
    }
    (tmp_path / "index_study.json").write_text(json.dumps({"winner": winner, "vectors": {"rows": 1_000_000}}))
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nbefore\n")

    assert at_scale.refresh(page)
    once = page.read_text()
    rows = [line for line in once.splitlines() if line.startswith(("| GET similar", "| Vector"))]
    assert ["**met**" in rows[0], "not met" in rows[1], "not met" in rows[2]] == [True, True, True]  # p50 6 > 5 ms
    assert "nprobe=16" in rows[2] and "1,000,000 vectors" in rows[2]

    page.write_text(once.replace("before", "edited by make bench"))
    assert at_scale.refresh(page)
    again = page.read_text()
    assert again.count(at_scale.BEGIN) == 1 and again.count(at_scale.END) == 1
    assert "edited by make bench" in again
    assert not at_scale.refresh(tmp_path / "missing.md")


def test_the_worker_keeps_enough_messages_in_hand_for_the_filesystem_brokers_2_s_cycle():
    import os

    from benchmarks.stack import start_worker_prefetch

    base = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    assert start_worker_prefetch(base) == 8  # make run's default broker
    assert start_worker_prefetch({**base, "CELERY_BROKER_URL": "filesystem://"}) == 8
    assert start_worker_prefetch({**base, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}) == 2
    assert start_worker_prefetch({**base, "CELERY_BROKER_URL": "redis://x", "CELERY_PREFETCH": "1"}) == 1


def test_the_benchmarks_worker_gets_what_make_run_gives_it_unless_told_otherwise():
    import os
    from types import SimpleNamespace

    from benchmarks.stack import worker_settings

    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    default = SimpleNamespace(args=SimpleNamespace(worker_prefetch=None, worker_torch_threads=None), env=env)
    assert worker_settings(default) == {"prefetch": 8, "torch_threads": 1}
    told = SimpleNamespace(args=SimpleNamespace(worker_prefetch=3, worker_torch_threads=2), env=env)
    assert worker_settings(told) == {"prefetch": 3, "torch_threads": 2}
