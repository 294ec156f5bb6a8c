"""Model versions: activation re-embeds into a new collection and swaps the alias with no downtime,
rollback swaps back, failures leave the alias alone. Real Milvus server, real embedders, real worker.

Two real ImageNet versions stand in for trained ones (different image sizes: different vectors):
imagenet-efficientnet_lite0-128 (the default here) and imagenet-efficientnet_lite0-160.
"""

import json
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from tests.conftest import start_worker, stop_worker, wait_until
from webapp.catalog import services
from webapp.catalog.models import Product, ProductImage
from webapp.search import activation, registry, versions
from webapp.search import services as search_services
from webapp.search.models import ModelVersion
from webapp.search.selectors import search_by_image

SHIPPED_MODEL_SECTION = json.loads((Path(__file__).parent.parent / "models/visnet-default/config.json").read_text())[
    "model"
]
V128 = "imagenet-efficientnet_lite0-128"
V160 = "imagenet-efficientnet_lite0-160"


@pytest.fixture
def small_default(settings, vector_store):
    """The ImageNet stand-in at 128 px is the default version (fast on 2 cores)."""
    settings.EMBEDDER_IMAGE_SIZE = 128
    registry.reset_active_version_cache()
    yield vector_store
    registry.reset_active_version_cache()


@pytest.fixture
def fresh_worker(tmp_path, milvus_uri, milvus_names, small_default, transactional_db):
    """A real worker on an emptied broker (tasks other tests left queued would delay this one)."""
    from django.conf import settings

    from webapp.celery import app

    # test_ingestion's broker tests create a Celery("sender") app, which becomes the current app: the
    # shared tasks would then publish to that test's temporary broker. Make the project's app current.
    app.set_current()
    app.set_default()
    app.control.purge()
    worker = start_worker(
        tmp_path, milvus_uri, milvus_names, settings.CELERY_BROKER_URL, extra_env={"EMBEDDER_IMAGE_SIZE": "128"}
    )
    yield worker
    stop_worker(worker)


def make_product(sku, price="19.99"):
    category = services.category_get_or_create(name="Shirt")
    product, _ = services.product_upsert(sku=sku, title=f"Product {sku}", price=Decimal(price), category=category)
    return product


def collection_rows(store, name):
    return list(store.collection(name).iter_rows(("image_id", "model_version")))


def top_product(content):
    results = search_by_image(content=content, k=3)
    return results[0].product.pk if results else None


def write_artifact(path, model_version="visnet-test-1", **overrides):
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_version": model_version, "model": SHIPPED_MODEL_SECTION}
    files = {
        "weights.pt": b"not really weights",
        "config.json": json.dumps(config).encode(),
        "metrics.json": json.dumps({"recall@1": 0.42, "recall@10": 0.8}).encode(),
        "data_hash": b"abc123\n",
    }
    files.update(overrides)
    for name, content in files.items():
        if content is not None:
            (path / name).write_bytes(content)
    return path


