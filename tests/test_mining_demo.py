"""Mining candidate triplets for the catalog (what `make run` does for the demo catalog): the review queue fills,
a second run adds nothing, decisions survive a re-mine; street triplets only with the benchmark built."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests import test_review
from tests.conftest import wait_until
from tests.test_curation import add_products, make_user
from webapp.catalog.models import Product
from webapp.curation.mining import triplets_mine
from webapp.curation.models import Triplet, TripletDecision

# The tiny street-to-shop benchmark (built once per session) and the settings that point the curation at it.
tiny_benchmark = test_review.tiny_benchmark
curation_benchmark = test_review.curation_benchmark


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def bench_catalog(db, tiny_benchmark):
    """The tiny benchmark's test gallery (160 Fashion-MNIST test items) as catalog products, by their SKUs."""
    from ml.data.fashion_mnist import CLASS_NAMES

    gallery = [int(i) for i in tiny_benchmark.galleries["test"]]
    items = [
        (
            tiny_benchmark.shop_keys[i],
            png(tiny_benchmark.shop_image(i)),
            CLASS_NAMES[int(tiny_benchmark.shop_labels[i])],
        )
        for i in gallery
    ]
    return add_products(items)


def test_mining_fills_the_queue_once_and_a_re_mine_keeps_every_decision(
    admin_client,
    curation_benchmark,
    bench_catalog,
):
    bench = curation_benchmark
    report = triplets_mine(limit=150)
    assert report.products == 160 and report.unreadable == 0
    assert report.street_mined > 0 and report.catalog_mined > 0
    assert report.created == report.street_mined + report.catalog_mined <= 150 and not report.errors
    assert "street photo items of the tiny benchmark" in report.street_note

    triplets = list(Triplet.objects.all())
    assert len(triplets) == report.created and all(t.status == "pending" for t in triplets)
    assert {t.kind for t in triplets} == {"catalog", "street"}
    categories = {p.sku: p.category.name for p in Product.objects.select_related("category")}
    for triplet in triplets:
        assert triplet.category == categories[triplet.positive_ref.removeprefix("shop:")]
        for ref in (triplet.positive_ref, triplet.negative_ref):
            assert ref.removeprefix("shop:") in categories, ref  # only catalog products
        if triplet.kind == "street":
            _, split, index = triplet.anchor_ref.split(":")
            item = bench.items[int(index)]
            assert item.split == split == "test"
            assert triplet.positive_ref == f"shop:{bench.shop_keys[item.shop_index]}"  # its exact item
        else:
            assert triplet.anchor_ref.removeprefix("shop:") in categories
    batch = admin_client.get("/curation/review/triplets/").json()
    assert batch["triplets"] and batch["remaining"] == report.created - len(batch["triplets"])

    again = triplets_mine(limit=150)
    assert (again.created, again.updated, again.unchanged) == (0, 0, report.created)

    reviewer = make_user("rita", staff=True)
    from webapp.curation.services import triplet_decide

    catalog = [t for t in triplets if t.kind == "catalog"]
    street = [t for t in triplets if t.kind == "street"]
    swapped_positive = catalog[1].negative_ref
    triplet_decide(triplet=catalog[0], action="approve", reviewer=reviewer)
    triplet_decide(triplet=street[0], action="reject", reviewer=reviewer)
    triplet_decide(triplet=catalog[1], action="swap", reviewer=reviewer)
    triplet_decide(triplet=catalog[1], action="approve", reviewer=reviewer)
    third = triplets_mine(limit=150)
    assert third.created == 0 and third.skipped_swapped == 1  # the swapped one is not mined back the other way
    assert Triplet.objects.count() == report.created and TripletDecision.objects.count() == 4
    statuses = dict(Triplet.objects.filter(reviewed_by=reviewer).values_list("pk", "status"))
    assert statuses == {catalog[0].pk: "approved", street[0].pk: "rejected", catalog[1].pk: "approved"}
    assert Triplet.objects.get(pk=catalog[1].pk).positive_ref == swapped_positive


