"""`GET /api/products/{id}/similar/` under wrk: throughput and latency for a mix of product ids, per gunicorn setup.

    python -m benchmarks.serving_load --url http://127.0.0.1:8100 --ids ids.txt --mix hot zipf uniform
    python -m benchmarks.serving_load --serve sync:2 gthread:2x4 --port 8100 --id-range 1-100000 --out run.json

The id mixes (each a fixed, seeded sequence of ids that wrk's Lua script walks through, each wrk thread from its
own offset; the ids are shuffled first so popularity has nothing to do with id order):
- hot: uniform over --hot ids (a front page's products: after the warm-up, every request is a cache hit);
- zipf: rank r drawn with probability proportional to r^-s over every id (--zipf-s; a catalog's long tail:
  popular products hit, the tail misses until it is cached);
- uniform: any id alike (over a large catalog, mostly misses: Django builds each body from the stored list).

Every mix is first run unmeasured for --warmup seconds (filling the caches), then measured for --duration seconds
with --connections keep-alive connections on --threads wrk threads. With --serve, each gunicorn setup
(`sync:W` or `gthread:WxT`) is started on --port with docker/gunicorn.conf.py (environment passed through:
DATABASE_URL, CACHE_URL, ...), checked, measured with every mix and stopped. The CPU of gunicorn, wrk and the
rest of the machine and the load average (start and end) are recorded beside each run. Results: one JSON file
(--out) and a table on stdout. Run it under `flock /work/helpers/bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.harness import ROOT, VENV_BIN, BenchError, CpuMeter, Stack, cpu_shares, log, wait_port

WRK = os.environ.get("WRK", "/usr/bin/wrk")
PATH = "/api/products/{}/similar/"
SEQUENCE_LENGTH = 400_000  # ids per mix sequence: longer than any run's request count at the target rates
RESULT_MARK = "SERVING_LOAD_RESULT "

LUA = r"""
-- Walks a fixed sequence of product ids (one per line in the file given as the first script argument).
local ids, n, pos = {}, 0, 0
local counter = 0

function setup(thread)
  thread:set("thread_index", counter)
  counter = counter + 1
end

function init(args)
  for line in io.lines(args[1]) do
    n = n + 1
    ids[n] = line
  end
  query = args[2] or ""
  pos = (thread_index * 104729) % n
end

function request()
  pos = pos + 1
  if pos > n then pos = 1 end
  return wrk.format("GET", "/api/products/" .. ids[pos] .. "/similar/" .. query)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d},"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,'
    .. '"p999":%d}}\n',
    "SERVING_LOAD_RESULT ", summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


# Ids and mixes -------------------------------------------------------------------------------------------------
def read_ids(args) -> list[int]:
    if args.ids:
        ids = [int(line) for line in Path(args.ids).read_text().split() if line.strip()]
    else:
        first, _, last = args.id_range.partition("-")
        ids = list(range(int(first), int(last) + 1))
    if not ids:
        raise BenchError("no product ids given")
    return ids