@pytest.mark.worker
def test_activation_reembeds_swaps_alias_without_downtime_then_rolls_back(small_default, fresh_worker, fashion_items):
    celery_worker = fresh_worker
    store = small_default
    assert registry.active_version(fresh=True) is None  # reads never register a version
    assert versions.default_version_ensure().model_version == V128  # make run's setup does
    products, contents = [], []
    for index, (content, _) in enumerate(fashion_items[:6]):
        product = make_product(f"v-{index}")
        services.product_image_create(product=product, content=content)  # queued to the worker on commit
        products.append(product)
        contents.append(content)
    try:
        wait_until(lambda: ProductImage.objects.filter(status="ready").count() == 6, 90, message="ingest with v128")
    except AssertionError:
        print(celery_worker.log()[-6000:])
        raise
    old_collection = registry.get_vector_store().collection_name(V128)
    assert store.active_collection() == old_collection and store.count() == 6

    v160, created = versions.model_version_register(kind="imagenet", image_size=160)
    assert created and v160.state == "registered"

    # Shoppers keep searching while the worker re-embeds and swaps: no error, never an empty answer.
    outcomes, errors, stop = [], [], threading.Event()

    def shop():
        from django.db import connection

        try:
            while not stop.is_set():
                for product, content in zip(products, contents, strict=True):
                    try:
                        seen = registry.active_version().model_version
                        outcomes.append((seen, product.pk, top_product(content)))
                    except Exception as exc:  # noqa: BLE001 (any failure is the finding)
                        errors.append(repr(exc))
        finally:
            connection.close()

    shopper = threading.Thread(target=shop, daemon=True)
    shopper.start()
    try:
        assert activation.model_version_activate(version=v160) == "queued"
        wait_until(
            lambda: ModelVersion.objects.get(pk=v160.pk).state == "active",
            60,
            interval=0.2,
            message=f"v160 active (worker log: {celery_worker.log()[-2000:]})",
        )
        time.sleep(registry.ACTIVE_VERSION_TTL_SECONDS + 1.0)  # the searches notice the new version
    finally:
        stop.set()
        shopper.join(30)
    assert not errors, errors[:3]
    assert {seen for seen, _, _ in outcomes} == {V128, V160}, "searches ran on both sides of the swap"
    assert all(top == expected for _, expected, top in outcomes), [o for o in outcomes if o[1] != o[2]][:5]

    new_collection = registry.get_vector_store().collection_name(V160)
    assert store.active_collection() == new_collection
    assert store.has_collection(old_collection), "the previous collection stays for rollback"
    rows = collection_rows(store, new_collection)
    assert len(rows) == 6 and {row["model_version"] for row in rows} == {V160}
    assert set(ProductImage.objects.values_list("model_version", flat=True)) == {V160}
    assert ModelVersion.objects.get(model_version=V128).state == "standby"
    v160.refresh_from_db()
    assert v160.embedded == v160.total == 6 and v160.dim == 1280 and v160.activated_at

    # Activating again is a no-op; ingestion now writes the new version into the new collection.
    assert activation.model_version_activate(version=v160) == "active"
    fresh = make_product("after-swap")
    image = services.product_image_create(product=fresh, content=fashion_items[20][0])
    wait_until(lambda: ProductImage.objects.get(pk=image.pk).status == "ready", 30, message="ingest after swap")
    assert ProductImage.objects.get(pk=image.pk).model_version == V160
    assert [r["model_version"] for r in collection_rows(store, new_collection) if r["image_id"] == image.pk] == [V160]
    assert store.count(collection=old_collection) == 6
    assert top_product(fashion_items[20][0]) == fresh.pk

    # Rollback: the alias points back at the kept collection; what changed meanwhile is re-ingested.
    call_command("rollback_model")
    assert store.active_collection() == old_collection
    assert ModelVersion.objects.get(model_version=V128).state == "active"
    assert ModelVersion.objects.get(model_version=V160).state == "standby"
    wait_until(lambda: ProductImage.objects.get(pk=image.pk).model_version == V128, 30, message="re-ingest on rollback")
    wait_until(lambda: store.count(collection=old_collection) == 7, 10, message="rolled-back collection caught up")
    registry.reset_active_version_cache()
    assert top_product(fashion_items[20][0]) == fresh.pk
    assert set(ProductImage.objects.values_list("model_version", flat=True)) == {V128}


@pytest.mark.django_db
def test_resumed_reembed_catches_up_with_ingest_and_deletes_then_swaps(small_default, fashion_items):
    store = small_default
    images = []
    for index, (content, _) in enumerate(fashion_items[30:34]):
        images.append(services.product_image_create(product=make_product(f"c-{index}"), content=content))
    search_services.images_ingest(image_ids=[i.pk for i in images])
    v160, _ = versions.model_version_register(kind="imagenet", image_size=160)
    activation.model_version_activate(version=v160, queue=False)

    # One batch, then the "task" runs out of time: progress is saved, the alias has not moved.
    assert activation.catalog_reembed(version_id=v160.pk, batch_size=1, time_budget=0) is False
    v160.refresh_from_db()
    assert (v160.state, v160.embedded, v160.total, v160.reembed_cursor) == ("embedding", 1, 4, images[0].pk)
    assert store.active_collection() == registry.get_vector_store().collection_name(V128)

    # Meanwhile: a new image is ingested (with the active v128) and an embedded one is deleted.
    late = services.product_image_create(product=make_product("late"), content=fashion_items[40][0])
    search_services.images_ingest(image_ids=[late.pk])
    assert ProductImage.objects.get(pk=late.pk).model_version == V128
    gone = images[0].pk
    ProductImage.objects.filter(pk=gone).delete()
    search_services.image_vectors_remove(image_ids=[gone])  # what the delete signal's task does

    assert activation.catalog_reembed(version_id=v160.pk) is True
    new_collection = registry.get_vector_store().collection_name(V160)
    assert store.active_collection() == new_collection
    rows = collection_rows(store, new_collection)
    assert sorted(r["image_id"] for r in rows) == sorted([i.pk for i in images[1:]] + [late.pk])
    assert {r["model_version"] for r in rows} == {V160}
    assert (
        store.count(collection=registry.get_vector_store().collection_name(V128)) == 4
    )  # kept, minus the deleted image
    assert set(ProductImage.objects.values_list("model_version", flat=True)) == {V160}

    # Safe to re-run: nothing changes, nothing is duplicated.
    assert activation.catalog_reembed(version_id=v160.pk) is True
    assert len(collection_rows(store, new_collection)) == 4
    registry.reset_active_version_cache()
    assert top_product(fashion_items[40][0]) == late.product_id