def test_without_the_benchmark_only_catalog_triplets_are_mined(settings, bench_catalog, tiny_benchmark):
    settings.CURATION_BENCHMARK, settings.CURATION_BENCHMARK_SEED = "tiny", 4242  # not built
    report = triplets_mine(limit=40)
    assert report.street_mined == 0 and report.catalog_mined == report.created == 40
    assert "not built" in report.street_note
    assert set(Triplet.objects.values_list("kind", flat=True)) == {"catalog"}


def test_since_mines_only_the_products_created_after_it(curation_benchmark, bench_catalog):
    now = timezone.now()
    new = {p.sku for p in bench_catalog[-12:]}
    Product.objects.exclude(sku__in=new).update(created_at=now - timedelta(days=2))
    report = triplets_mine(limit=500, since=now - timedelta(hours=1))
    assert report.new_products == 12 and report.created > 0
    for triplet in Triplet.objects.all():
        if triplet.kind == "catalog":
            assert triplet.anchor_ref.removeprefix("shop:") in new
        else:
            assert triplet.positive_ref.removeprefix("shop:") in new
    # Neighbours still come from the whole catalog.
    assert {t.negative_ref.removeprefix("shop:") for t in Triplet.objects.all()} - new

    nothing = triplets_mine(limit=500, since=timezone.now())
    assert nothing.new_products == 0 and nothing.created == 0


def test_the_command_and_the_task(curation_benchmark, bench_catalog, capsys):
    call_command("mine_triplets", "--limit", "30", "--build-benchmark")
    out = capsys.readouterr().out
    assert "street-to-shop benchmark tiny seed 0" in out and "mine_triplets: 160 products" in out
    assert "30 created" in out
    with pytest.raises(Exception, match="not an ISO 8601"):
        call_command("mine_triplets", "--since", "yesterday")

    from webapp.celery import app
    from webapp.curation.tasks import mine_triplets

    assert app.amqp.router.route({}, "curation.mine_triplets", (), {})["queue"].name == "default"
    result = mine_triplets.apply(kwargs={"limit": 30, "since_minutes": 60}).get()
    assert result["products"] == 160 and result["new_products"] == 160 and result["created"] == 0
    old = timezone.now() - timedelta(days=1)
    Product.objects.update(created_at=old)
    assert mine_triplets.apply(kwargs={"limit": 30}).get()["new_products"] == 0  # the periodic window: nothing new
    whole = mine_triplets.apply(kwargs={"limit": 30, "full": True}).get()
    assert whole["new_products"] is None and whole["unchanged"] == 30
    with pytest.raises(ValueError, match="not an ISO 8601"):
        mine_triplets.apply(kwargs={"since": "soon"}).get()


@pytest.mark.worker
def test_a_worker_mines_on_the_default_queue(
    tmp_path, milvus_uri, milvus_names, transactional_db, settings, fashion_items
):
    """The task by name, through the broker, in a real worker process: the review queue fills."""
    from tests.conftest import start_worker, stop_worker
    from webapp.celery import app

    add_products([(f"sku-{i}", png_bytes, f"Label {label}") for i, (png_bytes, label) in enumerate(fashion_items)])
    worker = start_worker(
        tmp_path,
        milvus_uri,
        milvus_names,
        settings.CELERY_BROKER_URL,
        queues="default",
        extra_env={"CURATION_BENCHMARK": "tiny", "CURATION_BENCHMARK_SEED": "4242"},
    )
    try:
        app.set_current()
        app.send_task("curation.mine_triplets", kwargs={"limit": 25})
        wait_until(
            lambda: any(
                "curation.mine_triplets[" in line and "succeeded" in line for line in worker.log().splitlines()
            ),
            timeout=90,
            message="the mining task to succeed (tasks other tests left on the queue may run first)",
        )
    finally:
        stop_worker(worker)
    # 60 products in 10 categories: some anchors have no far same-category item, so a few less than the limit.
    assert 15 <= Triplet.objects.filter(kind="catalog", status="pending").count() <= 25
    assert "curation.mine_triplets" in worker.log() and "'created': " in worker.log()
