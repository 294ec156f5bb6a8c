#!/usr/bin/env python
"""End-to-end benchmarks: ingest through the worker, freshness, similar products, search by photo.

Starts its own isolated stack (Milvus Lite server, ONE Celery worker with concurrency 1, gunicorn)
on free 127.0.0.1 ports with its own VAR_DIR (default var/bench, wiped unless --keep), measures,
prints a table and writes docs/benchmarks.md and docs/benchmarks_latency.png. Every process it
starts is stopped on exit, error or Ctrl-C. It only talks to 127.0.0.1.

    .venv/bin/python scripts/bench.py            # full run (see --help for the defaults)
    .venv/bin/python scripts/bench.py --quick    # smoke run, about 3 minutes

How the large gallery is built: --ingest real Fashion-MNIST items go through the real pipeline
(load_demo_catalog -> Celery worker -> embed -> Milvus). The remaining products up to --catalog
are bulk-created (status ready, pointing at the ingested items' image files) and their vectors
are the real embeddings of the ingested items plus Gaussian noise, re-normalised, upserted
straight into the same Milvus collection with the same row fields as vector_row().
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCS = ROOT / "docs"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = {
    "ingest_img_s_per_worker": 40.0,
    "freshness_s": 2.0,
    "similar_rps": 2000.0,
    "similar_p99_ms": 100.0,
    "search_p50_ms": 250.0,
}
BENCH_ALIAS = "bench_active"
BENCH_PREFIX = "bench"
T_START = time.monotonic()


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - T_START:7.1f}s] {message}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Processes and ports
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"process exited ({process.returncode}) before opening port {port}:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"port {port} did not open in {timeout:.0f}s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Stack:
    """Every process the benchmark starts, each in its own session so the whole group can be stopped."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, argv: list[str], env: dict, log_path: Path,
              stop_signal: int = signal.SIGTERM) -> subprocess.Popen:
        handle = open(log_path, "ab")
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        process.stop_signal = stop_signal
        self.procs.append((name, process, handle))
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 8.0) -> None:
        if process.poll() is None:
            try:
                # The process group this benchmark created for it (its own session).
                os.killpg(process.pid, getattr(process, "stop_signal", signal.SIGTERM))
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Children (gunicorn and celery workers) may outlive a killed parent: end the group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if process.poll() is None:
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for name, process, handle in reversed(self.procs):
            try:
                t0 = time.monotonic()
                self.stop(process)
                if time.monotonic() - t0 > 2:
                    log(f"stopping {name} took {time.monotonic() - t0:.0f}s")
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {name} ({process.pid}): {exc}", file=sys.stderr)
            handle.close()
        self.procs.clear()


def session_cpu_seconds(session_ids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every live process of each session."""
    totals = {name: 0.0 for name in session_ids}
    by_sid = {sid: name for name, sid in session_ids.items()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        sid = int(fields[3])
        if sid in by_sid:
            totals[by_sid[sid]] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return totals


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU used by each part of the stack between start() and stop()."""

    def __init__(self, sessions: dict[str, int]):
        self.sessions = sessions

    def start(self):
        self.t0 = time.monotonic()
        self.c0 = session_cpu_seconds(self.sessions)
        self.b0 = machine_busy()
        self.self0 = sum(os.times()[:2])
        return self

    def stop(self, extra: dict[str, float] | None = None) -> dict:
        wall = time.monotonic() - self.t0
        c1 = session_cpu_seconds(self.sessions)
        b1 = machine_busy()
        used = {name: max(0.0, c1[name] - self.c0.get(name, 0.0)) for name in self.sessions}
        used["bench (this process)"] = sum(os.times()[:2]) - self.self0
        used.update(extra or {})
        busy = (b1[0] - self.b0[0]) / max(1, b1[1] - self.b0[1])
        # Whatever else runs on the machine (other people's tests, services) competes for the same cores.
        other = max(0.0, busy * (os.cpu_count() or 1) * wall - sum(used.values()))
        return {"wall_s": wall, "cpu_s": used, "machine_busy": busy, "other_cpu_s": other}


def cpu_summary(cpu: dict) -> str:
    cores = os.cpu_count() or 1
    parts = [f"{name} {seconds / cpu['wall_s'] * 100:.0f}%" for name, seconds in
             sorted(cpu["cpu_s"].items(), key=lambda kv: -kv[1]) if seconds / max(cpu["wall_s"], 1e-9) >= 0.01]
    other = cpu.get("other_cpu_s", 0.0) / max(cpu["wall_s"], 1e-9)
    return (f"machine {cpu['machine_busy'] * 100:.0f}% busy of {cores} cores; " + ", ".join(parts)
            + f", processes not started by the benchmark {other * 100:.0f}% (100% = one core)")


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_stats(latencies_s: list[float]) -> dict:
    ms = [x * 1000 for x in latencies_s]
    return {q: percentile(ms, n) for q, n in (("p50", 50), ("p90", 90), ("p99", 99))} | {
        "max": max(ms) if ms else float("nan"), "mean": sum(ms) / len(ms) if ms else float("nan")}


# --------------------------------------------------------------------------------------------
# Load generator: asyncio keep-alive HTTP/1.1 clients in separate processes
# --------------------------------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
        return status, body, True
    keep = headers.get("connection", "").lower() != "close" and lines[0].startswith("HTTP/1.1")
    return status, body, not keep


async def _client(port, requests, next_index, deadline, out, timeout, check):
    reader = writer = None
    while time.monotonic() < deadline:
        index = next_index()
        if index is None:
            break
        raw = requests[index]
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            status, body, closed = await asyncio.wait_for(_read_response(reader), timeout)
            elapsed = time.perf_counter() - start
            if closed:
                writer.close()
                reader = writer = None
            if 200 <= status < 300 and (check is None or check(body)):
                out["lat"].append(elapsed)
                out["end"].append(time.perf_counter())
            else:
                out["errors"] += 1
                out["status"][status] = out["status"].get(status, 0) + 1
                if len(out["samples"]) < 3:
                    out["samples"].append(f"{status}: {body[:200]!r}")
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as exc:
            out["errors"] += 1
            out["status"][type(exc).__name__] = out["status"].get(type(exc).__name__, 0) + 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def _json_has_results(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body).get("results"), list)
    except (ValueError, AttributeError):
        return False


def _load_process(port, requests, order, connections, duration, timeout, validate, queue):
    """One load-generator process: `connections` keep-alive connections share `order` (indexes into requests)."""
    out = {"lat": [], "end": [], "errors": 0, "status": {}, "samples": []}
    position = [0]
    cycle = order is None

    def next_index():
        if cycle:
            return random.randrange(len(requests))
        if position[0] >= len(order):
            return None
        position[0] += 1
        return order[position[0] - 1]

    async def main():
        deadline = time.monotonic() + duration
        await asyncio.gather(*[_client(port, requests, next_index, deadline, out, timeout,
                                       _json_has_results if validate else None) for _ in range(connections)])

    t0 = time.perf_counter()
    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["elapsed"] = time.perf_counter() - t0
    out["start"] = t0
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    out["exhausted"] = (not cycle) and position[0] >= len(order)
    queue.put(out)


def run_load(port: int, requests: list[bytes], *, concurrency: int, duration: float, procs: int,
             distinct: bool, timeout: float = 30.0, validate: bool = True) -> dict:
    """Closed-loop load: `concurrency` connections over `procs` processes for `duration` seconds.

    distinct=True sends every request at most once (cold cache: distinct ids), in order;
    distinct=False picks requests at random from the list (repeat set).
    """
    procs = max(1, min(procs, concurrency))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = []
    for n in range(procs):
        connections = concurrency // procs + (1 if n < concurrency % procs else 0)
        order = list(range(n, len(requests), procs)) if distinct else None
        process = ctx.Process(target=_load_process, daemon=True,
                              args=(port, requests, order, connections, duration, timeout, validate, queue))
        process.start()
        workers.append(process)
    results = []
    try:
        for _ in workers:
            results.append(queue.get(timeout=duration + timeout + 60))
    finally:
        for process in workers:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
    latencies = [x for r in results for x in r["lat"]]
    # Throughput over the span all processes were sending (they start a few ms apart).
    start = min(r["start"] for r in results)
    end = max(max(r["end"], default=r["start"]) for r in results)
    elapsed = max(max(r["elapsed"] for r in results), 1e-9)
    status: dict = {}
    for r in results:
        for key, value in r["status"].items():
            status[str(key)] = status.get(str(key), 0) + value
    return {
        "ok": len(latencies), "errors": sum(r["errors"] for r in results), "error_kinds": status,
        "error_samples": [s for r in results for s in r["samples"]][:3],
        "elapsed_s": elapsed, "rps": len(latencies) / max(end - start, 1e-9) if latencies else 0.0,
        "latencies_s": latencies, "concurrency": concurrency, "procs": procs,
        "exhausted": any(r["exhausted"] for r in results), "loadgen_cpu_s": sum(r["cpu_s"] for r in results),
        **latency_stats(latencies),
    }


