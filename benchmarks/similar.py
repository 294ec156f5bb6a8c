"""Similar products over HTTP: `GET /api/products/{id}/similar/?k=12`, cold (cache misses) and warm (cached)."""

from __future__ import annotations

import json
import random
import time

from benchmarks.harness import BenchError, Context, log, log_load
from benchmarks.loadgen import get_request, http_call, run_load, warm_all_workers

PATH = "/api/products/{}/similar/?k=12"


def product_ids() -> list[int]:
    from webapp.catalog.models import ProductImage

    return sorted(set(ProductImage.objects.filter(status="ready").values_list("product_id", flat=True)))


def check_api(ctx: Context, product_id: int) -> dict:
    status, body = http_call(ctx.web_port, get_request(PATH.format(product_id)))
    if status != 200:
        raise BenchError(f"GET /api/products/{product_id}/similar/ -> {status}: {body[:300]!r}")
    payload = json.loads(body)
    if not isinstance(payload.get("results"), list) or not payload["results"]:
        raise BenchError(f"similar response has no results: {body[:300]!r}")
    return payload


def _cold(ctx: Context, cold_ids: list[int]) -> dict:
    args = ctx.args
    log(
        f"similar COLD: {args.concurrency} connections for {args.duration:.0f}s over distinct ids "
        f"(each requested once) ..."
    )
    return _measured_load(ctx, "similar cold", cold_ids, distinct=True)


def _measured_load(ctx: Context, label: str, ids: list[int], distinct: bool) -> dict:
    """The timed run: GET similar for `ids` on keep-alive connections, with the CPU of every process."""
    cpu = ctx.cpu_meter()
    result = run_load(
        ctx.web_port,
        [get_request(PATH.format(i)) for i in ids],
        concurrency=ctx.args.concurrency,
        duration=ctx.args.duration,
        procs=ctx.args.load_procs,
        distinct=distinct,
    )
    result["cpu"] = cpu.stop({"load generator": result["loadgen_cpu_s"]})
    log_load(label, result)
    return result


def _warm(ctx: Context, warm_ids: list[int]) -> dict:
    args = ctx.args
    passes = args.warm_passes
    log(
        f"similar WARM: priming {len(warm_ids)} ids x {passes} passes, a new connection per request so every "
        f"gunicorn worker caches them ..."
    )
    t_prime = time.monotonic()
    # Keep-alive connections stick to one worker, and the measured run opens new ones: prime with a fresh
    # connection per request so the requests for each id spread over all workers.
    priming = [get_request(PATH.format(i), close=True) for i in warm_ids]
    run_load(
        ctx.web_port,
        priming * passes,
        concurrency=args.concurrency,
        duration=args.prime_timeout,
        procs=args.load_procs,
        distinct=True,
    )
    prime_s = time.monotonic() - t_prime
    log(
        f"similar WARM: {args.concurrency} connections for {args.duration:.0f}s over the {len(warm_ids)} cached ids ..."
    )
    warm = _measured_load(ctx, "similar warm", warm_ids, distinct=False)
    warm["prime_s"] = prime_s
    return warm


def bench_similar(ctx: Context) -> None:
    args = ctx.args
    ids = product_ids()
    random.Random(7).shuffle(ids)
    payload = check_api(ctx, ids[-1])
    ctx.results["similar_sample"] = {
        "count": payload.get("count"),
        "bytes": len(json.dumps(payload)),
        "keys": sorted(payload["results"][0].keys()),
    }
    warmup_ids, warm_ids, cold_ids = ids[-200:-1], ids[: args.warm_set], ids[args.warm_set : -200]
    sent, took = warm_all_workers(
        ctx.web_port,
        [get_request(PATH.format(i)) for i in warmup_ids],
        args.web_workers,
        max_requests=4 * args.web_workers,
    )
    log(f"similar: warmed gunicorn workers with {sent} requests on fresh connections ({took:.1f}s, not measured)")
    cold = _cold(ctx, cold_ids)
    # Every gunicorn worker has its own cache, so priming costs about warm set x workers misses: size the
    # warm set so that fits in --prime-timeout at the cold rate just measured.
    fits = int(cold["rps"] * args.prime_timeout / (1.5 * args.web_workers))
    warm_ids = warm_ids[: max(10, min(len(warm_ids), fits))]
    warm = _warm(ctx, warm_ids)
    ctx.results["similar"] = {"cold": cold, "warm": warm, "warm_set": len(warm_ids), "cold_pool": len(cold_ids)}
    if cold["exhausted"]:
        ctx.note("The cold run used every distinct product id before the time was up.")
