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
SYNTHETIC_SKU_PREFIX = "bench-syn-"


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
    if hasattr(store, "vectors_by_image"):  # primary-key gets: no scan of a collection that may hold millions
        vectors = store.vectors_by_image(sorted(wanted))
    else:
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
                    sku=f"{SYNTHETIC_SKU_PREFIX}{first + j:07d}",
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


def _create_rows_postgres(base_images, picks, first: int, model_version: str, prng: random.Random, now):
    """What _create_rows makes, in two INSERT ... SELECT FROM unnest(...) statements (PostgreSQL): at a million
    products the ORM's per-object cost would be most of the build. Returns unsaved-looking model instances carrying
    the new ids and the fields `vector_row()` reads."""
    import json

    from django.db import connection, transaction

    from webapp.catalog.models import Product, ProductImage

    sources = [base_images[p] for p in picks]
    skus = [f"{SYNTHETIC_SKU_PREFIX}{first + j:07d}" for j in range(len(picks))]
    prices = [round(float(b.product.price) * prng.uniform(0.8, 1.2), 2) for b in sources]
    stock = [prng.random() < 0.9 for _ in sources]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Product._meta.db_table} (sku, title, brand, price, currency, attributes, in_stock, "
            "created_at, updated_at, category_id) SELECT s, t, b, p, 'USD', a::jsonb, st, %s, %s, c FROM "
            "unnest(%s::text[], %s::text[], %s::text[], %s::numeric[], %s::text[], %s::bool[], %s::bigint[]) "
            "AS u(s, t, b, p, a, st, c) RETURNING id, sku",
            [
                now,
                now,
                skus,
                [b.product.title for b in sources],
                [b.product.brand for b in sources],
                prices,
                [json.dumps({"source": "bench-synthetic", "base_sku": b.product.sku}) for b in sources],
                stock,
                [b.product.category_id for b in sources],
            ],
        )
        product_id = {sku: pk for pk, sku in cursor.fetchall()}
        product_ids = [product_id[sku] for sku in skus]
        cursor.execute(
            f"INSERT INTO {ProductImage._meta.db_table} (image, thumbnail, source_url, position, checksum, width, "
            "height, status, error, attempts, model_version, embedded_at, created_at, product_id) "
            "SELECT i, th, '', 0, ch, w, h, %s, '', 1, %s, %s, %s, pid FROM "
            "unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::bigint[]) "
            "AS u(i, th, ch, w, h, pid) RETURNING id, product_id",
            [
                ProductImage.Status.READY,
                model_version,
                now,
                now,
                [b.image.name for b in sources],
                [b.thumbnail.name for b in sources],
                [b.checksum for b in sources],
                [b.width for b in sources],
                [b.height for b in sources],
                product_ids,
            ],
        )
        image_of = {pid: pk for pk, pid in cursor.fetchall()}
    images = []
    for pid, source, price, in_stock in zip(product_ids, sources, prices, stock, strict=True):
        product = Product(id=pid, category_id=source.product.category_id, price=price, in_stock=in_stock)
        images.append(ProductImage(id=image_of[pid], product=product))
    return images


def _active_model_version() -> str:
    from webapp.search.registry import active_version

    version = active_version(fresh=True)
    if version is None:
        raise BenchError("no active model version (manage.py ensure_default_model did not run?)")
    return version.model_version


def gallery_fill(store, *, target: int, noise: float, seed: int = 12345) -> dict:
    """Bulk-create products until the catalog holds `target` (none when it already does): each a copy of a random
    ingested item (its image files, title, category; price +-20 %, 90 % in stock) whose vector is the item's real
    embedding plus Gaussian noise of norm `noise`, re-normalised, upserted without a flush. Resumable: the SKUs
    continue from the products already there. Returns counts and timings; the caller flushes."""
    import numpy as np
    from django.db import connection
    from django.utils import timezone

    from webapp.catalog.models import Product
    from webapp.search.services import vector_row

    existing = Product.objects.count()
    extra = max(0, target - existing)
    base_images, base_matrix = _base_vectors(store)
    model_version = _active_model_version()
    dim = base_matrix.shape[1]
    sigma = noise / np.sqrt(dim)  # noise vector norm ~ `noise` before re-normalising
    rng, prng, now = np.random.default_rng(seed + existing), random.Random(seed + existing), timezone.now()
    created, insert_s, upsert_s, last, t_log = 0, 0.0, 0.0, None, time.monotonic()
    create = _create_rows_postgres if connection.vendor == "postgresql" else _create_rows
    while created < extra:
        n = min(BATCH, extra - created)
        picks = rng.integers(0, len(base_images), n)
        t_db = time.monotonic()
        images = create(base_images, picks, existing + created, model_version, prng, now)
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
        if created == extra or time.monotonic() - t_log > 10:
            t_log = time.monotonic()
            log(f"  {existing + created:,}/{target:,} products (db {insert_s:.0f}s, upsert {upsert_s:.0f}s)")
    cos = float(np.mean(np.sum(last[0] * base_matrix[last[1]], axis=1))) if last is not None else float("nan")
    return {
        "existing": existing,
        "created": created,
        "real_ingested": len(base_images),
        "dim": int(dim),
        "noise_norm": noise,
        "mean_cos_to_source": cos,
        "db_insert_s": insert_s,
        "vector_upsert_s": upsert_s,
    }


def scale_catalog(ctx: Context) -> None:
    from webapp.catalog.models import Product, ProductImage
    from webapp.search.registry import get_vector_store

    store = get_vector_store()
    existing = Product.objects.count()
    log(
        f"scale: {existing:,} products exist, bulk-creating {max(ctx.args.catalog - existing, 0):,} more "
        f"(noisy copies of real vectors)"
    )
    t0 = time.monotonic()
    filled = gallery_fill(store, target=ctx.args.catalog, noise=ctx.args.noise)
    t_flush = time.monotonic()
    store.flush()
    flush_s = time.monotonic() - t_flush
    settle = wait_milvus_idle(ctx)
    sc = ctx.results["scale"] = {
        "products": Product.objects.count(),
        "images_ready": ProductImage.objects.filter(status="ready").count(),
        "real_ingested": filled["real_ingested"],
        "synthetic": filled["created"],
        "noise_norm": ctx.args.noise,
        "mean_cos_to_source": filled["mean_cos_to_source"],
        "db_insert_s": filled["db_insert_s"],
        "vector_upsert_s": filled["vector_upsert_s"],
        "final_flush_s": flush_s,
        "milvus_settle_s": settle,
        "total_s": time.monotonic() - t0,
        "vectors": store.count(),
        "dim": filled["dim"],
    }
    log(
        f"scale: {sc['products']:,} products, {sc['vectors']:,} vectors "
        f"(dim {sc['dim']}, mean cosine to source {sc['mean_cos_to_source']:.3f}) in {sc['total_s']:.0f}s "
        f"(db {sc['db_insert_s']:.0f}s, upsert {sc['vector_upsert_s']:.0f}s, flush {flush_s:.1f}s, "
        f"index settle {settle:.0f}s)"
    )