def mix_sequence(ids: list[int], mix: str, *, hot: int, zipf_s: float, seed: int) -> list[int]:
    """The ids wrk requests, in order: `mix` over `ids` ranked by a seeded shuffle."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ranked = np.asarray(ids, dtype=np.int64)[rng.permutation(len(ids))]
    if mix == "hot":
        picks = rng.integers(0, min(hot, len(ranked)), size=SEQUENCE_LENGTH)
    elif mix == "uniform":
        picks = rng.integers(0, len(ranked), size=SEQUENCE_LENGTH)
    elif mix == "zipf":
        weights = 1.0 / np.arange(1, len(ranked) + 1, dtype=np.float64) ** zipf_s
        cumulative = np.cumsum(weights)
        picks = np.searchsorted(cumulative, rng.random(SEQUENCE_LENGTH) * cumulative[-1])
    else:
        raise BenchError(f"unknown mix {mix!r}")
    return ranked[picks].tolist()


def sequence_facts(sequence: list[int]) -> dict:
    distinct = len(set(sequence))
    return {"length": len(sequence), "distinct_ids": distinct, "repeat_share": round(1 - distinct / len(sequence), 4)}


# One wrk run ---------------------------------------------------------------------------------------------------
def wrk_run(
    url: str, ids_file: Path, query: str, *, seconds: float, connections: int, threads: int, sessions: dict
) -> dict:
    """One wrk run; its summary, with the CPU used meanwhile by each process group in `sessions` and by wrk."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA)
    argv = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        script.name,
        url.rstrip("/"),
        "--",
        str(ids_file),
        f"?{query}" if query else "",
    ]
    load_start = os.getloadavg()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter = CpuMeter(sessions).start()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, now waited for
    wrk_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    cpu = meter.stop({"wrk": wrk_cpu})
    os.unlink(script.name)
    line = next((ln for ln in output.splitlines() if ln.startswith(RESULT_MARK)), None)
    if process.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{output[-2000:]}")
    result = json.loads(line[len(RESULT_MARK) :])
    seconds_run = result["duration_us"] / 1e6
    errors = sum(result["errors"].values())
    latency = {key: round(value / 1000, 2) for key, value in result.pop("latency_us").items()}
    shares = cpu_shares(cpu)
    return {
        **result,
        "rps": round(result["requests"] / seconds_run, 1),
        "latency_ms": latency,
        "error_count": errors,
        "cores_used": {name: round(value, 2) for name, value in shares.items() if name != "bench (this process)"},
        "machine_busy": round(cpu["machine_busy"], 3),
        "other_cores": round(cpu["other_cpu_s"] / max(cpu["wall_s"], 1e-9), 2),
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
    }


def measure_mixes(args, url: str, ids: list[int], sessions: dict, label: str) -> list[dict]:
    runs = []
    for mix in args.mix:
        sequence = mix_sequence(ids, mix, hot=args.hot, zipf_s=args.zipf_s, seed=args.seed)
        with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as handle:
            handle.write("\n".join(map(str, sequence)) + "\n")
        ids_file = Path(handle.name)
        try:
            common = {"connections": args.connections, "threads": args.threads, "sessions": sessions}
            if args.warmup > 0:
                log(f"{label} {mix}: warm-up {args.warmup:.0f}s")
                wrk_run(url, ids_file, args.query, seconds=args.warmup, **common)
            log(f"{label} {mix}: measuring {args.duration:.0f}s, {args.connections} connections")
            run = wrk_run(url, ids_file, args.query, seconds=args.duration, **common)
        finally:
            ids_file.unlink(missing_ok=True)
        run.update(
            {
                "setup": label,
                "mix": mix,
                "query": args.query,
                "catalog_ids": len(ids),
                "hot": args.hot if mix == "hot" else None,
                "zipf_s": args.zipf_s if mix == "zipf" else None,
                "sequence": sequence_facts(sequence),
                "connections": args.connections,
                "wrk_threads": args.threads,
                "meets_target": run["rps"] >= args.target_rps
                and run["latency_ms"]["p99"] <= args.target_p99_ms
                and run["error_count"] == 0,
            }
        )
        log(row(run))
        runs.append(run)
    return runs


# gunicorn setups -----------------------------------------------------------------------------------------------
def parse_setup(text: str) -> tuple[str, int, int]:
    """`sync:W` or `gthread:WxT` -> (worker class, workers, threads)."""
    match = re.fullmatch(r"(sync|gthread):(\d+)(?:x(\d+))?", text)
    if match is None:
        raise BenchError(f"a gunicorn setup is sync:W or gthread:WxT, not {text!r}")
    kind, workers, threads = match.group(1), int(match.group(2)), int(match.group(3) or 1)
    return kind, workers, threads


