"""HTTP load: asyncio keep-alive HTTP/1.1 clients in separate processes, probes, warm-up, a keep-alive client.

No Django here: the load-generator processes (spawned) import this module.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import random
import resource
import socket
import time
import uuid

from benchmarks.harness import latency_stats


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------
def get_request(path: str, close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n{extra}\r\n".encode()


def multipart_request(
    path: str, field: str, filename: str, content: bytes, content_type: str, fields: dict[str, str] | None = None
) -> bytes:
    """A multipart POST with one file and, optionally, plain form fields (e.g. whole_photo=true)."""
    boundary = uuid.uuid4().hex
    plain = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    )
    body = plain + (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def decode_chunked(body: bytes) -> bytes:
    decoded, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        decoded.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(decoded)


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
        body = decode_chunked(body)
    return status, body


# --------------------------------------------------------------------------------------------
# The load-generator processes
# --------------------------------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool, dict[str, str]]:
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
        return status, body, True, headers
    keep = headers.get("connection", "").lower() != "close" and lines[0].startswith("HTTP/1.1")
    return status, body, not keep, headers


def _count_error(out: dict, kind, sample: str | None = None) -> None:
    out["errors"] += 1
    out["status"][kind] = out["status"].get(kind, 0) + 1
    if sample is not None and len(out["samples"]) < 3:
        out["samples"].append(sample)


async def _client(port, requests, next_index, deadline, out, timeout, check, header=None):
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
            status, body, closed, headers = await asyncio.wait_for(_read_response(reader), timeout)
            elapsed = time.perf_counter() - start
            if closed:
                writer.close()
                reader = writer = None
            if 200 <= status < 300 and (check is None or check(body)):
                out["lat"].append(elapsed)
                out["end"].append(time.perf_counter())
                if header is not None:
                    out["headers"].append(headers.get(header, ""))
            else:
                _count_error(out, status, f"{status}: {body[:200]!r}")
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            _count_error(out, type(exc).__name__)
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


def _load_process(port, requests, order, connections, duration, timeout, validate, queue, header=None):
    """One load-generator process: `connections` keep-alive connections share `order` (indexes into requests)."""
    out = {"lat": [], "end": [], "errors": 0, "status": {}, "samples": [], "headers": []}
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
        await asyncio.gather(
            *[
                _client(
                    port, requests, next_index, deadline, out, timeout, _json_has_results if validate else None, header
                )
                for _ in range(connections)
            ]
        )

    t0 = time.perf_counter()
    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["elapsed"] = time.perf_counter() - t0
    out["start"] = t0
    out["cpu_s"] = usage.ru_utime + usage.ru_stime
    out["exhausted"] = (not cycle) and position[0] >= len(order)
    queue.put(out)


def merge_load_results(results: list[dict], concurrency: int, procs: int) -> dict:
    """One result from the load-generator processes' own: latencies, throughput, errors, latency stats."""
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
        "ok": len(latencies),
        "errors": sum(r["errors"] for r in results),
        "error_kinds": status,
        "error_samples": [s for r in results for s in r["samples"]][:3],
        "elapsed_s": elapsed,
        "rps": len(latencies) / max(end - start, 1e-9) if latencies else 0.0,
        "latencies_s": latencies,
        # One entry per latency, in the same order: the response header asked for (run_load's `header`).
        "header_values": [h for r in results for h in r.get("headers", [])],
        "concurrency": concurrency,
        "procs": procs,
        "exhausted": any(r["exhausted"] for r in results),
        "loadgen_cpu_s": sum(r["cpu_s"] for r in results),
        **latency_stats(latencies),
    }


def run_load(
    port: int,
    requests: list[bytes],
    *,
    concurrency: int,
    duration: float,
    procs: int,
    distinct: bool,
    timeout: float = 30.0,
    validate: bool = True,
    header: str | None = None,
) -> dict:
    """Closed-loop load: `concurrency` connections over `procs` processes for `duration` seconds.

    distinct=True sends every request at most once (cold cache: distinct ids), in order;
    distinct=False picks requests at random from the list (repeat set).
    header: a response header (lower case) kept for every successful request, in `header_values`.
    """
    procs = max(1, min(procs, concurrency))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = []
    for n in range(procs):
        connections = concurrency // procs + (1 if n < concurrency % procs else 0)
        order = list(range(n, len(requests), procs)) if distinct else None
        process = ctx.Process(
            target=_load_process,
            daemon=True,
            args=(port, requests, order, connections, duration, timeout, validate, queue, header),
        )
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
    return merge_load_results(results, concurrency, procs)


# --------------------------------------------------------------------------------------------
# Warm-up and sequential requests
# --------------------------------------------------------------------------------------------
def warm_all_workers(
    port: int, raws: list[bytes], workers: int, budget_s: float = 120.0, max_requests: int | None = None
) -> tuple[int, float]:
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

            def call(raw, timings=timings):
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
        self.last_headers: dict[str, str] = {}  # the last response's headers, names in lower case

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        import http.client

        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                self.last_headers = {name.lower(): value for name, value in response.getheaders()}
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        self.conn.close()
