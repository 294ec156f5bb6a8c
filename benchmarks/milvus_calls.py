"""Milvus, call by call, through the product's vector store: a worker-sized upsert + flush, and what one
similar-products cache miss costs (sequential calls from this process to the same Milvus Lite server)."""

from __future__ import annotations

import random
import time

from benchmarks.harness import Context, log, percentile
from benchmarks.ingest import DEMO_SKU_PREFIX


def _stored_rows(store, batch: int) -> list[dict]:
    """The stored rows (every field, vector included) of the first `batch` ingested demo images."""
    from webapp.catalog.models import ProductImage

    pairs = list(
        ProductImage.objects.filter(product__sku__startswith=DEMO_SKU_PREFIX, status="ready").values_list(
            "pk", "product_id"
        )[:batch]
    )
    ids = {image_id for image_id, _ in pairs}
    rows = [
        row
        for product_id in dict.fromkeys(p for _, p in pairs)
        for row in store.rows_for_product(product_id)
        if int(row["image_id"]) in ids
    ]
    return [{k: (list(map(float, v)) if k == "vector" else v) for k, v in row.items()} for row in rows]


def bench_flush(ctx: Context, label: str, reps: int = 10, batch: int = 32) -> None:
    """Time one worker-sized upsert (32 rows, re-writing existing image ids) and the flush after it."""
    from webapp.search.registry import get_vector_store

    store = get_vector_store()
    rows = _stored_rows(store, batch)
    upserts, flushes = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        store.upsert(rows, flush=False)
        t1 = time.perf_counter()
        store.flush()
        t2 = time.perf_counter()
        upserts.append(t1 - t0)
        flushes.append(t2 - t1)
    result = {
        "rows": len(rows),
        "reps": reps,
        "upsert_ms_p50": percentile(upserts, 50) * 1000,
        "flush_ms_p50": percentile(flushes, 50) * 1000,
        "flush_ms_max": max(flushes) * 1000,
        "collection_rows": store.count(),
    }
    ctx.results.setdefault("flush", {})[label] = result
    log(
        f"milvus flush at {result['collection_rows']:,} rows: upsert {result['upsert_ms_p50']:.1f} ms, "
        f"flush p50 {result['flush_ms_p50']:.1f} ms (max {result['flush_ms_max']:.1f}) for {len(rows)} rows"
    )


def _time_cache_miss_calls(store, picks: list[tuple[int, int]]) -> dict[str, list[float]]:
    import numpy as np

    from webapp.search.vector_store import SearchFilters

    timings: dict[str, list[float]] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        return value

    for image_id, product_id in picks:
        timed("resolve active collection", store.active_collection)
        rows = timed("query by product_id (rows_for_product)", lambda p=product_id: store.rows_for_product(p))
        timed("get by primary key (image_id)", lambda i=image_id: store.vectors_for_images([i]))
        vectors = np.asarray([row["vector"] for row in rows], dtype=np.float32)
        timed(
            "ANN search k=68, filter product_id != id",
            lambda v=vectors, p=product_id: store.search(v, 68, SearchFilters(exclude_product_id=p)),
        )
        timed("ANN search k=68, no filter", lambda v=vectors: store.search(v, 68))
    return timings


def bench_milvus_calls(ctx: Context, label: str, samples: int = 40) -> None:
    """What one similar-products cache miss costs in Milvus, call by call, at the current gallery size."""
    from webapp.catalog.models import ProductImage
    from webapp.search.registry import get_vector_store

    store = get_vector_store()
    pairs = list(ProductImage.objects.filter(status="ready").values_list("pk", "product_id"))
    picks = random.Random(3).sample(pairs, min(samples, len(pairs)))
    timings = _time_cache_miss_calls(store, picks)
    result = {
        name: {"p50_ms": percentile(v, 50) * 1000, "p90_ms": percentile(v, 90) * 1000} for name, v in timings.items()
    }
    ctx.results.setdefault("milvus_calls", {})[label] = {
        "samples": len(picks),
        "vectors": store.count(),
        "calls": result,
    }
    log(
        f"milvus calls at {store.count():,} vectors (sequential, from this process): "
        + "; ".join(f"{name} {v['p50_ms']:.1f} ms" for name, v in result.items())
    )