@pytest.mark.django_db
def test_failed_activation_leaves_the_alias_untouched(small_default, fashion_items, tmp_path):
    store = small_default
    image = services.product_image_create(product=make_product("f-1"), content=fashion_items[50][0])
    search_services.images_ingest(image_ids=[image.pk])
    artifact = write_artifact(tmp_path / "visnet-test-1")
    call_command("register_model", str(artifact))
    version = ModelVersion.objects.get(model_version="visnet-test-1")
    assert (version.kind, version.state, version.data_hash, version.metrics["recall@1"]) == (
        "visnet",
        "registered",
        "abc123",
        0.42,
    )
    call_command("register_model", str(artifact))  # idempotent
    assert ModelVersion.objects.filter(model_version="visnet-test-1").count() == 1

    for name in artifact.iterdir():
        name.unlink()
    artifact.rmdir()
    with pytest.raises(Exception, match="missing"):
        call_command("activate_model", "visnet-test-1", "--sync")
    version.refresh_from_db()
    assert version.state == "failed" and "missing" in version.error
    assert store.active_collection() == registry.get_vector_store().collection_name(V128)
    assert registry.active_version(fresh=True).model_version == V128
    assert top_product(fashion_items[50][0]) == image.product_id
    with pytest.raises(activation.VersionError):
        activation.model_version_rollback()  # nothing on standby


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"weights.pt": None}, "lacks weights.pt"),
        ({"config.json": b"{not json"}, "does not parse"),
        ({"config.json": b"{}"}, "no model_version"),
    ],
)
def test_register_refuses_an_invalid_artifact(tmp_path, overrides, reason):
    artifact = write_artifact(tmp_path / "a", **overrides)
    with pytest.raises(versions.ArtifactInvalid, match=reason):
        versions.model_version_register(artifact_dir=artifact)
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_register_refuses_a_different_artifact_under_a_known_version(tmp_path):
    versions.model_version_register(artifact_dir=write_artifact(tmp_path / "a"))
    with pytest.raises(versions.ArtifactInvalid, match="different artifact"):
        versions.model_version_register(artifact_dir=write_artifact(tmp_path / "b", data_hash=b"other"))