def gunicorn_argv(kind: str, workers: int, threads: int, port: int) -> list[str]:
    return [
        str(VENV_BIN / "gunicorn"),
        "-c",
        str(ROOT / "docker" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--worker-class",
        kind,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "webapp.wsgi:application",
    ]


def check_url(url: str, product_id: int, query: str) -> None:
    """One request through the server: it must answer 200 with results (fails fast on a broken set-up)."""
    target = url.rstrip("/") + PATH.format(product_id) + (f"?{query}" if query else "")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(target, timeout=30) as response:
                body = json.loads(response.read())
            if body.get("count", 0) < 1:
                raise BenchError(f"{target} answered no results: {str(body)[:300]}")
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"{target} unreachable: {exc}") from exc
            time.sleep(0.5)


def serve_and_measure(args, ids: list[int]) -> list[dict]:
    runs = []
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "GUNICORN_ACCESS_LOG": os.environ.get("GUNICORN_ACCESS_LOG", "")}
    for text in args.serve:
        kind, workers, threads = parse_setup(text)
        label = f"{kind} {workers} workers" + (f" x {threads} threads" if kind == "gthread" else "")
        stack = Stack()
        log_path = Path(args.log_dir) / f"gunicorn-{kind}-{workers}x{threads}.log"
        try:
            process = stack.start("gunicorn", gunicorn_argv(kind, workers, threads, args.port), env, log_path)
            wait_port(args.port, 120, process, log_path)
            check_url(url, ids[0], args.query)
            runs += measure_mixes(args, url, ids, {"gunicorn": process.pid}, label)
        finally:
            stack.stop_all()
    return runs


# Report --------------------------------------------------------------------------------------------------------
def row(run: dict) -> str:
    lat = run["latency_ms"]
    cores = ", ".join(f"{name} {value:.2f}" for name, value in run["cores_used"].items())
    return (
        f"{run['setup']:<28} {run['mix']:<8} {run['rps']:>8.0f} req/s  p50 {lat['p50']:7.2f}  p90 {lat['p90']:7.2f}  "
        f"p99 {lat['p99']:7.2f} ms  errors {run['error_count']}  cores: {cores}, other {run['other_cores']:.2f}  "
        f"load {run['loadavg_start'][0]:.2f}->{run['loadavg_end'][0]:.2f}  "
        f"{'MEETS' if run['meets_target'] else 'misses'} target"
    )


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError, StopIteration):
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a server already running (base URL)")
    target.add_argument("--serve", nargs="+", metavar="SETUP", help="gunicorn setups to start: sync:W, gthread:WxT")
    ids = parser.add_mutually_exclusive_group(required=True)
    ids.add_argument("--ids", help="file of product ids (whitespace-separated) that have stored lists")
    ids.add_argument("--id-range", help="FIRST-LAST product ids")
    parser.add_argument("--port", type=int, default=8100, help="port for --serve (default 8100)")
    parser.add_argument("--mix", nargs="+", default=["hot", "zipf", "uniform"], choices=["hot", "zipf", "uniform"])
    parser.add_argument("--hot", type=int, default=1000, help="ids in the hot mix (default 1000)")
    parser.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent (default 1.0)")
    parser.add_argument("--query", default="k=12", help="query string of every request (default k=12)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per mix (default 30)")
    parser.add_argument("--warmup", type=float, default=15.0, help="unmeasured seconds before each (default 15)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the CPUs serve)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-rps", type=float, default=2000.0)
    parser.add_argument("--target-p99-ms", type=float, default=100.0)
    parser.add_argument("--log-dir", default=str(ROOT / "var"), help="gunicorn logs for --serve (default var/)")
    parser.add_argument("--out", help="write every run as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ids = read_ids(args)
    random.seed(args.seed)
    started = time.time()
    if args.serve:
        runs = serve_and_measure(args, ids)
    else:
        check_url(args.url, ids[0], args.query)
        runs = measure_mixes(args, args.url, ids, {}, args.url)
    report = {
        "benchmark": "serving_load",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(),
        "target": {"rps": args.target_rps, "p99_ms": args.target_p99_ms},
        "catalog_ids": len(ids),
        "runs": runs,
    }
    print()
    for run in runs:
        print(row(run))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
