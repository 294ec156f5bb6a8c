"""`python -m benchmarks.soak --minutes N [--shoppers 50] [--url http://127.0.0.1:8000]`: the reliability load, held.

Shoppers uploading photos to the visual search and clients browsing the catalog, window after window (a line per
window: requests, server errors, clean refusals, hung requests, latency percentiles, the memory of every process),
with an import running at the start. Against a running `make run` (--url; its processes are found by their command
lines) or a stack of the product's processes that it starts itself (benchmarks/stack.py, in var/soak). Bounded: it
stops after --minutes, and fails (exit 1) on a server error, a hung request or a process whose memory kept growing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil

from benchmarks import stack
from benchmarks.harness import ROOT, log
from benchmarks.loadgen import get_request, http_call, warm_all_workers
from benchmarks.reliability import (
    MemorySampler,
    browse_requests,
    memory_trend,
    mixed_load,
    process_pids,
    shopper_requests,
    start_product,
    wait_ingested,
    write_import_csv,
)

MAX_MINUTES = 24 * 60


def running_product_pids() -> dict[str, int]:
    """The top process of each part of a running `make run` in this checkout (gunicorn master, each Celery worker,
    the Milvus Lite server), found by command line; memory is summed over each one's children."""
    found: dict[str, int] = {}
    for process in psutil.process_iter(["pid", "ppid", "cmdline", "cwd"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["cwd"] != str(ROOT) and "milvus-lite" not in cmdline:
            continue
        if "gunicorn" in cmdline and "webapp.wsgi" in cmdline:
            name = "gunicorn"
        elif "celery" in cmdline and "webapp" in cmdline and " worker" in cmdline:
            name = "localize worker" if " localize" in cmdline else "celery worker"
        elif "milvus-lite" in cmdline and " server" in cmdline:
            name = "milvus-lite"
        else:
            continue
        if name not in found or process.info["pid"] < found[name]:  # the parent started first
            found[name] = process.info["pid"]
    return found


def catalog_ids(port: int) -> tuple[list[int], list[int]]:
    """Product and category ids through the public API (works against any running product)."""
    products, categories = [], set()
    for page in range(1, 6):
        status, body = http_call(port, get_request(f"/api/products/?page={page}"), timeout=60)
        if status != 200:
            break
        for product in json.loads(body)["results"]:
            products.append(int(product["id"]))
            category = product.get("category")
            if isinstance(category, dict) and "id" in category:
                categories.add(int(category["id"]))
    return products, sorted(categories) or [1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help=f"how long to hold the load (<= {MAX_MINUTES})")
    parser.add_argument("--shoppers", type=int, default=50, help="concurrent shoppers uploading photos")
    parser.add_argument("--browsers", type=int, default=8, help="concurrent clients browsing the catalog")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    parser.add_argument("--url", default="", help="a running `make run` on this machine (default: start a stack)")
    parser.add_argument("--catalog", type=int, default=1000, help="demo catalog size of a stack it starts")
    parser.add_argument("--import-rows", type=int, default=100, help="rows imported at the start (0: none)")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="a request slower than this hung")
    parser.add_argument("--wait-idle", type=float, default=60.0)
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "soak"))
    parser.add_argument("--out", default="", help="JSON results (default: VAR_DIR/soak.json)")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES}]")
    return args


def _import(args, csv_path: Path, env: dict | None) -> subprocess.Popen:
    log_path = Path(args.var_dir) / "import.log"
    with open(log_path, "w") as log_file:
        return subprocess.Popen(
            [sys.executable, "manage.py", "import_catalog", str(csv_path)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    Path(args.var_dir).mkdir(parents=True, exist_ok=True)
    ctx = None
    if args.url:
        target = urlparse(args.url)
        if target.hostname not in ("127.0.0.1", "localhost"):
            raise SystemExit("--url must be a product running on this machine (127.0.0.1)")
        port, env, pids = target.port or 80, None, running_product_pids()
    else:
        ctx = start_product(args)
        stack.manage(ctx, "load_demo_catalog", "--size", str(args.catalog))
        wait_ingested(60 + 2 * args.catalog)
        port, env, pids = ctx.web_port, ctx.env, process_pids(ctx)
    try:
        products, categories = catalog_ids(port)
        if not products:
            raise SystemExit("the catalog is empty: load it first (make run loads the demo catalog)")
        shoppers = shopper_requests(64)
        browsing = browse_requests(products, categories)
        warm_all_workers(port, shoppers[:8] + browsing[:8], 2, budget_s=180)
        log(f"soak: {args.minutes:g} min, {args.shoppers} shoppers + {args.browsers} browsing; processes {pids}")
        sampler = MemorySampler(pids, interval=5.0).start()
        importer = None
        if args.import_rows:
            csv_path = write_import_csv(Path(args.var_dir) / "import", args.import_rows, first=30_000)
            importer = _import(args, csv_path, env)
        windows, deadline = [], time.monotonic() + 60 * args.minutes
        while time.monotonic() < deadline:
            seconds = min(args.window, max(5.0, deadline - time.monotonic()))
            kinds = mixed_load(
                port,
                shoppers,
                browsing,
                concurrency=args.shoppers,
                browsers=args.browsers,
                seconds=seconds,
                timeout=args.client_timeout,
            )
            rss = {name: samples[-1][1] / 2**20 for name, samples in sampler.samples.items() if samples}
            windows.append({"kinds": kinds, "rss_mb": rss})
            parts = [
                f"{name}: {k['requests']} req, {k['server_errors']} 5xx, {k['clean_refusals']} refused, "
                f"{k['hung']} hung, p50 {k['p50']:.0f} p99 {k['p99']:.0f} ms"
                for name, k in kinds.items()
            ]
            log(f"soak window {len(windows)}: " + "; ".join(parts))
            log("  memory MB: " + ", ".join(f"{name} {mb:.0f}" for name, mb in rss.items()))
        memory = sampler.stop()
        if importer is not None:
            importer.wait(timeout=600)
    finally:
        if ctx is not None:
            ctx.stack.stop_all()
    totals = {
        key: sum(w["kinds"][kind][key] for w in windows for kind in w["kinds"])
        for key in ("requests", "server_errors", "clean_refusals", "hung")
    }
    unstable = [name for name, trend in memory.items() if trend.get("stable") is False]
    result = {"args": vars(args), "totals": totals, "memory": memory, "windows": windows}
    out = Path(args.out or Path(args.var_dir) / "soak.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"soak: {totals}; memory {'stable' if not unstable else 'GREW in ' + ', '.join(unstable)}; wrote {out}")
    return 1 if totals["server_errors"] or totals["hung"] or unstable else 0


__all__ = ["main", "memory_trend", "running_product_pids"]

if __name__ == "__main__":
    sys.exit(main())