@pytest.mark.django_db
def test_admin_lists_versions_with_metrics(admin_client, tmp_path):
    versions.model_version_register(artifact_dir=write_artifact(tmp_path / "a"))
    response = admin_client.get("/admin/search/modelversion/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "visnet-test-1" in body and "recall@1=0.42" in body
    version = ModelVersion.objects.get()
    assert admin_client.get(f"/admin/search/modelversion/{version.pk}/change/").status_code == 200


@pytest.mark.django_db
def test_an_ab_candidate_is_embedded_beside_the_active_kept_current_by_ingestion_then_activated_without_a_full_reembed(
    small_default, fashion_items, monkeypatch
):
    store = small_default
    images = [
        services.product_image_create(product=make_product(f"ab-{index}"), content=content)
        for index, (content, _) in enumerate(fashion_items[52:56])
    ]
    search_services.images_ingest(image_ids=[i.pk for i in images])
    old_collection = registry.get_vector_store().collection_name(V128)
    v160, _ = versions.model_version_register(kind="imagenet", image_size=160)
    new_collection = registry.get_vector_store().collection_name(V160)

    assert activation.model_version_prepare_candidate(version=v160, share=0.2, queue=False) == "queued"
    assert activation.catalog_reembed(version_id=v160.pk) is True
    v160.refresh_from_db()
    assert (v160.state, v160.ab_share, v160.embedded, v160.total) == ("candidate", 0.2, 4, 4)
    assert store.active_collection() == old_collection  # the alias never moved
    assert registry.active_version(fresh=True).model_version == V128
    assert registry.candidate_version(fresh=True).model_version == V160
    assert {r["model_version"] for r in collection_rows(store, new_collection)} == {V160}
    assert set(ProductImage.objects.values_list("model_version", flat=True)) == {V128}  # stamps follow the active
    assert activation.model_version_prepare_candidate(version=v160, share=0.3) == "updated"
    # The catalog so far was ingested and last edited a while ago (catch-up looks at the last seconds only).
    long_ago = timezone.now() - timedelta(hours=1)
    ProductImage.objects.update(created_at=long_ago, embedded_at=long_ago)
    Product.objects.update(updated_at=long_ago)

    # While it is a candidate, ingestion, price edits and deletes reach its collection too.
    late = services.product_image_create(product=make_product("ab-late"), content=fashion_items[57][0])
    search_services.images_ingest(image_ids=[late.pk])
    assert late.pk in {r["image_id"] for r in collection_rows(store, new_collection)}
    assert late.pk in {r["image_id"] for r in collection_rows(store, old_collection)}
    product = images[1].product
    product.price = Decimal("5.00")
    product.save()
    search_services.product_vectors_sync(product_id=product.pk)
    assert {r["price"] for r in store.collection(new_collection).rows_for_product(product.pk, with_vectors=False)} == {
        5.0
    }
    gone = images[0].pk
    ProductImage.objects.filter(pk=gone).delete()
    search_services.image_vectors_remove(image_ids=[gone])
    assert gone not in {r["image_id"] for r in collection_rows(store, new_collection)}

    # Activating the candidate: a catch-up pass (only what changed lately), then the swap.
    embedded = []
    real_embed_into = activation._embed_into

    def counting_embed_into(embedder, version, batch, collection):
        embedded.extend(image.pk for image in batch)
        return real_embed_into(embedder, version, batch, collection)

    monkeypatch.setattr(activation, "_embed_into", counting_embed_into)
    assert activation.model_version_activate(version=v160, queue=False) == "queued"
    assert activation.catalog_reembed(version_id=v160.pk) is True
    assert set(embedded) <= {late.pk, images[1].pk}, embedded  # changed in the last seconds; never the whole catalog
    v160.refresh_from_db()
    assert (v160.state, v160.ab_share) == ("active", 0.0)
    assert store.active_collection() == new_collection
    assert ModelVersion.objects.get(model_version=V128).state == "standby"
    assert sorted(r["image_id"] for r in collection_rows(store, new_collection)) == sorted(
        [i.pk for i in images[1:]] + [late.pk]
    )
    registry.reset_active_version_cache()
    assert registry.candidate_version(fresh=True) is None
    assert top_product(fashion_items[57][0]) == late.product_id


@pytest.mark.django_db
def test_ending_an_ab_test_keeps_the_collection_and_a_broken_candidate_never_stops_ingestion(
    small_default, fashion_items, tmp_path
):
    store = small_default
    image = services.product_image_create(product=make_product("end-1"), content=fashion_items[58][0])
    search_services.images_ingest(image_ids=[image.pk])
    v160, _ = versions.model_version_register(kind="imagenet", image_size=160)
    activation.model_version_prepare_candidate(version=v160, share=0.1, queue=False)
    with pytest.raises(activation.VersionError, match="already in an A/B test"):
        other, _ = versions.model_version_register(kind="imagenet", image_size=192)
        activation.model_version_prepare_candidate(version=other, share=0.1, queue=False)
    activation.catalog_reembed(version_id=v160.pk)
    activation.model_version_end_candidate(version=v160)
    v160.refresh_from_db()
    assert (v160.state, v160.ab_share) == ("registered", 0.0)  # never active: not a rollback target
    assert store.has_collection(registry.get_vector_store().collection_name(V160))  # kept until pruned
    with pytest.raises(activation.VersionError):
        activation.model_version_end_candidate(version=v160)

    # A candidate whose artifact vanished: ingestion marks it failed and goes on with the active version.
    broken = versions.model_version_register(artifact_dir=write_artifact(tmp_path / "visnet-broken", "visnet-broken"))[
        0
    ]
    ModelVersion.objects.filter(pk=broken.pk).update(state="candidate", ab_share=0.1)
    late = services.product_image_create(product=make_product("end-2"), content=fashion_items[59][0])
    report = search_services.images_ingest(image_ids=[late.pk])
    assert report.ready == [late.pk]
    broken.refresh_from_db()
    assert broken.state == "failed" and broken.ab_share == 0 and "candidate" in broken.error