def get_request(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n{extra}\r\n".encode()


def multipart_request(path: str, field: str, filename: str, content: bytes, content_type: str) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def http_call(port: int, raw: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection (used for probes and sequential runs)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        decoded, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            decoded.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(decoded)
    return status, body


def warm_all_workers(port: int, raws: list[bytes], workers: int, budget_s: float = 120.0,
                     max_requests: int | None = None) -> tuple[int, float]:
    """Fresh connections, `2 x workers` at a time, until a whole round is fast: every gunicorn worker
    has then loaded what it loads lazily (Django, DRF, the embedding model). Returns (requests, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    sent = fast_rounds = 0
    first = None
    with ThreadPoolExecutor(2 * workers) as pool:
        while time.monotonic() - t0 < budget_s:
            batch = [raws[(sent + i) % len(raws)] for i in range(2 * workers)]
            timings = []

            def call(raw):
                start = time.perf_counter()
                status, _ = http_call(port, raw, timeout=120)
                timings.append((status, time.perf_counter() - start))

            list(pool.map(call, batch))
            sent += len(batch)
            slowest = max(t for _, t in timings)
            first = first or slowest
            fast_rounds = fast_rounds + 1 if slowest < max(0.5, 0.25 * first) else 0
            if fast_rounds >= 3:  # three rounds in a row with no worker still loading
                break
            if max_requests is not None and sent >= max_requests:
                break
    return sent, time.monotonic() - t0


class KeepAlive:
    """A sequential keep-alive connection (http.client) for latency runs and polling."""

    def __init__(self, port: int, timeout: float = 30.0):
        import http.client

        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        import http.client

        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                if attempt == 2:
                    raise

    def close(self):
        self.conn.close()


# --------------------------------------------------------------------------------------------
# Images for /api/search/: Fashion-MNIST items pasted on photo-like backgrounds
# --------------------------------------------------------------------------------------------
def street_photo(pixels, rng: random.Random) -> bytes:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    width, height = 640, 480
    top = np.array([rng.randint(90, 200) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randint(30, 140) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    background = top * (1 - t) + bottom * t + np.zeros((1, width, 3), dtype=np.float32)
    background += np.random.default_rng(rng.randint(0, 2**31)).normal(0, 9, background.shape)
    photo = Image.fromarray(background.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(photo)
    for _ in range(rng.randint(4, 9)):  # facades, windows, street furniture
        x0, y0 = rng.randint(-50, width), rng.randint(-50, height)
        x1, y1 = x0 + rng.randint(30, 260), y0 + rng.randint(30, 300)
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randint(20, 230) for _ in range(3)))
    photo = photo.filter(ImageFilter.GaussianBlur(2.5))
    side = rng.randint(200, 300)
    item = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
    colour = np.array([rng.randint(0, 200) for _ in range(3)], dtype=np.float32)
    shade = np.asarray(item, dtype=np.float32)[..., None] / 255.0
    garment = Image.fromarray((colour * (0.45 + 0.55 * shade)).clip(0, 255).astype("uint8"))
    mask = item.point(lambda v: 255 if v > 18 else 0).filter(ImageFilter.GaussianBlur(1.2))
    photo.paste(garment, (rng.randint(0, width - side), rng.randint(0, height - side)), mask)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.stack = Stack()
        self.var_dir = Path(args.var_dir).resolve()
        self.logs = self.var_dir / "log"
        self.results: dict = {"phases": {}, "notes": []}
        self.sessions: dict[str, int] = {}

    # ---- set-up ------------------------------------------------------------------------------
    def prepare_dirs(self):
        if self.var_dir.exists() and not self.args.keep:
            if any(self.var_dir.iterdir()) and not (self.var_dir / ".bench").exists():
                raise BenchError(f"refusing to wipe {self.var_dir}: not empty and not made by this script")
            log(f"wiping {self.var_dir}")
            shutil.rmtree(self.var_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.var_dir / ".bench").write_text("created by scripts/bench.py\n")

    def make_env(self) -> dict:
        env = dict(os.environ)
        for key in ("MEDIA_ROOT", "STATIC_ROOT", "CELERY_BROKER_DIR", "MILVUS_TOKEN"):
            env.pop(key, None)
        env.update(
            VAR_DIR=str(self.var_dir),
            MILVUS_URI=f"http://127.0.0.1:{self.milvus_port}",
            MILVUS_ALIAS=BENCH_ALIAS,
            MILVUS_COLLECTION_PREFIX=BENCH_PREFIX,
            CELERY_BROKER_URL=self.args.broker_url,
            DJANGO_SETTINGS_MODULE="webapp.settings",
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY="bench-only-" + uuid.uuid4().hex,
            YOLO_OFFLINE="1",
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
            MPLBACKEND="Agg",
        )
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = f"sqlite:///{self.var_dir / 'db.sqlite3'}"
        else:
            self.results["notes"].append("DATABASE_URL was set: the benchmark wrote to that database.")
        if self.args.image_size:
            env["EMBEDDER_IMAGE_SIZE"] = str(self.args.image_size)
        return env

    def start_milvus(self):
        self.milvus_port = free_port()
        log_path = self.logs / "milvus.log"
        process = self.stack.start("milvus-lite", [str(VENV_BIN / "milvus-lite"), "server", "--data-dir",
                                                   str(self.var_dir / "milvus"), "--host", "127.0.0.1",
                                                   "--port", str(self.milvus_port)], os.environ.copy(), log_path)
        wait_for_port(self.milvus_port, 90, process, log_path)
        self.sessions["milvus-lite"] = process.pid
        self.milvus = process
        log(f"Milvus Lite server on 127.0.0.1:{self.milvus_port} (pid {process.pid})")

    def manage(self, *argv: str, timeout: float = 600) -> str:
        log_path = self.logs / f"manage-{argv[0]}.log"
        process = self.stack.start(f"manage {argv[0]}", [sys.executable, "manage.py", *argv], self.env, log_path)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stack.stop(process)
            raise BenchError(f"manage.py {' '.join(argv)} took longer than {timeout}s:\n{tail(log_path)}")
        if process.returncode != 0:
            raise BenchError(f"manage.py {' '.join(argv)} failed ({process.returncode}):\n{tail(log_path)}")
        return log_path.read_text(errors="replace")

    def start_worker(self):
        log_path = self.logs / "worker.log"
        env = dict(self.env)
        if self.args.worker_torch_threads:
            env["TORCH_NUM_THREADS"] = str(self.args.worker_torch_threads)
        process = self.stack.start("celery worker", [
            str(VENV_BIN / "celery"), "-A", "workers.celery_app", "worker", "-Q", "ingest,default",
            "--concurrency", "1", "--prefetch-multiplier", str(self.args.worker_prefetch), "-O", "fair",
            "--loglevel", "INFO",
            "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
        ], env, log_path)
        deadline = time.monotonic() + 90
        while "ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"worker did not start:\n{tail(log_path)}")
            time.sleep(0.2)
        self.sessions["celery worker"] = process.pid
        self.worker = process
        log(f"Celery worker ready (concurrency 1, pid {process.pid})")

    def start_web(self):
        self.web_port = free_port()
        log_path = self.logs / "gunicorn.log"
        env = dict(self.env, LOG_LEVEL="WARNING")
        if self.args.web_torch_threads:
            env["TORCH_NUM_THREADS"] = str(self.args.web_torch_threads)
        argv = [str(VENV_BIN / "gunicorn"), "webapp.wsgi:application", "--bind", f"127.0.0.1:{self.web_port}",
                "--workers", str(self.args.web_workers), "--threads", str(self.args.threads), "--timeout", "120",
                "--error-logfile", str(log_path)]
        if self.args.access_log:
            argv += ["--access-logfile", str(self.logs / "access.log")]
        process = self.stack.start("gunicorn", argv, env, log_path, stop_signal=signal.SIGINT)  # quick shutdown
        wait_for_port(self.web_port, 90, process, log_path)
        self.sessions["gunicorn"] = process.pid
        self.web = process
        log(f"gunicorn on 127.0.0.1:{self.web_port}: {self.args.web_workers} workers x {self.args.threads} threads")

    def setup_django(self):
        os.environ.update(self.env)
        sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        from django.conf import settings

        self.settings = settings

    # ---- 2. ingest ---------------------------------------------------------------------------
    def bench_ingest(self):
        from django.db.models import Count

        from webapp.catalog.models import ProductImage

        n = self.args.ingest
        log(f"ingest: load_demo_catalog --size {n}, then wait until every image is ready ...")
        images = ProductImage.objects.filter(product__sku__startswith="fmnist-")
        before = images.count()
        cpu = CpuMeter(self.sessions).start()
        t0 = time.monotonic()
        loader_log = self.logs / "manage-load_demo_catalog.log"
        loader = self.stack.start("load_demo_catalog", [sys.executable, "manage.py", "load_demo_catalog",
                                                        "--size", str(n)], self.env, loader_log)
        series = []  # (t, rows, ready, failed)
        first_row_t = loader_done_t = None
        deadline = t0 + self.args.ingest_timeout
        last_print = 0.0
        while True:
            now = time.monotonic()
            counts = dict(images.values_list("status").annotate(c=Count("id")).order_by())
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
                break
            if failed > max(5, 0.1 * n):
                raise BenchError(f"{failed} images failed ingestion:\n{tail(self.logs / 'worker.log', 15)}")
            if now > deadline:
                raise BenchError(f"ingest not finished after {self.args.ingest_timeout}s: {counts}")
            if now - last_print > 10:
                last_print = now
                log(f"  {ready}/{n} ready, {failed} failed, {rows} rows created")
            time.sleep(0.1)
        all_ready_t = series[-1][0]
        usage = cpu.stop()
        ready_total = series[-1][2]
        # Steady state: between 10% and 90% ready (leaves out the model load and the last batch).
        lo = next(s for s in series if s[2] >= 0.1 * n)
        hi = next(s for s in series if s[2] >= 0.9 * n)
        steady = (hi[2] - lo[2]) / max(hi[0] - lo[0], 1e-9) if hi[0] > lo[0] else float("nan")
        tasks = worker_task_timeline((self.logs / "worker.log").read_text(errors="replace"))
        task_times = [t["run_s"] for t in tasks]
        gaps = [t["wait_s"] for t in tasks[1:] if t["wait_s"] is not None]
        end_to_end = ready_total / max(all_ready_t - (first_row_t or 0.0), 1e-9)
        self.results["ingest"] = {
            "images": n, "ready": ready_total, "failed": series[-1][3], "first_queued_s": first_row_t,
            "loader_done_s": loader_done_t, "all_ready_s": all_ready_t,
            "img_s_end_to_end": end_to_end, "img_s_steady": steady,
            "tasks": len(task_times), "task_p50_s": percentile(task_times, 50), "task_max_s": max(task_times, default=0),
            "first_task_s": task_times[0] if task_times else float("nan"),
            "gap_p50_s": percentile(gaps, 50), "idle_between_tasks": sum(gaps) / max(sum(gaps) + sum(task_times[1:]), 1e-9),
            "img_s_in_task": 32 / percentile(task_times[1:], 50) if len(task_times) > 1 else float("nan"),
            "cpu": usage, "worker_cpu_s_per_image": usage["cpu_s"]["celery worker"] / max(n, 1),
        }
        log(f"ingest: {ready_total} ready in {all_ready_t - (first_row_t or 0):.1f}s after first queue -> "
            f"{end_to_end:.1f} img/s end-to-end, {steady:.1f} img/s steady; {cpu_summary(usage)}")
        ing = self.results["ingest"]
        log(f"  {len(tasks)} tasks: run p50 {ing['task_p50_s']:.2f}s ({ing['img_s_in_task']:.1f} img/s while running), "
            f"worker idle between tasks p50 {ing['gap_p50_s']:.2f}s = {ing['idle_between_tasks'] * 100:.0f}% of the time")
        if series[-1][3]:
            self.results["notes"].append(f"{series[-1][3]} images failed ingestion (see var/bench/log/worker.log).")

    # ---- freshness and flush --------------------------------------------------------------------
    def bench_freshness(self):
        from webapp.catalog import services as catalog_services
        from webapp.catalog.models import Product, ProductImage
        from webapp.search.runtime import get_vector_store

        store = get_vector_store()
        trials = self.args.fresh_trials
        bases = list(Product.objects.filter(sku__startswith="fmnist-", images__status="ready")
                     .select_related("category").order_by("?")[:trials])
        client = KeepAlive(self.web_port)
        records = []
        log(f"freshness: {trials} new products, each with one new image (idle worker) ...")
        for i, base in enumerate(bases):
            time.sleep(self.args.fresh_gap)
            base_image = base.images.filter(status="ready").first()
            with base_image.image.open("rb") as handle:
                content = handle.read()
            vector = store.rows_for_product(base.pk)[0]["vector"]
            product, _ = catalog_services.product_upsert(
                sku=f"bench-fresh-{uuid.uuid4().hex[:8]}", title=base.title, price=base.price,
                category=base.category, brand=base.brand)
            t_save = time.monotonic()
            wall_save = time.time()
            image = catalog_services.product_image_create(product=product, content=content)  # queues on commit
            t_saved = time.monotonic()
            seen = {}
            deadline = t_save + self.args.fresh_timeout
            while len(seen) < 3 and time.monotonic() < deadline:
                if "vector_store" not in seen:
                    hits = store.client.search(store.alias, data=[vector], limit=5, filter=f"product_id == {product.pk}",
                                               output_fields=["product_id"], search_params={"metric_type": "COSINE"})
                    if any(int(h.get("image_id", h.get("id", -1))) == image.pk for h in hits[0]):
                        seen["vector_store"] = time.monotonic() - t_save
                if "api" not in seen:
                    status, body = client.request("GET", f"/api/products/{product.pk}/similar/?k=12")
                    if status == 200 and json.loads(body).get("count", len(json.loads(body).get("results", []))) > 0:
                        seen["api"] = time.monotonic() - t_save
                if "db_ready" not in seen:
                    if ProductImage.objects.filter(pk=image.pk, status="ready").exists():
                        seen["db_ready"] = time.monotonic() - t_save
                time.sleep(0.02)
            record = {"save_s": t_saved - t_save, **seen}
            task, wait_until = None, time.monotonic() + 5
            while task is None and time.monotonic() < wait_until:  # the log line follows the DB update
                task = next((t for t in worker_task_timeline((self.logs / "worker.log").read_text(errors="replace"))
                             if t["received"] >= wall_save - 0.01), None)
                time.sleep(0.05)
            if task is not None:
                record.update(pickup_s=task["received"] - wall_save, task_s=task["run_s"])
            records.append(record)
            log(f"  trial {i + 1}: save {1000 * (t_saved - t_save):.0f} ms, "
                + ", ".join(f"{k} {v:.2f}s" for k, v in seen.items())
                + (f" (worker got the task {record['pickup_s']:.2f}s after the save, ran it in {record['task_s']:.2f}s)"
                   if task else ""))
        client.close()

        def agg(key):
            values = [r[key] for r in records if key in r]
            missing = sum(1 for r in records if key not in r)
            return {"p50": percentile(values, 50), "max": max(values, default=float("nan")), "missing": missing}

        self.results["freshness"] = {"trials": records, "vector_store": agg("vector_store"), "api": agg("api"),
                                     "db_ready": agg("db_ready"), "pickup": agg("pickup_s"), "task": agg("task_s")}

    def bench_flush(self, label: str, reps: int = 10, batch: int = 32):
        """Time one worker-sized upsert (32 rows, re-writing existing image ids) and the flush after it."""
        from webapp.catalog.models import ProductImage
        from webapp.search.runtime import get_vector_store

        store = get_vector_store()
        ids = list(ProductImage.objects.filter(product__sku__startswith="fmnist-", status="ready")
                   .values_list("pk", flat=True)[: batch])
        rows = store.client.query(store.alias, filter=f"image_id in {ids}",
                                  output_fields=["image_id", "product_id", "category_id", "price", "in_stock",
                                                 "model_version", "vector"])
        rows = [{k: (list(map(float, v)) if k == "vector" else v) for k, v in row.items()} for row in rows]
        upserts, flushes = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            store.client.upsert(store.alias, rows)
            t1 = time.perf_counter()
            store.client.flush(store.alias)
            t2 = time.perf_counter()
            upserts.append(t1 - t0)
            flushes.append(t2 - t1)
        result = {"rows": len(rows), "reps": reps, "upsert_ms_p50": percentile(upserts, 50) * 1000,
                  "flush_ms_p50": percentile(flushes, 50) * 1000, "flush_ms_max": max(flushes) * 1000,
                  "collection_rows": store.count()}
        self.results.setdefault("flush", {})[label] = result
        log(f"milvus flush at {result['collection_rows']:,} rows: upsert {result['upsert_ms_p50']:.1f} ms, "
            f"flush p50 {result['flush_ms_p50']:.1f} ms (max {result['flush_ms_max']:.1f}) for {len(rows)} rows")

    # ---- 3. scale the gallery ---------------------------------------------------------------
    def scale_catalog(self):
        import numpy as np
        from django.db import transaction
        from django.utils import timezone

        from webapp.catalog.models import Product, ProductImage
        from webapp.search.runtime import get_vector_store
        from webapp.search.services import vector_row

        store = get_vector_store()
        target = self.args.catalog
        existing = Product.objects.count()
        extra = target - existing
        log(f"scale: {existing:,} products exist, bulk-creating {max(extra, 0):,} more (noisy copies of real vectors)")
        t0 = time.monotonic()
        base_images = list(ProductImage.objects.filter(product__sku__startswith="fmnist-", status="ready")
                           .select_related("product").order_by("pk"))
        vectors = {}
        for start in range(0, len(base_images), 500):
            ids = [img.pk for img in base_images[start : start + 500]]
            for row in store.client.query(store.alias, filter=f"image_id in {ids}", output_fields=["vector"]):
                vectors[int(row["image_id"])] = np.asarray(row["vector"], dtype=np.float32)
        base_images = [img for img in base_images if img.pk in vectors]
        if not base_images:
            raise BenchError("no ingested vectors to build the gallery from")
        model_version = base_images[0].model_version
        base_matrix = np.stack([vectors[img.pk] for img in base_images])
        dim = base_matrix.shape[1]
        sigma = self.args.noise / np.sqrt(dim)  # noise vector norm ~ args.noise before re-normalising
        rng = np.random.default_rng(12345)
        prng = random.Random(12345)
        now = timezone.now()
        created = 0
        insert_s = upsert_s = 0.0
        batch = 5000
        while created < extra:
            n = min(batch, extra - created)
            picks = rng.integers(0, len(base_images), n)
            t_db = time.monotonic()
            with transaction.atomic():
                products = Product.objects.bulk_create([
                    Product(sku=f"bench-syn-{created + j:07d}", title=base_images[p].product.title,
                            brand=base_images[p].product.brand,
                            price=round(float(base_images[p].product.price) * prng.uniform(0.8, 1.2), 2),
                            currency="USD", category_id=base_images[p].product.category_id,
                            attributes={"source": "bench-synthetic", "base_sku": base_images[p].product.sku},
                            in_stock=prng.random() < 0.9)
                    for j, p in enumerate(picks)], batch_size=1000)
                images = ProductImage.objects.bulk_create([
                    ProductImage(product=product, image=base_images[p].image.name,
                                 thumbnail=base_images[p].thumbnail.name, checksum=base_images[p].checksum,
                                 width=base_images[p].width, height=base_images[p].height,
                                 status=ProductImage.Status.READY, attempts=1, model_version=model_version,
                                 embedded_at=now)
                    for product, p in zip(products, picks)], batch_size=1000)
            insert_s += time.monotonic() - t_db
            noisy = base_matrix[picks] + rng.normal(0.0, sigma, (n, dim)).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            t_vs = time.monotonic()
            rows = [vector_row(image, vector, model_version) for image, vector in zip(images, noisy)]
            for start in range(0, len(rows), 1000):
                store.upsert(rows[start : start + 1000], flush=False)
            upsert_s += time.monotonic() - t_vs
            created += n
            log(f"  {existing + created:,}/{target:,} products")
        t_flush = time.monotonic()
        store.client.flush(store.alias)
        flush_s = time.monotonic() - t_flush
        cos = float(np.mean(np.sum(noisy * base_matrix[picks], axis=1))) if extra > 0 else float("nan")
        settle = self.wait_milvus_idle()
        self.results["scale"] = {
            "products": Product.objects.count(), "images_ready": ProductImage.objects.filter(status="ready").count(),
            "real_ingested": len(base_images), "synthetic": max(extra, 0), "noise_norm": self.args.noise,
            "mean_cos_to_source": cos, "db_insert_s": insert_s, "vector_upsert_s": upsert_s, "final_flush_s": flush_s,
            "milvus_settle_s": settle, "total_s": time.monotonic() - t0, "vectors": store.count(), "dim": int(dim),
        }
        log(f"scale: {self.results['scale']['products']:,} products, {self.results['scale']['vectors']:,} vectors "
            f"(dim {dim}, mean cosine to source {cos:.3f}) in {self.results['scale']['total_s']:.0f}s "
            f"(db {insert_s:.0f}s, upsert {upsert_s:.0f}s, flush {flush_s:.1f}s, index settle {settle:.0f}s)")

    def wait_milvus_idle(self) -> float:
        """Milvus Lite compacts and builds HNSW indexes in a background thread: wait until its CPU goes quiet."""
        t0 = time.monotonic()
        quiet = 0
        last = session_cpu_seconds({"m": self.milvus.pid})["m"]
        while time.monotonic() - t0 < self.args.settle_timeout:
            time.sleep(1.0)
            now = session_cpu_seconds({"m": self.milvus.pid})["m"]
            quiet = quiet + 1 if now - last < 0.05 else 0
            last = now
            if quiet >= 3:
                return time.monotonic() - t0
        self.results["notes"].append(f"Milvus Lite was still busy (index build) after {self.args.settle_timeout}s.")
        return time.monotonic() - t0

    def bench_milvus_calls(self, label: str, samples: int = 40):
        """What one similar-products cache miss costs in Milvus, call by call, at the full gallery size."""
        import numpy as np

        from webapp.catalog.models import ProductImage
        from webapp.search.runtime import get_vector_store
        from webapp.search.vector_store import SearchFilters

        store = get_vector_store()
        pairs = list(ProductImage.objects.filter(status="ready").values_list("pk", "product_id"))
        picks = random.Random(3).sample(pairs, min(samples, len(pairs)))
        timings: dict[str, list[float]] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            value = fn()
            timings.setdefault(name, []).append(time.perf_counter() - t0)
            return value

        for image_id, product_id in picks:
            timed("resolve active collection", store.active_collection)
            rows = timed("query by product_id (rows_for_product)", lambda: store.rows_for_product(product_id))
            timed("get by primary key (image_id)", lambda: store.client.get(store.alias, ids=[image_id],
                                                                          output_fields=["vector"]))
            vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32)
            timed("ANN search k=68, filter product_id != id", lambda: store.search(
                vectors, 68, SearchFilters(exclude_product_id=product_id)))
            timed("ANN search k=68, no filter", lambda: store.search(vectors, 68))
        result = {name: {"p50_ms": percentile(v, 50) * 1000, "p90_ms": percentile(v, 90) * 1000}
                  for name, v in timings.items()}
        self.results.setdefault("milvus_calls", {})[label] = {"samples": len(picks), "vectors": store.count(),
                                                              "calls": result}
        log(f"milvus calls at {store.count():,} vectors (sequential, from this process): " + "; ".join(
            f"{name} {v['p50_ms']:.1f} ms" for name, v in result.items()))

    # ---- 4. similar products -----------------------------------------------------------------
    def product_ids(self) -> list[int]:
        from webapp.catalog.models import ProductImage

        return sorted(set(ProductImage.objects.filter(status="ready").values_list("product_id", flat=True)))

    def check_api(self, product_id: int):
        status, body = http_call(self.web_port, get_request(f"/api/products/{product_id}/similar/?k=12"))
        if status != 200:
            raise BenchError(f"GET /api/products/{product_id}/similar/ -> {status}: {body[:300]!r}")
        payload = json.loads(body)
        if not isinstance(payload.get("results"), list) or not payload["results"]:
            raise BenchError(f"similar response has no results: {body[:300]!r}")
        return payload

    def bench_similar(self):
        ids = self.product_ids()
        rng = random.Random(7)
        rng.shuffle(ids)
        payload = self.check_api(ids[-1])
        self.results["similar_sample"] = {"count": payload.get("count"), "bytes": len(json.dumps(payload)),
                                          "keys": sorted(payload["results"][0].keys())}
        args = self.args
        warmup_ids, warm_ids, cold_ids = ids[-200:-1], ids[: args.warm_set], ids[args.warm_set : -200]
        path = "/api/products/{}/similar/?k=12"
        sent, took = warm_all_workers(self.web_port, [get_request(path.format(i)) for i in warmup_ids],
                                      args.web_workers, max_requests=4 * args.web_workers)
        log(f"similar: warmed gunicorn workers with {sent} requests on fresh connections ({took:.1f}s, not measured)")

        log(f"similar COLD: {args.concurrency} connections for {args.duration:.0f}s over distinct ids "
            f"(each requested once) ...")
        cpu = CpuMeter(self.sessions).start()
        cold = run_load(self.web_port, [get_request(path.format(i)) for i in cold_ids], concurrency=args.concurrency,
                        duration=args.duration, procs=args.load_procs, distinct=True)
        cold["cpu"] = cpu.stop({"load generator": cold["loadgen_cpu_s"]})
        self.report_load("similar cold", cold)

        # Every gunicorn worker has its own cache, so priming costs about warm set x workers misses: size the
        # warm set so that fits in --prime-timeout at the cold rate just measured.
        fits = int(cold["rps"] * args.prime_timeout / (1.5 * args.web_workers))
        warm_ids = warm_ids[: max(10, min(len(warm_ids), fits))]
        warm_requests = [get_request(path.format(i)) for i in warm_ids]
        passes = args.warm_passes
        log(f"similar WARM: priming {len(warm_ids)} ids x {passes} passes, a new connection per request so every "
            f"gunicorn worker caches them ...")
        t_prime = time.monotonic()
        # Keep-alive connections stick to one worker, and the measured run opens new ones: prime with a fresh
        # connection per request so the requests for each id spread over all workers.
        priming = [get_request(path.format(i), close=True) for i in warm_ids]
        run_load(self.web_port, priming * passes, concurrency=args.concurrency, duration=args.prime_timeout,
                 procs=args.load_procs, distinct=True)
        prime_s = time.monotonic() - t_prime
        log(f"similar WARM: {args.concurrency} connections for {args.duration:.0f}s over the {len(warm_ids)} "
            f"cached ids ...")
        cpu = CpuMeter(self.sessions).start()
        warm = run_load(self.web_port, warm_requests, concurrency=args.concurrency, duration=args.duration,
                        procs=args.load_procs, distinct=False)
        warm["cpu"] = cpu.stop({"load generator": warm["loadgen_cpu_s"]})
        warm["prime_s"] = prime_s
        self.report_load("similar warm", warm)
        self.results["similar"] = {"cold": cold, "warm": warm, "warm_set": len(warm_ids), "cold_pool": len(cold_ids)}
        if cold["exhausted"]:
            self.results["notes"].append("The cold run used every distinct product id before the time was up.")

    def report_load(self, label, result):
        log(f"{label}: {result['rps']:.1f} req/s, p50 {result['p50']:.1f} ms, p90 {result['p90']:.1f} ms, "
            f"p99 {result['p99']:.1f} ms, {result['ok']} ok, {result['errors']} errors {result.get('error_kinds') or ''}")
        if "cpu" in result:
            log(f"  cpu: {cpu_summary(result['cpu'])}")
        for sample in result.get("error_samples", []):
            log(f"  error sample: {sample}")

    # ---- 5. search by photo -------------------------------------------------------------------
    def bench_search(self):
        from ml.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

        args = self.args
        images, labels = load_fashion_mnist("test")
        rng = random.Random(11)
        picks = [rng.randrange(min(args.ingest, len(images))) for _ in range(args.search_requests)]
        photos = [(street_photo(images[i], rng), CLASS_NAMES[int(labels[i])]) for i in picks]
        Path(self.var_dir / "search-sample.jpg").write_bytes(photos[0][0])
        raws = [multipart_request("/api/search/", "image", f"street-{n}.jpg", p, "image/jpeg")
                for n, (p, _) in enumerate(photos)]
        log(f"search: {len(photos)} street-like 640x480 JPEGs (~{sum(len(p) for p, _ in photos) // len(photos) // 1024}"
            f" KB); loading the model in every gunicorn worker ...")
        sent, took = warm_all_workers(self.web_port, raws, args.web_workers)
        log(f"search: warmed with {sent} requests on fresh connections ({took:.1f}s, not measured)")
        status, body = http_call(self.web_port, raws[0], timeout=60)
        if status != 200:
            raise BenchError(f"POST /api/search/ -> {status}: {body[:300]!r}")

        log(f"search SEQUENTIAL: {len(raws)} requests, one keep-alive connection ...")
        client = KeepAlive(self.web_port, timeout=60)
        latencies, errors, matches, checked = [], 0, 0, 0
        cpu = CpuMeter(self.sessions).start()
        for raw, (_, label) in zip(raws, photos):
            head, _, body = raw.partition(b"\r\n\r\n")
            content_type = re.search(rb"Content-Type: (multipart[^\r]+)", head).group(1).decode()
            t0 = time.perf_counter()
            status, response = client.request("POST", "/api/search/", body=body, headers={"Content-Type": content_type})
            elapsed = time.perf_counter() - t0
            if status != 200:
                errors += 1
                continue
            latencies.append(elapsed)
            results = json.loads(response).get("results", [])
            categories = [_category_name(r.get("product")) for r in results[:10]]
            if any(c is not None for c in categories):
                checked += 1
                matches += sum(1 for c in categories if c == label) / max(1, len(categories))
        usage = cpu.stop()
        client.close()
        sequential = {"ok": len(latencies), "errors": errors, "latencies_s": latencies,
                      "rps": len(latencies) / max(usage["wall_s"], 1e-9), "cpu": usage, **latency_stats(latencies),
                      "category_precision_at_10": matches / checked if checked else None}
        self.report_load("search sequential", sequential)

        concurrency = args.search_concurrency
        log(f"search CONCURRENT: {concurrency} connections, {len(raws)} requests ...")
        cpu = CpuMeter(self.sessions).start()
        concurrent = run_load(self.web_port, raws, concurrency=concurrency, duration=args.search_timeout,
                              procs=1, distinct=True, timeout=120)
        concurrent["cpu"] = cpu.stop({"load generator": concurrent["loadgen_cpu_s"]})
        self.report_load("search concurrent", concurrent)
        self.results["search"] = {"sequential": sequential, "concurrent": concurrent,
                                  "image_bytes_avg": sum(len(p) for p, _ in photos) / len(photos)}

    # ---- run -----------------------------------------------------------------------------------
    def wait_machine_quiet(self):
        """Other processes (a test suite, a dev server) skew every number: wait, bounded, for a quiet machine."""
        limit = self.args.wait_idle
        t0 = time.monotonic()
        while True:
            b0 = machine_busy()
            time.sleep(3)
            b1 = machine_busy()
            busy = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
            if busy <= self.args.idle_threshold or time.monotonic() - t0 >= limit:
                break
            log(f"machine {busy * 100:.0f}% busy before the start (other processes); waiting up to {limit:.0f}s ...")
        self.results["busy_before_start"] = busy
        if busy > self.args.idle_threshold:
            self.results["notes"].append(f"The machine was already {busy * 100:.0f}% busy (processes not started by "
                                         f"the benchmark) when it started; numbers are pessimistic.")
        log(f"machine {busy * 100:.0f}% busy before the start")

    def run(self):
        self.prepare_dirs()
        self.wait_machine_quiet()
        started = time.monotonic()
        self.results["started"] = dt.datetime.now(dt.timezone.utc)
        self.start_milvus()
        self.env = self.make_env()
        log("migrate ...")
        self.manage("migrate", "--noinput")
        self.setup_django()
        self.start_worker()
        self.start_web()
        self.results["phases"]["setup_s"] = time.monotonic() - started

        phases = [("ingest", self.bench_ingest), ("freshness", self.bench_freshness),
                  ("flush_small", lambda: self.bench_flush("after ingest")),
                  ("milvus_calls_small", lambda: self.bench_milvus_calls("after ingest")), ("scale", self.scale_catalog),
                  ("flush_large", lambda: (self.bench_flush("full catalog"), self.wait_milvus_idle())),
                  ("milvus_calls", lambda: self.bench_milvus_calls("full catalog")),
                  ("similar", self.bench_similar),
                  ("search", self.bench_search)]
        only = set(self.args.only.split(",")) if self.args.only else None
        for name, phase in phases:
            if only is not None and name not in only and not (name == "ingest"):
                continue  # everything needs the ingested items
            t0 = time.monotonic()
            phase()
            self.results["phases"][f"{name}_s"] = time.monotonic() - t0
        self.results["phases"]["total_s"] = time.monotonic() - started


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/[^\]]+\] Task "
                      r"workers\.tasks\.ingest_image_batch\[([0-9a-f-]+)\] (received|succeeded in ([0-9.]+)s)")


def worker_task_timeline(text: str) -> list[dict]:
    """Ingest tasks from the worker log: run time, and the wait between the previous task's end and this
    one's arrival at the worker (time the worker sat idle with work still queued)."""
    received, tasks = {}, []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if not match:
            continue
        stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if match.group(3) == "received":
            received[match.group(2)] = stamp
        elif match.group(2) in received:
            tasks.append({"received": received[match.group(2)], "end": stamp, "run_s": float(match.group(4))})
    tasks.sort(key=lambda t: t["received"])
    for previous, task in zip([None, *tasks[:-1]], tasks):
        task["wait_s"] = max(0.0, task["received"] - previous["end"]) if previous else None
    return tasks


def _category_name(product) -> str | None:
    if not isinstance(product, dict):
        return None
    category = product.get("category")
    if isinstance(category, dict):
        return category.get("name")
    if isinstance(category, str):
        return category
    return product.get("category_name")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def machine_description() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    gpu = "none"
    if shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists():
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10).stdout.strip() or "present"
        except (OSError, subprocess.SubprocessError):
            gpu = "present (nvidia-smi failed)"
    return {
        "cpu": cpu_model, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "ram_gib": mem_gib,
        "os": platform.platform(), "python": platform.python_version(),
        "torch": version("torch"), "django": version("Django"), "pymilvus": version("pymilvus"),
        "milvus_lite": version("milvus-lite"), "gunicorn": version("gunicorn"), "celery": version("celery"),
        "gpu": gpu,
    }


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def fmt(value, spec=".1f") -> str:
    try:
        if value is None or value != value:
            return "n/a"
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def table_rows(r: dict) -> list[list[str]]:
    rows = []
    ing = r["ingest"]
    rows.append(["Ingest (1 worker, concurrency 1)", f"{ing['images']:,} images",
                 f"{fmt(ing['img_s_steady'])} img/s steady, {fmt(ing['img_s_end_to_end'])} img/s end-to-end",
                 f"≥ {TARGETS['ingest_img_s_per_worker']:.0f} img/s per worker",
                 met(ing["img_s_steady"] >= TARGETS["ingest_img_s_per_worker"])])
    fr = r["freshness"]
    worst = max(fr["vector_store"]["max"], fr["api"]["max"])
    ok = fr["vector_store"]["missing"] == 0 and fr["api"]["missing"] == 0 and worst <= TARGETS["freshness_s"]
    rows.append(["Freshness: save → searchable", f"{len(fr['trials'])} new images",
                 f"vector store p50 {fmt(fr['vector_store']['p50'], '.2f')} s (max {fmt(fr['vector_store']['max'], '.2f')}); "
                 f"API similar p50 {fmt(fr['api']['p50'], '.2f')} s (max {fmt(fr['api']['max'], '.2f')})",
                 f"≤ {TARGETS['freshness_s']:.0f} s", met(ok)])
    for label, fl in r.get("flush", {}).items():
        rows.append([f"Milvus upsert+flush, 32 rows ({label})", f"{fl['collection_rows']:,} vectors",
                     f"upsert {fmt(fl['upsert_ms_p50'])} ms + flush {fmt(fl['flush_ms_p50'])} ms (p50)", "-", "-"])
    sim = r["similar"]
    for kind in ("cold", "warm"):
        s = sim[kind]
        ok = s["rps"] >= TARGETS["similar_rps"] and s["p99"] <= TARGETS["similar_p99_ms"] and s["errors"] == 0
        rows.append([f"GET similar, {kind} ({'cache miss' if kind == 'cold' else 'cached'})",
                     f"{s['ok']:,} req, c={s['concurrency']}, {r['scale']['products']:,} products",
                     f"{fmt(s['rps'])} req/s; p50 {fmt(s['p50'])} / p90 {fmt(s['p90'])} / p99 {fmt(s['p99'])} ms; "
                     f"{s['errors']} errors",
                     f"≥ {TARGETS['similar_rps']:,.0f} req/s, p99 ≤ {TARGETS['similar_p99_ms']:.0f} ms", met(ok)])
    se = r["search"]
    for kind in ("sequential", "concurrent"):
        s = se[kind]
        conc = 1 if kind == "sequential" else s["concurrency"]
        rows.append([f"POST search, {kind}", f"{s['ok']:,} req, c={conc}",
                     f"{fmt(s['rps'])} req/s; p50 {fmt(s['p50'])} / p99 {fmt(s['p99'])} ms; {s['errors']} errors",
                     f"p50 ≤ {TARGETS['search_p50_ms']:.0f} ms" if kind == "sequential" else "-",
                     met(s["p50"] <= TARGETS["search_p50_ms"] and s["errors"] == 0) if kind == "sequential" else "-"])
    return rows


def print_table(rows: list[list[str]]) -> None:
    headers = ["benchmark", "load", "result", "target", "status"]
    plain = [[c.replace("**", "") for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in plain)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print("\n" + line + "\n" + "-" * len(line))
    for row in plain:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print()


def cpu_shares(cpu: dict) -> dict:
    return {name: seconds / max(cpu["wall_s"], 1e-9) for name, seconds in cpu["cpu_s"].items()}


def limits_section(r: dict, args) -> list[str]:
    """'What limits us', derived from the measured numbers."""
    cores = r["machine"]["cores"]
    out = []
    ing = r["ingest"]
    shares = cpu_shares(ing["cpu"])
    worker_share = shares.get("celery worker", 0)
    idle = ing.get("idle_between_tasks", 0.0)
    text = (f"- **Ingest: {fmt(ing['img_s_steady'])} img/s steady.** While a 32-image task runs the worker embeds at "
            f"{fmt(ing.get('img_s_in_task'))} img/s (task p50 {fmt(ing['task_p50_s'], '.2f')} s; the first task "
            f"{fmt(ing['first_task_s'], '.2f')} s includes the model load), using {worker_share:.2f} cores on average "
            f"({ing['worker_cpu_s_per_image'] * 1000:.0f} ms CPU per image; machine {ing['cpu']['machine_busy'] * 100:.0f}% busy). ")
    if idle >= 0.15:
        text += (f"But between tasks the worker sits idle for p50 {fmt(ing.get('gap_p50_s'), '.2f')} s — "
                 f"{idle * 100:.0f}% of the time — although work is queued: with the filesystem broker Celery runs its "
                 f"blocking loop (`drain_events(timeout=2.0)`), and with acks_late + prefetch 1 the next message is "
                 f"only fetched after the previous ack is processed at the end of that 2 s cycle "
                 f"(`scripts/bench.py --worker-prefetch 2` measures the worker without that gap). ")
    text += (f"The embedding itself is CPU-bound: on {cores} cores more worker processes would split the same CPU; "
             f"a smaller input (EMBEDDER_IMAGE_SIZE=160) or a GPU worker is what raises images/s.")
    out.append(text)
    fr = r["freshness"]
    out.append(
        f"- **Freshness**: p50 {fmt(fr['vector_store']['p50'], '.2f')} s from save to searchable with an idle worker, "
        f"of which {fmt(fr['pickup']['p50'], '.2f')} s until the worker received the task (broker polling) and "
        f"{fmt(fr['task']['p50'], '.2f')} s running it (decode, thumbnail, embed one image, upsert + flush, DB "
        f"update). Behind a backlog it is the queue wait: {ing['images']:,} queued images drain in "
        f"{fmt(ing['all_ready_s'], '.0f')} s. Similar lists of *existing* products are cached for "
        f"SIMILAR_PRODUCTS_CACHE_SECONDS, so a new product shows up there only after that TTL."
    )
    fl = r.get("flush", {})
    if fl:
        parts = "; ".join(f"{fmt(v['flush_ms_p50'])} ms at {v['collection_rows']:,} vectors" for v in fl.values())
        out.append(f"- **Milvus flush** after every 32-image upsert costs {parts} (p50): every flush writes a new "
                   f"Parquet segment that Milvus Lite later compacts and re-indexes (HNSW) in the background.")
    sim = r["similar"]
    cold, warm = sim["cold"], sim["warm"]
    cs, ws = cpu_shares(cold["cpu"]), cpu_shares(warm["cpu"])
    calls = list(r.get("milvus_calls", {}).values())
    miss_ms = None
    if calls:
        big = calls[-1]["calls"]
        miss_ms = sum(big.get(k, {}).get("p50_ms", 0) for k in ("resolve active collection", "query by product_id (rows_for_product)",
                                                                 "ANN search k=68, filter product_id != id"))
        growth = ""
        if len(calls) > 1:
            small = calls[0]["calls"]
            growth = (f" From {calls[0]['vectors']:,} to {calls[-1]['vectors']:,} vectors the query by product_id goes "
                      f"{fmt(small['query by product_id (rows_for_product)']['p50_ms'])} → "
                      f"{fmt(big['query by product_id (rows_for_product)']['p50_ms'])} ms and a search "
                      f"{fmt(small['ANN search k=68, no filter']['p50_ms'])} → {fmt(big['ANN search k=68, no filter']['p50_ms'])} ms, "
                      f"while a get by primary key stays at {fmt(big['get by primary key (image_id)']['p50_ms'])} ms.")
        out.append(
            f"- **Milvus Lite is the ceiling for anything that misses the cache.**{growth} Milvus Lite 3.2 is a Python "
            f"gRPC server that, on every search and query, walks every row of every segment in Python (dedup by "
            f"sequence number and a tombstone check per row; seen with cProfile: `_build_local_mask`, "
            f"`_update_max_seqs`, `delta_index.is_deleted`), while the faiss HNSW search itself takes under a "
            f"millisecond. So its cost grows linearly with the catalog, runs on one core (GIL), and one similar-products "
            f"miss costs about {fmt(miss_ms, '.0f')} ms of it: at most ~{1000 / max(miss_ms, 1e-9):.0f} misses/s, "
            f"whatever gunicorn does."
        )
    out.append(
        f"- **Similar products, cache miss**: {fmt(cold['rps'])} req/s, p50 {fmt(cold['p50'])} ms at c={cold['concurrency']} "
        f"(latency is mostly queueing for Milvus). CPU during the run: Milvus Lite {cs.get('milvus-lite', 0):.2f} cores, "
        f"gunicorn {cs.get('gunicorn', 0):.2f}, load generator {cs.get('load generator', 0):.2f}, other processes "
        f"{cold['cpu'].get('other_cpu_s', 0) / max(cold['cpu']['wall_s'], 1e-9):.2f} (machine "
        f"{cold['cpu']['machine_busy'] * 100:.0f}% busy)."
        + (f" The similar-products cache is local memory, per gunicorn worker process: each product misses once per "
           f"worker ({r['args_web_workers']} workers)." if r["cache"] != "Redis" else "")
    )
    out.append(
        f"- **Similar products, cached**: {fmt(warm['rps'])} req/s, p99 {fmt(warm['p99'])} ms. gunicorn used "
        f"{ws.get('gunicorn', 0):.2f} cores, Milvus Lite still {ws.get('milvus-lite', 0):.2f}: every hit still makes "
        f"Milvus round trips to resolve the active collection (for the cache key and again for the response), runs "
        f"the catalog queries (products + categories + images) and DRF serialisation. At ~{1000 * ws.get('gunicorn', 0) / max(warm['rps'], 1e-9):.1f} ms of "
        f"web CPU per request, {cores} cores cap Django at about {cores * max(warm['rps'], 1e-9) / max(ws.get('gunicorn', 0) + ws.get('milvus-lite', 0), 1e-9):,.0f} req/s "
        f"even with no load generator on the box; {TARGETS['similar_rps']:,.0f} req/s needs the response cached as "
        f"bytes (or a CDN/edge cache) and more cores."
    )
    se = r["search"]
    ss = cpu_shares(se["sequential"]["cpu"])
    search_ms = calls[-1]["calls"].get("ANN search k=68, no filter", {}).get("p50_ms") if calls else None
    out.append(
        f"- **Search by photo** is one embedding on the web worker plus one Milvus search "
        f"(~{fmt(search_ms, '.0f')} ms by itself at {calls[-1]['vectors'] if calls else 0:,} vectors): "
        f"p50 {fmt(se['sequential']['p50'])} ms sequential "
        f"(gunicorn {ss.get('gunicorn', 0):.2f} cores busy); concurrent requests queue for the same {cores} cores "
        f"(p50 {fmt(se['concurrent']['p50'])} ms at c={se['concurrent']['concurrency']}). Each gunicorn worker holds "
        f"its own copy of the model and torch threads per worker default to all cores, so concurrency "
        f"oversubscribes the CPU."
    )
    return out


def milvus_calls_table(r: dict) -> list[str]:
    runs = list(r.get("milvus_calls", {}).values())
    if not runs:
        return []
    lines = ["| call | " + " | ".join(f"p50 ms at {run['vectors']:,} vectors" for run in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for name in runs[0]["calls"]:
        lines.append(f"| {name} | " + " | ".join(fmt(run["calls"].get(name, {}).get("p50_ms")) for run in runs) + " |")
    return lines


def cpu_table(r: dict) -> list[str]:
    runs = [("ingest", r["ingest"]["cpu"]), ("similar cold", r["similar"]["cold"]["cpu"]),
            ("similar warm", r["similar"]["warm"]["cpu"]), ("search sequential", r["search"]["sequential"]["cpu"]),
            ("search concurrent", r["search"]["concurrent"]["cpu"])]
    names = ["celery worker", "gunicorn", "milvus-lite", "load generator", "bench (this process)"]
    lines = ["| run | wall s | machine busy | " + " | ".join(names) + " | other |",
             "|---|---|---|" + "---|" * (len(names) + 1)]
    for label, cpu in runs:
        shares = cpu_shares(cpu)
        lines.append(f"| {label} | {cpu['wall_s']:.0f} | {cpu['machine_busy'] * 100:.0f}% | "
                     + " | ".join(f"{shares.get(n, 0):.2f}" for n in names)
                     + f" | {cpu.get('other_cpu_s', 0) / max(cpu['wall_s'], 1e-9):.2f} |")
    return lines


def write_report(r: dict, args, argv: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    DOCS.mkdir(exist_ok=True)
    png = DOCS / "benchmarks_latency.png"
    series = [("similar, cold (cache miss)", r["similar"]["cold"]), ("similar, warm (cached)", r["similar"]["warm"]),
              ("search, sequential", r["search"]["sequential"]),
              (f"search, c={r['search']['concurrent']['concurrency']}", r["search"]["concurrent"])]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, s) in zip(axes.flat, series):
        ms = np.asarray(s["latencies_s"]) * 1000
        if len(ms):
            bins = np.logspace(np.log10(max(ms.min(), 0.1)), np.log10(ms.max() * 1.01 + 0.1), 50)
            ax.hist(ms, bins=bins, color="#3b6ea5")
            ax.set_xscale("log")
            for q, style in (("p50", "-"), ("p99", "--")):
                ax.axvline(s[q], color="#c0392b", linestyle=style, label=f"{q} {s[q]:.1f} ms")
            ax.legend(fontsize=8)
        ax.set_title(f"{title}: {s['ok']:,} req, {s['rps']:.1f} req/s", fontsize=10)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("requests")
    fig.suptitle(f"VisNet API latency, {r['scale']['products']:,} products, {r['machine']['cores']} cores "
                 f"({r['started']:%Y-%m-%d})", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)

    m, sc, ing = r["machine"], r["scale"], r["ingest"]
    rows = table_rows(r)
    command = " ".join(["python", "scripts/bench.py", *argv]) if argv else "make bench  # = .venv/bin/python scripts/bench.py"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `scripts/bench.py` on {r['started']:%Y-%m-%d %H:%M} UTC "
        f"({r['phases']['total_s'] / 60:.1f} min). Re-run with `make bench`; every number below comes from that run.",
        "",
        "```",
        command,
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable), RAM {m['ram_gib']:.0f} GiB, GPU: {m['gpu']}",
        f"- {m['os']}; Python {m['python']}, torch {m['torch']} (CPU), Django {m['django']}, gunicorn {m['gunicorn']}, "
        f"Celery {m['celery']}, pymilvus {m['pymilvus']}, milvus-lite {m['milvus_lite']}",
        f"- Everything on this one machine, over 127.0.0.1: Milvus Lite server (gRPC), ONE Celery worker "
        f"(concurrency 1, filesystem broker), gunicorn {args.web_workers} workers × {args.threads} threads, "
        f"SQLite (WAL), {r['cache']} cache, and the load generator ({args.load_procs} process(es), asyncio "
        f"keep-alive HTTP/1.1) competing for the same cores.",
        f"- Embedder: {r['embedder']}.",
        "",
        "## Results",
        "",
        "| benchmark | load | result | target | status |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "![latency histograms](benchmarks_latency.png)",
        "",
        "## Catalog and requests",
        "",
        f"- **Ingested through the worker**: {ing['images']:,} real Fashion-MNIST items "
        f"(`manage.py load_demo_catalog --size {ing['images']}`: products + PNGs, queued in 32-image tasks). "
        f"First task queued {fmt(ing['first_queued_s'], '.1f')} s after the command started, all rows were written at "
        f"{fmt(ing['loader_done_s'], '.1f')} s, all images ready at {fmt(ing['all_ready_s'], '.1f')} s; "
        f"{ing['tasks']} tasks, p50 {fmt(ing['task_p50_s'], '.2f')} s each. Steady rate = slope between 10 % and "
        f"90 % ready; end-to-end = ready images / (last ready − first queued), model load included.",
        f"- **Gallery for the similar-products test: {sc['products']:,} products / {sc['vectors']:,} vectors "
        f"(dim {sc['dim']})**. {sc['real_ingested']:,} are the real ingested items above; the other "
        f"{sc['synthetic']:,} were bulk-created in the database (status ready, pointing at the image files of the "
        f"ingested items) and their vectors are **the real embedding of a randomly chosen ingested item plus "
        f"Gaussian noise (noise norm {sc['noise_norm']}), re-normalised** (mean cosine to the source vector "
        f"{fmt(sc['mean_cos_to_source'], '.3f')}), upserted straight into the same Milvus collection with the "
        f"fields of `vector_row()`. Embedding {sc['synthetic']:,} more images through the worker at the "
        f"{fmt(ing.get('img_s_in_task'))} img/s measured would take {sc['synthetic'] / max(ing.get('img_s_in_task') or 1e-9, 1e-9) / 3600:.1f} h. "
        f"Building it took {sc['total_s']:.0f} s (DB {sc['db_insert_s']:.0f} s, upsert {sc['vector_upsert_s']:.0f} s, "
        f"waiting for Milvus Lite's background HNSW index build {sc['milvus_settle_s']:.0f} s).",
        f"- **Freshness**: {len(r['freshness']['trials'])} new products, each saved with one image "
        f"(`product_image_create`, the API and admin's path) while the worker was idle; polled every 20 ms: an ANN "
        f"search in Milvus returning the new image id, `GET /api/products/{{new}}/similar/` returning results, and "
        f"the row's status in the DB (p50 {fmt(r['freshness']['db_ready']['p50'], '.2f')} s).",
        f"- **Similar products**: `GET /api/products/{{id}}/similar/?k=12`, {args.concurrency} concurrent keep-alive "
        f"connections for {args.duration:.0f} s per run. Cold: ids in random order, each requested once "
        f"(pool {r['similar']['cold_pool']:,}). Warm: {r['similar']['warm_set']} ids requested "
        f"{args.warm_passes}× first ({fmt(r['similar']['warm']['prime_s'], '.0f')} s; the set is sized from the cold "
        f"rate so priming fits in {args.prime_timeout:.0f} s) so every gunicorn worker's local-memory cache holds "
        f"them, then random picks from that set. Latency = request sent → full body read.",
        f"- **Search by photo**: `POST /api/search/` (multipart `image`), {r['search']['sequential']['ok'] + r['search']['sequential']['errors']} "
        f"640×480 JPEGs (~{r['search']['image_bytes_avg'] / 1024:.0f} KB) made of an ingested Fashion-MNIST item "
        f"recoloured and pasted on a blurred street-like background; sequentially on one connection, then "
        f"concurrently at c={r['search']['concurrent']['concurrency']}."
        + (f" Sanity check: {r['search']['sequential']['category_precision_at_10'] * 100:.0f}% of the top-10 "
           f"results share the query item's category." if r['search']['sequential'].get('category_precision_at_10') is not None else ""),
        "",
        "## Milvus calls behind one similar-products cache miss",
        "",
        "Sequential gRPC calls from the benchmark process to the same Milvus Lite server, at both collection sizes "
        "(random products; k=68 is what `similar/?k=12` asks Milvus for). A cache miss resolves the active collection, makes the "
        "query by product_id and the filtered search; search by photo makes one unfiltered search.",
        "",
        *milvus_calls_table(r),
        "",
        "## CPU by process during each run",
        "",
        "Average cores busy (1.00 = one core fully used) while each run was going. \"Other\" is everything on the "
        "machine the benchmark did not start (e.g. a test suite running at the same time); it competes for the "
        "same cores and makes the numbers pessimistic.",
        "",
        *cpu_table(r),
        "",
        "## What limits us",
        "",
        *limits_section(r, args),
        "",
    ]
    if r["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in r["notes"]], ""]
    lines += ["## Phase timings", "", ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in r["phases"].items()), ""]
    path = DOCS / "benchmarks.md"
    path.write_text("\n".join(lines))
    return path


def parse_args(argv):
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --ingest 300 --catalog 5000 --duration 5 --search-requests 30 --fresh-trials 3")
    parser.add_argument("--ingest", type=int, default=2000, help="real Fashion-MNIST items ingested through the worker")
    parser.add_argument("--catalog", type=int, default=100_000, help="products in the similar-products gallery")
    parser.add_argument("--noise", type=float, default=0.3, help="norm of the Gaussian noise added to copied vectors")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the similar-products runs")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per similar-products run")
    parser.add_argument("--load-procs", type=int, default=1, help="load-generator processes")
    parser.add_argument("--warm-set", type=int, default=200, help="ids in the warm (cached) set")
    parser.add_argument("--warm-passes", type=int, default=None, help="priming passes over the warm set "
                        "(default: 4 x gunicorn workers)")
    parser.add_argument("--prime-timeout", type=float, default=90.0, help="max seconds to prime the warm set")
    parser.add_argument("--search-requests", type=int, default=100)
    parser.add_argument("--search-concurrency", type=int, default=4)
    parser.add_argument("--search-timeout", type=float, default=120.0, help="max seconds for the concurrent search run")
    parser.add_argument("--fresh-trials", type=int, default=5)
    parser.add_argument("--fresh-timeout", type=float, default=30.0)
    parser.add_argument("--web-workers", type=int, default=2 * cores, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="gunicorn access log to a file, as scripts/run.sh does")
    parser.add_argument("--image-size", type=int, default=None, help="EMBEDDER_IMAGE_SIZE for worker and web")
    parser.add_argument("--worker-torch-threads", type=int, default=None, help="TORCH_NUM_THREADS for the worker")
    parser.add_argument("--web-torch-threads", type=int, default=None, help="TORCH_NUM_THREADS for gunicorn")
    parser.add_argument("--worker-prefetch", type=int, default=1,
                        help="celery --prefetch-multiplier (scripts/run.sh uses 1)")
    parser.add_argument("--fresh-gap", type=float, default=3.0,
                        help="seconds between freshness trials so each finds the worker idle")
    parser.add_argument("--broker-url", default="filesystem://", help="Celery broker (isolated filesystem queue "
                        "under VAR_DIR by default; a shared Redis would mix with other workers)")
    parser.add_argument("--ingest-timeout", type=float, default=None, help="default: 60 s + 0.5 s per image")
    parser.add_argument("--settle-timeout", type=float, default=300.0,
                        help="max seconds to wait for Milvus Lite's background index build")
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="max seconds to wait for other load on the machine to drop before starting")
    parser.add_argument("--idle-threshold", type=float, default=0.25, help="machine busy fraction counted as quiet")
    parser.add_argument("--var-dir", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--keep", action="store_true", help="do not wipe --var-dir first")
    parser.add_argument("--only", default="", help="comma-separated phases to run (ingest always runs): "
                        "freshness, flush_small, milvus_calls_small, scale, flush_large, milvus_calls, similar, search; "
                        "implies --no-report")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/benchmarks.md and the PNG")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"ingest": 300, "catalog": 5000, "duration": 5.0, "search_requests": 30, "fresh_trials": 3,
                    "warm_set": 100, "prime_timeout": 30.0}
        for key, value in defaults.items():
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    bench = Bench(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started in the background, where SIGINT is ignored
    try:
        bench.run()
        r = bench.results
        r["machine"] = machine_description()
        r["args_web_workers"] = args.web_workers
        r["cache"] = "Redis" if bench.settings.CACHE_URL.startswith("redis") else "per-process local-memory"
        if args.only:
            (bench.var_dir / "results.json").write_text(json.dumps(r, default=str, indent=1))
            log(f"partial run (--only {args.only}); raw numbers in {bench.var_dir / 'results.json'}")
            return 0
        r["embedder"] = (f"{bench.settings.EMBEDDER_BACKBONE} at {bench.settings.EMBEDDER_IMAGE_SIZE} px, "
                         f"batch {bench.settings.EMBEDDER_BATCH_SIZE}, CPU")
        print_table(table_rows(r))
        raw = {k: v for k, v in r.items()}
        (bench.var_dir / "results.json").write_text(json.dumps(raw, default=str, indent=1))
        if not args.no_report:
            path = write_report(r, args, argv)
            log(f"wrote {path.relative_to(ROOT)} and docs/benchmarks_latency.png "
                f"(raw numbers: {(bench.var_dir / 'results.json').relative_to(ROOT)})")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything this benchmark started ...")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        bench.stack.stop_all()
        for child in mp.active_children():
            child.terminate()
        log("all benchmark processes stopped")


if __name__ == "__main__":
    sys.exit(main())
