"""Freshness: a new product saved with one image (the API and admin's path) -> searchable, with an idle worker."""

from __future__ import annotations

import json
import time
import uuid

from benchmarks.harness import Context, log, percentile
from benchmarks.ingest import DEMO_SKU_PREFIX, worker_task_timeline
from benchmarks.loadgen import KeepAlive

SEARCH_LIMIT = 20  # the new image's vector equals its source's: both are in the top few of its category


def _in_vector_store(store, vector, product, image) -> bool:
    """An ANN search in Milvus returns the new image id."""
    import numpy as np

    from webapp.search.vector_store import SearchFilters

    hits = store.search(
        np.asarray([vector], dtype=np.float32), SEARCH_LIMIT, SearchFilters(category_id=product.category_id)
    )
    return any(hit.image_id == image.pk for hit in hits[0])


def _in_api(client: KeepAlive, product) -> bool:
    status, body = client.request("GET", f"/api/products/{product.pk}/similar/?k=12")
    return status == 200 and json.loads(body).get("count", len(json.loads(body).get("results", []))) > 0


def _poll(ctx: Context, store, client: KeepAlive, vector, product, image, t_save: float) -> dict:
    """Poll every 20 ms until the vector store, the API and the database all show the new image."""
    from webapp.catalog.models import ProductImage

    seen: dict[str, float] = {}
    deadline = t_save + ctx.args.fresh_timeout
    while len(seen) < 3 and time.monotonic() < deadline:
        if "vector_store" not in seen and _in_vector_store(store, vector, product, image):
            seen["vector_store"] = time.monotonic() - t_save
        if "api" not in seen and _in_api(client, product):
            seen["api"] = time.monotonic() - t_save
        if "db_ready" not in seen and ProductImage.objects.filter(pk=image.pk, status="ready").exists():
            seen["db_ready"] = time.monotonic() - t_save
        time.sleep(0.02)
    return seen


def _worker_task_after(ctx: Context, wall_save: float) -> dict | None:
    task, wait_until = None, time.monotonic() + 5
    while task is None and time.monotonic() < wait_until:  # the log line follows the DB update
        task = next((t for t in worker_task_timeline(ctx.worker_log()) if t["received"] >= wall_save - 0.01), None)
        time.sleep(0.05)
    return task


def _trial(ctx: Context, store, client: KeepAlive, base, number: int) -> dict:
    from webapp.catalog import services as catalog_services

    time.sleep(ctx.args.fresh_gap)
    base_image = base.images.filter(status="ready").first()
    with base_image.image.open("rb") as handle:
        content = handle.read()
    vector = store.rows_for_product(base.pk)[0]["vector"]
    product, _ = catalog_services.product_upsert(
        sku=f"bench-fresh-{uuid.uuid4().hex[:8]}",
        title=base.title,
        price=base.price,
        category=base.category,
        brand=base.brand,
    )
    t_save = time.monotonic()
    wall_save = time.time()
    image = catalog_services.product_image_create(product=product, content=content)  # queues on commit
    t_saved = time.monotonic()
    seen = _poll(ctx, store, client, vector, product, image, t_save)
    record = {"save_s": t_saved - t_save, **seen}
    task = _worker_task_after(ctx, wall_save)
    if task is not None:
        record.update(pickup_s=task["received"] - wall_save, task_s=task["run_s"])
    log(
        f"  trial {number}: save {1000 * (t_saved - t_save):.0f} ms, "
        + ", ".join(f"{k} {v:.2f}s" for k, v in seen.items())
        + (
            f" (worker got the task {record['pickup_s']:.2f}s after the save, ran it in {record['task_s']:.2f}s)"
            if task
            else ""
        )
    )
    return record


def aggregate(records: list[dict], key: str) -> dict:
    values = [r[key] for r in records if key in r]
    missing = sum(1 for r in records if key not in r)
    return {"p50": percentile(values, 50), "max": max(values, default=float("nan")), "missing": missing}


def bench_freshness(ctx: Context) -> None:
    from webapp.catalog.models import Product
    from webapp.search.registry import get_vector_store

    store = get_vector_store()
    trials = ctx.args.fresh_trials
    bases = list(
        Product.objects.filter(sku__startswith=DEMO_SKU_PREFIX, images__status="ready")
        .select_related("category")
        .order_by("?")[:trials]
    )
    client = KeepAlive(ctx.web_port)
    log(f"freshness: {trials} new products, each with one new image (idle worker) ...")
    records = [_trial(ctx, store, client, base, i + 1) for i, base in enumerate(bases)]
    client.close()
    ctx.results["freshness"] = {
        "trials": records,
        "vector_store": aggregate(records, "vector_store"),
        "api": aggregate(records, "api"),
        "db_ready": aggregate(records, "db_ready"),
        "pickup": aggregate(records, "pickup_s"),
        "task": aggregate(records, "task_s"),
    }
