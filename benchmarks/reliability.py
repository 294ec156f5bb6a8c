"""`python -m benchmarks.reliability [--quick]`: every fault, load and input class tried, with its counts, written
to docs/reliability.md and docs/reliability.json.

1. Faults: tests/test_faults.py at full scale (FAULTS_SCALE=full: 300-image imports; --quick keeps the CI sizes),
   slow scenarios included; each test appends its outcome (requests, 5xx, clean 4xx/503, hung, lost before and after
   reconcile, duplicated vectors, partial rows/files, reconcile clean) to a JSON-lines file.
2. Load: the product's processes as `make run` starts them (benchmarks/stack.py: Milvus Lite server, the ingest and
   localize workers, gunicorn 2 x 4), a demo catalog, then for --seconds: --shoppers concurrent shoppers uploading
   photos to the visual search, catalog browsing, and an import running; latency percentiles per kind of request
   and the memory of every process sampled throughout (stable = no growth over the run).
3. Hostile inputs: the counts written by the hostile-corpus command to docs/hostile_inputs.json, when present.

The soak (`python -m benchmarks.soak --minutes N`) runs the same load for longer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks import stack
from benchmarks.harness import DOCS, ROOT, BenchError, Context, log
from benchmarks.loadgen import get_request, multipart_request, run_load, warm_all_workers

RELIABILITY_MD = DOCS / "reliability.md"
RELIABILITY_JSON = DOCS / "reliability.json"
HOSTILE_JSON = DOCS / "hostile_inputs.json"
HOSTILE_BEGIN, HOSTILE_END = "<!-- hostile-corpus:begin -->", "<!-- hostile-corpus:end -->"
MEMORY_GROWTH_LIMIT = (0.10, 48 * 1024 * 1024)  # stable: grew by at most 10% or 48 MB, whichever is larger
PROCESS_NAMES = ("gunicorn", "celery worker", "localize worker", "milvus-lite")


# Load ------------------------------------------------------------------------------------------
class MemorySampler:
    """Resident memory of each named process tree, sampled every `interval` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 2.0):
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        from tests.faults import tree_rss_bytes

        while not self._stop.is_set():
            now = time.monotonic() - self._t0
            for name, pid in self.pids.items():
                self.samples[name].append((now, tree_rss_bytes(pid)))
            self._stop.wait(self.interval)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=10)
        return {name: memory_trend(samples) for name, samples in self.samples.items()}


