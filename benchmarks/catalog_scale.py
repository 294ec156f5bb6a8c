"""Scale the gallery up to --catalog products: bulk-created products (status ready, pointing at the ingested
items' image files) whose vectors are the real embeddings of ingested items plus Gaussian noise, re-normalised,
upserted through the product's vector store in the row format of `vector_row()`."""

from __future__ import annotations

import random
import time

from benchmarks.harness import BenchError, Context, log
from benchmarks.ingest import DEMO_SKU_PREFIX
from benchmarks.stack import wait_milvus_idle

BATCH = 5000
UPSERT_ROWS = 1000


def _base_vectors(store):
    """The ingested demo images that have a vector, and their vectors as one matrix (same order)."""
    import numpy as np

    from webapp.catalog.models import ProductImage

    base_images = list(
        ProductImage.objects.filter(product__sku__startswith=DEMO_SKU_PREFIX, status="ready")
        .select_related("product")
        .order_by("pk")
    )
    wanted = {img.pk for img in base_images}
    vectors = {
        int(row["image_id"]): np.asarray(row["vector"], dtype=np.float32)
        for row in store.iter_rows(("image_id", "vector"))
        if int(row["image_id"]) in wanted
    }
    base_images = [img for img in base_images if img.pk in vectors]
    if not base_images:
        raise BenchError("no ingested vectors to build the gallery from")
    return base_images, np.stack([vectors[img.pk] for img in base_images])


def _create_rows(base_images, picks, first: int, model_version: str, prng: random.Random, now):
    """Products and their ready images, copies of the picked ingested items, in one transaction."""
    from django.db import transaction

    from webapp.catalog.models import Product, ProductImage

    with transaction.atomic():
        products = Product.objects.bulk_create(
            [
                Product(
                    sku=f"bench-syn-{first + j:07d}",
                    title=base_images[p].product.title,
                    brand=base_images[p].product.brand,
                    price=round(float(base_images[p].product.price) * prng.uniform(0.8, 1.2), 2),
                    currency="USD",
                    category_id=base_images[p].product.category_id,
                    attributes={"source": "bench-synthetic", "base_sku": base_images[p].product.sku},
                    in_stock=prng.random() < 0.9,
                )
                for j, p in enumerate(picks)
            ],
            batch_size=1000,
        )
        return ProductImage.objects.bulk_create(
            [
                ProductImage(
                    product=product,
                    image=base_images[p].image.name,
                    thumbnail=base_images[p].thumbnail.name,
                    checksum=base_images[p].checksum,
                    width=base_images[p].width,
                    height=base_images[p].height,
                    status=ProductImage.Status.READY,
                    attempts=1,
                    model_version=model_version,
                    embedded_at=now,
                )
                for product, p in zip(products, picks, strict=True)
            ],
            batch_size=1000,
        )


def _active_model_version() -> str:
    from webapp.search.registry import active_version

    version = active_version(fresh=True)
    if version is None:
        raise BenchError("no active model version (manage.py ensure_default_model did not run?)")
    return version.model_version


def _fill(ctx: Context, store, base_images, base_matrix, extra: int, existing: int) -> dict:
    """Create `extra` products in batches; returns timings and the mean cosine of the last batch to its sources."""
    import numpy as np
    from django.utils import timezone

    from webapp.search.services import vector_row

    model_version = _active_model_version()
    dim = base_matrix.shape[1]
    sigma = ctx.args.noise / np.sqrt(dim)  # noise vector norm ~ args.noise before re-normalising
    rng, prng, now = np.random.default_rng(12345), random.Random(12345), timezone.now()
    created, insert_s, upsert_s, last = 0, 0.0, 0.0, None
    while created < extra:
        n = min(BATCH, extra - created)
        picks = rng.integers(0, len(base_images), n)
        t_db = time.monotonic()
        images = _create_rows(base_images, picks, created, model_version, prng, now)
        insert_s += time.monotonic() - t_db
        noisy = base_matrix[picks] + rng.normal(0.0, sigma, (n, dim)).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        t_vs = time.monotonic()
        rows = [vector_row(image, vector, model_version) for image, vector in zip(images, noisy, strict=True)]
        for start in range(0, len(rows), UPSERT_ROWS):
            store.upsert(rows[start : start + UPSERT_ROWS], flush=False)
        upsert_s += time.monotonic() - t_vs
        created += n
        last = (noisy, picks)
        log(f"  {existing + created:,}/{ctx.args.catalog:,} products")
    cos = float(np.mean(np.sum(last[0] * base_matrix[last[1]], axis=1))) if last is not None else float("nan")
    return {"db_insert_s": insert_s, "vector_upsert_s": upsert_s, "mean_cos_to_source": cos}


def scale_catalog(ctx: Context) -> None:
    from webapp.catalog.models import Product, ProductImage
    from webapp.search.registry import get_vector_store

    store = get_vector_store()
    existing = Product.objects.count()
    extra = ctx.args.catalog - existing
    log(f"scale: {existing:,} products exist, bulk-creating {max(extra, 0):,} more (noisy copies of real vectors)")
    t0 = time.monotonic()
    base_images, base_matrix = _base_vectors(store)
    filled = _fill(ctx, store, base_images, base_matrix, extra, existing)
    t_flush = time.monotonic()
    store.flush()
    flush_s = time.monotonic() - t_flush
    settle = wait_milvus_idle(ctx)
    sc = ctx.results["scale"] = {
        "products": Product.objects.count(),
        "images_ready": ProductImage.objects.filter(status="ready").count(),
        "real_ingested": len(base_images),
        "synthetic": max(extra, 0),
        "noise_norm": ctx.args.noise,
        "mean_cos_to_source": filled["mean_cos_to_source"],
        "db_insert_s": filled["db_insert_s"],
        "vector_upsert_s": filled["vector_upsert_s"],
        "final_flush_s": flush_s,
        "milvus_settle_s": settle,
        "total_s": time.monotonic() - t0,
        "vectors": store.count(),
        "dim": int(base_matrix.shape[1]),
    }
    log(
        f"scale: {sc['products']:,} products, {sc['vectors']:,} vectors "
        f"(dim {sc['dim']}, mean cosine to source {sc['mean_cos_to_source']:.3f}) in {sc['total_s']:.0f}s "
        f"(db {sc['db_insert_s']:.0f}s, upsert {sc['vector_upsert_s']:.0f}s, flush {flush_s:.1f}s, "
        f"index settle {settle:.0f}s)"
    )
