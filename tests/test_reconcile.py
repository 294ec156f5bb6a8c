"""reconcile_vectors against a real Milvus Lite server: each kind of drift is injected, found and repaired."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.fakes import PixelEmbedder
from tests.test_search_unit import make_product
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Product, ProductImage
from webapp.search import dispatch, reconcile, registry
from webapp.search import services as search_services
from webapp.search.reconcile import vectors_reconcile


@pytest.fixture
def catalog(vector_store, serving_version, monkeypatch, fashion_items):
    """Six ingested products on the real store; queued ingestion runs at once, as a worker would."""
    embedders: dict[str, PixelEmbedder] = {}
    monkeypatch.setattr(
        registry, "embedder_for", lambda v: embedders.setdefault(v.model_version, PixelEmbedder(v.model_version))
    )
    queued: list[int] = []

    def ingest_now(*, image_ids, batch_size=dispatch.INGEST_BATCH_SIZE):
        queued.extend(image_ids)
        search_services.images_ingest(image_ids=image_ids)
        return 1

    monkeypatch.setattr(dispatch, "ingest_queue", ingest_now)
    monkeypatch.setattr(reconcile, "_ingest_backlog", lambda: 0)  # the drained queue a worker leaves
    image_ids = []
    for index, (content, label) in enumerate(fashion_items[:6]):
        product = make_product(f"rec-{index}", category=f"class-{label}")
        image_ids.append(catalog_services.product_image_create(product=product, content=content).pk)
    search_services.images_ingest(image_ids=image_ids)
    queued.clear()
    return {"store": vector_store, "images": image_ids, "queued": queued, "version": serving_version}


def _counts(reports):
    (active,) = [r for r in reports if r.role == "active"]
    return active.counts()


def test_a_consistent_catalog_is_clean(catalog):
    (report,) = vectors_reconcile()
    assert report.clean and report.vectors == 6, report.counts()


def test_every_kind_of_drift_is_found_then_repaired_and_a_second_run_finds_nothing(catalog, fashion_items):
    store, images = catalog["store"], catalog["images"]
    version = catalog["version"].model_version
    collection = store.active_collection()
    # 1. a vector lost (a crash after the row said ready)
    store.delete_images([images[0]])
    # 2. an image whose message was lost: pending for an hour, no task left
    product = make_product("rec-stuck")
    stuck = catalog_services.product_image_create(product=product, content=fashion_items[7][0])
    ProductImage.objects.filter(pk=stuck.pk).update(created_at=timezone.now() - timedelta(hours=1))
    # 3. a vector whose image is gone, 4. a vector of an older model, 5. a price changed without a sync
    row = store.rows_for_product(Product.objects.get(images__pk=images[1]).pk)[0]
    store.upsert([{**row, "image_id": 999_999}], collection)
    stale_row = store.rows_for_product(Product.objects.get(images__pk=images[2]).pk)[0]
    store.upsert([{**stale_row, "model_version": "an-older-model"}], collection)
    changed = Product.objects.get(images__pk=images[3])
    Product.objects.filter(pk=changed.pk).update(price=Decimal("123.45"))

    found = _counts(vectors_reconcile())
    assert found["missing"] == 1 and found["stuck"] == 1, found
    assert found["orphans"] == 1 and found["stale"] == 1 and found["mismatched"] == 1, found

    repaired = _counts(vectors_reconcile(repair=True))
    assert repaired["requeued"] == 3 and repaired["deleted"] == 1 and repaired["rewritten"] == 1, repaired
    assert sorted(catalog["queued"]) == sorted([images[0], stuck.pk, images[2]])

    (after,) = vectors_reconcile(repair=True)
    assert after.clean, after.counts()
    assert after.requeued == after.deleted == after.rewritten == 0
    assert after.vectors == 7
    assert store.rows_for_product(changed.pk)[0]["price"] == pytest.approx(123.45)
    assert ProductImage.objects.get(pk=stuck.pk).status == ProductImage.Status.READY
    assert {r["model_version"] for r in store.iter_rows(("model_version",))} == {version}


def test_the_command_reports_drift_and_repairs_it(catalog, capsys):
    catalog["store"].delete_images([catalog["images"][4]])
    call_command("reconcile_vectors")
    assert "DRIFT" in capsys.readouterr().out
    call_command("reconcile_vectors", "--repair")
    assert "repaired" in capsys.readouterr().out
    call_command("reconcile_vectors")
    output = capsys.readouterr().out
    assert "clean" in output and "DRIFT" not in output


def test_the_periodic_task_repairs_what_drifted(catalog):
    from webapp.search.tasks import reconcile_vectors

    catalog["store"].delete_images([catalog["images"][5]])
    counts = next(iter(reconcile_vectors.apply().get().values()))
    assert counts["missing"] == 1 and counts["requeued"] == 1
    (after,) = vectors_reconcile()
    assert after.clean, after.counts()


def test_nothing_counts_as_stuck_while_the_ingest_queue_still_holds_messages(catalog, fashion_items, monkeypatch):
    product = make_product("rec-behind-a-long-import")
    waiting = catalog_services.product_image_create(product=product, content=fashion_items[8][0])
    ProductImage.objects.filter(pk=waiting.pk).update(created_at=timezone.now() - timedelta(hours=1))
    monkeypatch.setattr(reconcile, "_ingest_backlog", lambda: 4_000)
    (busy,) = vectors_reconcile(repair=True)
    assert busy.stuck == [] and busy.requeued == 0
    monkeypatch.setattr(reconcile, "_ingest_backlog", lambda: 0)
    (drained,) = vectors_reconcile(repair=True)
    assert drained.stuck == [waiting.pk] and drained.requeued == 1
