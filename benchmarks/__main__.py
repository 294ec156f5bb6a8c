"""`python -m benchmarks [options]` (make bench): arguments, the phases in order, the results and the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import signal
import sys
import time

import benchmarks
from benchmarks import stack
from benchmarks.catalog_scale import scale_catalog
from benchmarks.freshness import bench_freshness
from benchmarks.harness import ROOT, BenchError, Context, log
from benchmarks.ingest import bench_ingest
from benchmarks.milvus_calls import bench_flush, bench_milvus_calls
from benchmarks.search import bench_search
from benchmarks.similar import bench_similar

QUICK = {
    "ingest": 300,
    "catalog": 5000,
    "duration": 5.0,
    "search_requests": 30,
    "fresh_trials": 3,
    "warm_set": 100,
    "prime_timeout": 30.0,
}


def _add_load_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --ingest 300 --catalog 5000 --duration 5 --search-requests 30 --fresh-trials 3",
    )
    parser.add_argument("--ingest", type=int, default=2000, help="real Fashion-MNIST items ingested through the worker")
    parser.add_argument("--catalog", type=int, default=100_000, help="products in the similar-products gallery")
    parser.add_argument("--noise", type=float, default=0.3, help="norm of the Gaussian noise added to copied vectors")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the similar-products runs")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per similar-products run")
    parser.add_argument("--load-procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--warm-set", type=int, default=200, help="ids in the warm (cached) set")
    parser.add_argument(
        "--warm-passes", type=int, default=None, help="priming passes over the warm set (default: 4 x gunicorn workers)"
    )
    parser.add_argument("--prime-timeout", type=float, default=90.0, help="max seconds to prime the warm set")
    parser.add_argument("--search-requests", type=int, default=100)
    parser.add_argument("--search-concurrency", type=int, default=4)
    parser.add_argument("--search-timeout", type=float, default=120.0, help="max seconds for the concurrent search run")
    parser.add_argument("--fresh-trials", type=int, default=5)
    parser.add_argument("--fresh-timeout", type=float, default=30.0)


def _add_stack_args(parser: argparse.ArgumentParser) -> None:
    cores = os.cpu_count() or 1
    parser.add_argument("--web-workers", type=int, default=2 * cores, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gunicorn access log to a file, as scripts/run.sh does",
    )
    parser.add_argument("--image-size", type=int, default=None, help="EMBEDDER_IMAGE_SIZE for worker and web")
    parser.add_argument("--worker-torch-threads", type=int, default=None, help="TORCH_NUM_THREADS for the worker")
    parser.add_argument("--web-torch-threads", type=int, default=None, help="TORCH_NUM_THREADS for gunicorn")
    parser.add_argument(
        "--worker-prefetch",
        type=int,
        default=None,
        help="celery --prefetch-multiplier (CELERY_PREFETCH; default: workers/start_worker.sh's for the broker)",
    )
    parser.add_argument(
        "--detector",
        default="models/detector-default",
        help="detector artifact (DETECTOR_ARTIFACT_DIR) for the localize worker; the default falls back, with a "
        "warning, to the untrained tests/fixtures/tiny-detector while it does not exist",
    )
    parser.add_argument("--localize-torch-threads", type=int, default=None, help="TORCH_NUM_THREADS, localize worker")
    parser.add_argument(
        "--fresh-gap", type=float, default=3.0, help="seconds between freshness trials so each finds the worker idle"
    )
    parser.add_argument(
        "--broker-url",
        default="filesystem://",
        help="Celery broker (isolated filesystem queue "
        "under VAR_DIR by default; a shared Redis would mix with other workers)",
    )
    parser.add_argument("--ingest-timeout", type=float, default=None, help="default: 60 s + 0.5 s per image")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="max seconds to wait for Milvus Lite's background index build",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120.0,
        help="max seconds to wait for other load on the machine to drop before starting",
    )
    parser.add_argument("--idle-threshold", type=float, default=0.25, help="machine busy fraction counted as quiet")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--keep", action="store_true", help="do not wipe --var-dir first")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated phases to run (ingest always runs): "
        "freshness, flush_small, milvus_calls_small, scale, flush_large, milvus_calls, similar, "
        "search; "
        "implies --no-report",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md and the PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=benchmarks.__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_load_args(parser)
    _add_stack_args(parser)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.only:
        args.no_report = True
    if args.warm_passes is None:
        args.warm_passes = 4 * args.web_workers
    if args.ingest_timeout is None:
        args.ingest_timeout = 60 + 0.5 * args.ingest
    if not 1 <= args.ingest <= 70_000:
        parser.error("--ingest must be between 1 and 70000 (Fashion-MNIST size)")
    if args.catalog < args.ingest + args.warm_set + 400:
        parser.error("--catalog must leave room for the warm set and the cold pool (>= ingest + warm-set + 400)")
    return args


def phases(ctx: Context) -> list[tuple[str, object]]:
    def flush_large():
        bench_flush(ctx, "full catalog")
        stack.wait_milvus_idle(ctx)

    return [
        ("ingest", lambda: bench_ingest(ctx)),
        ("freshness", lambda: bench_freshness(ctx)),
        ("flush_small", lambda: bench_flush(ctx, "after ingest")),
        ("milvus_calls_small", lambda: bench_milvus_calls(ctx, "after ingest")),
        ("scale", lambda: scale_catalog(ctx)),
        ("flush_large", flush_large),
        ("milvus_calls", lambda: bench_milvus_calls(ctx, "full catalog")),
        ("similar", lambda: bench_similar(ctx)),
        ("search", lambda: bench_search(ctx)),
    ]


def run(ctx: Context) -> None:
    stack.prepare_dirs(ctx)
    stack.wait_machine_quiet(ctx)
    started = time.monotonic()
    ctx.results["started"] = dt.datetime.now(dt.UTC)
    stack.start_stack(ctx)
    ctx.results["phases"]["setup_s"] = time.monotonic() - started
    only = set(ctx.args.only.split(",")) if ctx.args.only else None
    for name, phase in phases(ctx):
        if only is not None and name not in only and name != "ingest":
            continue  # everything needs the ingested items
        t0 = time.monotonic()
        phase()
        ctx.results["phases"][f"{name}_s"] = time.monotonic() - t0
    ctx.results["phases"]["total_s"] = time.monotonic() - started


def _display(path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def finish(ctx: Context, argv: list[str]) -> None:
    """Describe the run, print the table, write results.json and (unless --no-report) the docs."""
    from benchmarks.report import machine_description, write_report
    from benchmarks.table import print_table, table_rows

    args, r, settings = ctx.args, ctx.results, ctx.settings
    r["machine"] = machine_description()
    r["args_web_workers"] = args.web_workers
    r["cache"] = "Redis" if settings.CACHE_URL.startswith("redis") else "per-process local-memory"
    results_json = ctx.var_dir / "results.json"
    if args.only:
        results_json.write_text(json.dumps(r, default=str, indent=1))
        if "search" in r:
            from benchmarks.report import search_photo_section
            from benchmarks.table import search_rows

            r.setdefault("args_web_workers", args.web_workers)
            print_table(search_rows(r))
            section = ctx.var_dir / "search.md"
            section.write_text("\n".join(search_photo_section(r)))
            print("\n".join(search_photo_section(r)))
            log(f"the search-by-photo section as the report renders it: {section}")
        log(f"partial run (--only {args.only}); raw numbers in {results_json}")
        return
    from webapp.search.registry import active_version

    served = active_version(fresh=True)
    r["embedder"] = (
        f"{served.model_version if served is not None else 'no active model version'} (the model served), "
        f"batch {settings.EMBEDDER_BATCH_SIZE}, CPU"
    )
    print_table(table_rows(r))
    results_json.write_text(json.dumps(r, default=str, indent=1))
    if not args.no_report:
        path = write_report(r, args, argv)
        log(f"wrote {_display(path)} and docs/benchmarks_latency.png (raw numbers: {_display(results_json)})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ctx = Context(parse_args(argv))

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background, where SIGINT is ignored
    try:
        run(ctx)
        finish(ctx, argv)
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything this benchmark started ...")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        ctx.stack.stop_all()
        for child in mp.active_children():
            child.terminate()
        log("all benchmark processes stopped")


if __name__ == "__main__":
    sys.exit(main())