def memory_trend(samples: list[tuple[float, int]], warmup_share: float = 0.25) -> dict:
    """Start and end of a run's memory (medians of the first and last quarter after a warm-up share, when models
    load), the growth between them, and whether that is stable."""
    values = [rss for _, rss in samples if rss > 0]
    if len(values) < 8:
        return {"samples": len(values), "stable": None}
    steady = values[int(len(values) * warmup_share) :]
    quarter = max(1, len(steady) // 4)

    def median(xs: list[int]) -> float:
        ordered = sorted(xs)
        return float(ordered[len(ordered) // 2])

    start, end = median(steady[:quarter]), median(steady[-quarter:])
    growth = end - start
    share, floor = MEMORY_GROWTH_LIMIT
    return {
        "samples": len(values),
        "start_mb": start / 2**20,
        "end_mb": end / 2**20,
        "peak_mb": max(values) / 2**20,
        "growth_mb": growth / 2**20,
        "growth_pct": 100 * growth / start if start else 0.0,
        "stable": growth <= max(share * start, floor),
    }


def shopper_requests(count: int, seed: int = 5) -> list[bytes]:
    """Shoppers' photos: street-like JPEGs of 1-3 Fashion-MNIST items (localized by the detector) and a few plain
    product shots (searched whole), as multipart uploads to the visual search API."""
    from benchmarks.search import street_photo
    from ml.data.fashion_mnist import load_fashion_mnist
    from webapp.catalog.demo import item_png

    images, _ = load_fashion_mnist("test")
    rng = random.Random(seed)
    raws = []
    for n in range(count):
        if n % 4 == 3:
            content, kind = item_png(images[rng.randrange(len(images))]), ("png", "image/png")
        else:
            picks = [images[rng.randrange(len(images))] for _ in range(rng.randint(1, 3))]
            content, kind = street_photo(picks, rng)[0], ("jpg", "image/jpeg")
        raws.append(multipart_request("/api/search/", "image", f"shopper-{n}.{kind[0]}", content, kind[1]))
    return raws


def browse_requests(product_ids: list[int], category_ids: list[int], count: int = 400, seed: int = 6) -> list[bytes]:
    """Catalog browsing: the home page and its pages, category filters, product pages, the similar-products API."""
    rng = random.Random(seed)
    raws = []
    for _ in range(count):
        pick = rng.random()
        product = rng.choice(product_ids)
        if pick < 0.2:
            path = f"/?page={rng.randint(1, 3)}"
        elif pick < 0.4:
            path = f"/api/products/?category={rng.choice(category_ids)}"
        elif pick < 0.7:
            path = f"/products/{product}/"
        else:
            path = f"/api/products/{product}/similar/?k=12"
        raws.append(get_request(path))
    return raws


def write_import_csv(folder: Path, rows: int, first: int = 20_000) -> Path:
    """A merchant catalog of `rows` products (Fashion-MNIST items not in the demo catalog) with their image files."""
    import csv

    from ml.data.fashion_mnist import load_fashion_mnist
    from webapp.catalog.demo import CLASS_NAMES, item_png

    images, labels = load_fashion_mnist("train")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "import.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title", "price", "category", "image"])
        for index in range(first, first + rows):
            (folder / f"{index}.png").write_bytes(item_png(images[index]))
            name = CLASS_NAMES[int(labels[index])]
            writer.writerow([f"import-{index}", f"{name} {index}", "24.50", name, f"{index}.png"])
    return path


def classify(result: dict) -> dict:
    """A load run's errors split into server errors (5xx other than 503), clean refusals (4xx, 503) and hung
    requests (client timeout); connection errors count as server errors."""
    server = clean = hung = 0
    for kind, count in result["error_kinds"].items():
        if kind.isdigit():
            status = int(kind)
            if status >= 500 and status != 503:
                server += count
            else:
                clean += count
        elif kind == "TimeoutError":
            hung += count
        else:
            server += count
    return {
        "requests": result["ok"] + result["errors"],
        "ok": result["ok"],
        "server_errors": server,
        "clean_refusals": clean,
        "hung": hung,
        "error_kinds": result["error_kinds"],
        "error_samples": result["error_samples"],
        "rps": result["rps"],
        **{key: result[key] for key in ("p50", "p90", "p99", "max", "mean")},
    }


def mixed_load(
    port: int,
    shoppers: list[bytes],
    browsing: list[bytes],
    *,
    concurrency: int,
    browsers: int,
    seconds: float,
    timeout: float,
) -> dict[str, dict]:
    """`concurrency` shoppers uploading photos and `browsers` clients browsing, at once, for `seconds`."""
    results: dict[str, dict] = {}

    def shop():
        results["shoppers"] = run_load(
            port,
            shoppers,
            concurrency=concurrency,
            duration=seconds,
            procs=2,
            distinct=False,
            timeout=timeout,
            validate=False,
        )

    def browse():
        results["browsing"] = run_load(
            port,
            browsing,
            concurrency=browsers,
            duration=seconds,
            procs=1,
            distinct=False,
            timeout=timeout,
            validate=False,
        )

    threads = [threading.Thread(target=shop), threading.Thread(target=browse)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: classify(result) for name, result in results.items()}


def stack_args(args) -> SimpleNamespace:
    """What benchmarks/stack.py reads, set as `make run` starts the product (gunicorn 2 workers x 4 threads)."""
    return SimpleNamespace(
        var_dir=args.var_dir,
        keep=False,
        broker_url="filesystem://",
        image_size=None,
        detector="models/detector-default",
        worker_prefetch=2,
        worker_torch_threads=None,
        localize_torch_threads=None,
        web_workers=2,
        threads=4,
        access_log=True,
        web_torch_threads=None,
        only="",
        wait_idle=args.wait_idle,
        idle_threshold=0.25,
        settle_timeout=120.0,
    )


def start_product(args) -> Context:
    ctx = Context(stack_args(args))
    stack.prepare_dirs(ctx)
    stack.wait_machine_quiet(ctx)
    stack.start_stack(ctx)
    return ctx


def process_pids(ctx: Context) -> dict[str, int]:
    return {name: process.pid for name, process, _ in ctx.stack.procs if name in PROCESS_NAMES}


def wait_ingested(timeout: float) -> dict[str, int]:
    """Poll until no image is pending or processing (or the timeout); the catalog state then."""
    from tests.faults import catalog_state

    deadline = time.monotonic() + timeout
    while True:
        state = catalog_state()
        if state["pending"] + state["processing"] == 0 or time.monotonic() > deadline:
            return state
        time.sleep(2.0)


def import_outcome(ctx: Context, rows: int, timeout: float, started: float) -> dict:
    """The import that ran under load, counted like a fault scenario: lost (before and after reconcile),
    duplicated vectors, partial rows/files, and a reconcile check."""
    from tests.faults import catalog_state, partial_files, reconcile, vector_counts
    from webapp.catalog.models import ProductImage
    from webapp.search.registry import get_vector_store

    state = wait_ingested(timeout)
    found = reconcile(stuck_after_seconds=0.0)
    lost_before = found["stuck"] + found["missing"]
    if not found["clean"]:
        reconcile(stuck_after_seconds=0.0, repair=True)
        state = wait_ingested(timeout)
    check = reconcile(stuck_after_seconds=0.0)
    counts = vector_counts(get_vector_store())
    files = partial_files(Path(ctx.settings.MEDIA_ROOT))
    imported = ProductImage.objects.filter(product__sku__startswith="import-").count()
    state = catalog_state()
    return {
        "scenario": f"import of {rows} rows during the load (its ingestion competing with the shoppers)",
        "kind": "load",
        "broker": "filesystem",
        "requests": 0,
        "server_errors": 0,
        "clean_refusals": 0,
        "hung": 0,
        "images": state["images"],
        "ready": state["ready"],
        "lost_before_reconcile": lost_before,
        "lost": state["images"] - state["ready"] - state["failed"],
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "partial": len(files["rows_without_files"]) + len(files["files_without_rows"]),
        "reconcile_clean": bool(check["clean"]),
        "duration_s": round(time.monotonic() - started, 1),
        "notes": [f"{imported}/{rows} imported rows' images; {state['failed']} failed with a reason"],
    }


def run_load_phase(args) -> tuple[list[dict], dict]:
    """Start the product, load the demo catalog, then shoppers + browsing + an import for args.seconds."""
    ctx = start_product(args)
    try:
        stack.manage(ctx, "load_demo_catalog", "--size", str(args.catalog))
        log(f"load: waiting for the {args.catalog}-product demo catalog to be ingested ...")
        state = wait_ingested(60 + 2 * args.catalog)
        log(f"load: catalog {state}")
        from webapp.catalog.models import Category, Product

        product_ids = list(Product.objects.values_list("pk", flat=True)[:500])
        category_ids = list(Category.objects.values_list("pk", flat=True))
        shoppers = shopper_requests(64)
        browsing = browse_requests(product_ids, category_ids)
        sent, took = warm_all_workers(ctx.web_port, shoppers[:8] + browsing[:8], 2, budget_s=180)
        log(f"load: warmed with {sent} requests in {took:.0f}s; memory sampling starts")
        sampler = MemorySampler(process_pids(ctx)).start()
        csv_path = write_import_csv(ctx.var_dir / "import", args.import_rows)
        importer = threading.Timer(
            min(5.0, args.seconds / 4),
            lambda: stack.manage(ctx, "import_catalog", str(csv_path), timeout=args.seconds + 600),
        )
        t0 = time.monotonic()
        importer.start()
        log(f"load: {args.shoppers} shoppers uploading photos + {args.browsers} browsing + an import, {args.seconds}s")
        kinds = mixed_load(
            ctx.web_port,
            shoppers,
            browsing,
            concurrency=args.shoppers,
            browsers=args.browsers,
            seconds=args.seconds,
            timeout=args.client_timeout,
        )
        importer.join()
        memory = sampler.stop()
        rows = [_load_row(f"{args.shoppers} shoppers uploading photos (POST /api/search/)", kinds["shoppers"], args)]
        rows.append(_load_row(f"{args.browsers} clients browsing the catalog", kinds["browsing"], args))
        rows.append(import_outcome(ctx, args.import_rows, timeout=120 + 3 * args.import_rows, started=t0))
        detail = {"kinds": kinds, "memory": memory, "seconds": args.seconds, "catalog": args.catalog}
        for row in rows[:2]:
            log(f"load: {row['scenario']}: {row['notes']}")
        for name, trend in memory.items():
            log(f"load: memory {name}: {trend}")
        return rows, detail
    finally:
        ctx.stack.stop_all()


def _load_row(scenario: str, kind: dict, args) -> dict:
    return {
        "scenario": scenario,
        "kind": "load",
        "broker": "filesystem",
        "requests": kind["requests"],
        "server_errors": kind["server_errors"],
        "clean_refusals": kind["clean_refusals"],
        "hung": kind["hung"],
        "duration_s": args.seconds,
        "notes": [
            f"p50 {kind['p50']:.0f} / p90 {kind['p90']:.0f} / p99 {kind['p99']:.0f} ms, {kind['rps']:.1f} req/s; "
            f"refusals {kind['error_kinds'] or 'none'}"
        ],
    }


# Faults and hostile inputs ---------------------------------------------------------------------
def run_fault_tests(args) -> tuple[list[dict], int]:
    """tests/test_faults.py (slow scenarios included) in a fresh state dir; each test appends its outcome."""
    var_dir = Path(args.var_dir) / "faults"
    results = var_dir / "outcomes.jsonl"
    if var_dir.exists():
        import shutil

        shutil.rmtree(var_dir)
    var_dir.mkdir(parents=True)
    env = dict(os.environ, VAR_DIR=str(var_dir / "var"), FAULTS_RESULTS=str(results))
    if not args.quick:
        env["FAULTS_SCALE"] = "full"
    (var_dir / "var").mkdir()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_faults.py", "-rA"]
    log(f"faults: {' '.join(command[2:])} ({'CI sizes' if args.quick else 'full scale'}) ...")
    with open(var_dir / "pytest.log", "w") as output:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    log(f"faults: pytest exit {code}, {len(rows)} outcomes (log {var_dir / 'pytest.log'})")
    return rows, code


def hostile_rows(path: Path = HOSTILE_JSON) -> list[dict]:
    """Rows from the hostile-corpus command's JSON ({"classes": [...]} or a list), one per input class."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    entries = data.get("classes", data.get("rows", [])) if isinstance(data, dict) else data
    rows = []
    for entry in entries:
        rows.append(
            {
                "scenario": f"hostile input: {entry.get('name') or entry.get('class')}",
                "kind": "input",
                "broker": "-",
                "requests": int(entry.get("requests", entry.get("cases", 0))),
                "server_errors": int(entry.get("server_errors", 0)),
                "clean_refusals": int(entry.get("clean_refusals", entry.get("refused", 0))),
                "hung": int(entry.get("hung", 0)),
                "partial": int(entry.get("partial", 0)),
                "wrong": int(entry.get("wrong", 0)),  # accepted what must be refused, or the other way round
                "notes": [str(entry["notes"])] if entry.get("notes") else [],
            }
        )
    return rows


# Report ----------------------------------------------------------------------------------------
COLUMNS = (
    ("kind", "Class"),
    ("scenario", "Fault, load or input"),
    ("broker", "Broker"),
    ("requests", "Requests"),
    ("server_errors", "5xx"),
    ("clean_refusals", "Clean 4xx/503"),
    ("hung", "Hung"),
    ("lost", "Lost (before reconcile)"),
    ("duplicated", "Duplicated"),
    ("partial", "Partial"),
    ("reconcile_clean", "Reconcile clean"),
    ("duration_s", "Duration s"),
)


def row_ok(row: dict) -> bool:
    """Every count that must be zero is zero, and reconcile (where it ran) ended clean."""
    zero = ("server_errors", "hung", "lost", "duplicated", "partial", "wrong")
    return all(not row.get(key) for key in zero) and row.get("reconcile_clean") is not False


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if key == "lost":
        if row.get("kind") == "input" or ("images" not in row and not row.get("lost_before_reconcile")):
            return "-"
        return f"{value or 0} ({row.get('lost_before_reconcile', 0)})"
    if key == "reconcile_clean":
        return "-" if value is None else ("yes" if value else "**NO**")
    if value is None or value == "":
        return "-"
    if key in ("server_errors", "hung", "duplicated", "partial") and value:
        return f"**{value}**"
    return str(value)


def machine_line(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine)
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, "
        f"GPU {machine.get('gpu', 'none')}"
    )


def markdown(results: dict) -> str:
    rows = results["rows"]
    lines = [
        "# Reliability",
        "",
        f"Written by `python -m benchmarks.reliability{' --quick' if results['quick'] else ''}` on "
        f"{results['finished']} ({machine_line(results['machine'])}). Every fault is injected into real processes "
        "(a Milvus Lite server, redis-server, a PostgreSQL cluster, Celery workers, gunicorn); `make test` runs "
        "the fast subset of tests/test_faults.py on every change.",
        "",
        "**Lost (before reconcile)**: images neither ready nor failed with a reason at the end; in brackets, "
        "the images the fault left with no task to finish them (or ready without a vector) before "
        "`reconcile_vectors --repair` re-queued them. **Duplicated**: image ids with more than one vector. "
        "**Partial**: rows without their file plus files without their row. **Clean 4xx/503**: refusals "
        "with a reason (a 503 carries Retry-After), counted apart from 5xx server errors. **Hung**: requests "
        "that did not answer within the client timeout.",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " | OK |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for row in rows:
        ok = "yes" if row_ok(row) else "**NO**"
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + f" | {ok} |")
    lines += ["", "Notes per row:", ""]
    for row in rows:
        if row.get("notes"):
            lines.append(
                f"- {row['scenario']}{' (' + row['broker'] + ')' if row.get('broker', '-') != '-' else ''}: "
                + "; ".join(row["notes"])
            )
    load = results.get("load")
    if load:
        lines += ["", f"## Load: {load['seconds']:.0f} s against `make run`'s processes", ""]
        lines += [
            "| Requests | OK | 5xx | Clean 4xx/503 | Hung | p50 ms | p90 ms | p99 ms | max ms | req/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, kind in load["kinds"].items():
            lines.append(
                f"| {name} | {kind['ok']} | {kind['server_errors']} | {kind['clean_refusals']} | {kind['hung']} | "
                f"{kind['p50']:.0f} | {kind['p90']:.0f} | {kind['p99']:.0f} | {kind['max']:.0f} | {kind['rps']:.1f} |"
            )
        lines += [
            "",
            "Memory of every process (resident, its children included; start and end are the medians of the first "
            "and last quarter after the first quarter of the run, when models load):",
            "",
            "| Process | Start MB | End MB | Peak MB | Growth MB | Growth % | Stable |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, trend in load["memory"].items():
            if trend.get("stable") is None:
                lines.append(f"| {name} | - | - | - | - | - | too few samples |")
                continue
            lines.append(
                f"| {name} | {trend['start_mb']:.0f} | {trend['end_mb']:.0f} | {trend['peak_mb']:.0f} | "
                f"{trend['growth_mb']:+.0f} | {trend['growth_pct']:+.1f} | {'yes' if trend['stable'] else '**NO**'} |"
            )
    lines += [
        "",
        "## How to run",
        "",
        "```bash",
        "python -m benchmarks.reliability            # every scenario at full scale and the 60 s load (this page)",
        "python -m benchmarks.reliability --quick    # CI-sized scenarios and a 20 s load",
        "python -m benchmarks.soak --minutes 30      # the same load for longer: per-minute latency and memory",
        "make test                                   # CI: the fast subset of tests/test_faults.py",
        "```",
        "",
        "How a lost message is recovered: the filesystem broker deletes a message when it hands it to a worker and "
        "Redis keeps it unacknowledged until its visibility timeout (an hour), so a worker killed mid-task leaves its "
        "image pending with no task; a message that could not be published (broker down when the row was saved) is "
        "logged and leaves the image pending. `manage.py reconcile_vectors --repair` (run periodically by Celery "
        "beat) re-queues images pending longer than RECONCILE_STUCK_MINUTES; ingestion is idempotent per image id, "
        "so a re-queued image that was in fact still queued is not duplicated.",
    ]
    return "\n".join(lines) + "\n"


def write_docs(results: dict) -> None:
    text = markdown(results)
    if RELIABILITY_MD.exists():  # keep the hostile-corpus section its own command writes
        old = RELIABILITY_MD.read_text()
        if HOSTILE_BEGIN in old and HOSTILE_END in old:
            section = old[old.index(HOSTILE_BEGIN) : old.index(HOSTILE_END) + len(HOSTILE_END)]
            text += "\n## Hostile input\n\n" + section + "\n"
    RELIABILITY_MD.write_text(text)
    RELIABILITY_JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {RELIABILITY_MD.relative_to(ROOT)} and {RELIABILITY_JSON.relative_to(ROOT)}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized fault scenarios and a 20 s load")
    parser.add_argument("--skip-faults", action="store_true", help="keep the fault rows of the last run")
    parser.add_argument("--skip-load", action="store_true", help="keep the load rows of the last run")
    parser.add_argument("--seconds", type=float, default=None, help="load duration (60, or 20 with --quick)")
    parser.add_argument("--shoppers", type=int, default=50, help="concurrent shoppers uploading photos")
    parser.add_argument("--browsers", type=int, default=8, help="concurrent clients browsing the catalog")
    parser.add_argument("--catalog", type=int, default=None, help="demo catalog size (1000, or 300 with --quick)")
    parser.add_argument("--import-rows", type=int, default=None, help="rows imported during the load (100 / 30)")
    parser.add_argument("--client-timeout", type=float, default=60.0, help="a request slower than this hung")
    parser.add_argument("--wait-idle", type=float, default=60.0, help="max seconds to wait for a quiet machine")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "reliability"))
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    args.catalog = args.catalog or (300 if args.quick else 1000)
    args.import_rows = args.import_rows or (30 if args.quick else 100)
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import machine_description

    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    previous = json.loads(RELIABILITY_JSON.read_text()) if RELIABILITY_JSON.exists() else {"rows": [], "load": None}
    rows: list[dict] = []
    code = 0
    if args.skip_faults:  # keep the last run's fault rows
        rows += [row for row in previous["rows"] if row.get("kind") == "fault"]
    else:
        fault_rows, code = run_fault_tests(args)
        rows += fault_rows
    load = previous.get("load") if args.skip_load else None
    if args.skip_load:
        rows += [row for row in previous["rows"] if row.get("kind") == "load"]
    else:
        try:
            load_rows, load = run_load_phase(args)
            rows += load_rows
        except BenchError as exc:
            log(f"load: FAILED: {exc}")
            code = code or 1
    rows += hostile_rows()
    if not HOSTILE_JSON.exists():
        log(f"hostile inputs: {HOSTILE_JSON.relative_to(ROOT)} not found (written by python -m tests.hostile_corpus)")
    results = {
        "quick": args.quick,
        "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_description(),
        "pytest_exit": code,
        "rows": rows,
        "load": load,
    }
    write_docs(results)
    failed = [row["scenario"] for row in rows if not row_ok(row)]
    for name in failed:
        log(f"NOT OK: {name}")
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
