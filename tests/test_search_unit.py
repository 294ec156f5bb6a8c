"""Search and ingestion services against the in-memory fakes: fast, no processes, no model.

The same behaviour is pinned against a real Milvus server and the real model in test_search_behaviour.py.
"""

from __future__ import annotations

import io
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.fakes import FakeVectorStore, PixelEmbedder, RandomEmbedder
from tests.search_checks import assert_filter_is_applied_inside_the_vector_query, iou
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Product, ProductImage
from webapp.search import registry
from webapp.search import services as search_services
from webapp.search.models import ModelVersion
from webapp.search.selectors import search_by_image, similar_products
from webapp.search.vector_store import SearchFilters


@pytest.fixture
def fake_search(monkeypatch, db):
    store = FakeVectorStore()
    embedders: dict[str, PixelEmbedder] = {}

    def embedder_for(version):
        return embedders.setdefault(version.model_version, PixelEmbedder(version.model_version))

    monkeypatch.setattr(registry, "get_vector_store", lambda: store)
    monkeypatch.setattr(registry, "embedder_for", embedder_for)
    registry.reset_active_version_cache()
    yield SimpleNamespace(store=store, embedders=embedders)
    registry.reset_active_version_cache()


def make_product(sku: str, category: str = "Shirt", price: str = "20.00", in_stock: bool = True) -> Product:
    category_row = catalog_services.category_get_or_create(name=category)
    product, _ = catalog_services.product_upsert(
        sku=sku, title=sku, price=Decimal(price), category=category_row, in_stock=in_stock
    )
    return product


def ingest_catalog(items: list[tuple[bytes, int]], **product_fields) -> list[Product]:
    products, image_ids = [], []
    for index, (content, label) in enumerate(items):
        product = make_product(f"item-{index}", category=f"class-{label}", **product_fields)
        image_ids.append(catalog_services.product_image_create(product=product, content=content).pk)
        products.append(product)
    report = search_services.images_ingest(image_ids=image_ids)
    assert sorted(report.ready) == sorted(image_ids), report
    return products


def perturbed(content: bytes, seed: int) -> bytes:
    """A different photo of the same item: enlarged, shifted, lighter, with sensor noise, saved as JPEG."""
    rng = np.random.default_rng(seed)
    image = Image.open(io.BytesIO(content)).convert("RGB").resize((112, 112), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = np.roll(pixels, shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    pixels = pixels * 0.9 + 20 + rng.normal(0, 8, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_reads_on_an_empty_install_answer_empty_and_register_nothing(fake_search, fashion_items):
    product = make_product("lonely")
    assert search_by_image(content=fashion_items[0][0], k=5) == []
    assert similar_products(product=product, k=5) == []
    assert not ModelVersion.objects.exists(), "a read registered a model version"
    assert fake_search.store.active_collection() is None and fake_search.store._state["searches"] == 0


def test_first_ingestion_registers_the_default_version_and_reingesting_never_duplicates(fake_search, fashion_items):
    products = ingest_catalog(fashion_items[:5])
    version = ModelVersion.objects.get()
    assert version.state == ModelVersion.State.ACTIVE and version.kind == ModelVersion.Kind.IMAGENET
    assert fake_search.store.active_collection() == fake_search.store.collection_name(version.model_version)
    image_ids = list(ProductImage.objects.values_list("pk", flat=True))
    search_services.images_ingest(image_ids=image_ids)
    assert fake_search.store.count() == 5
    assert {row["product_id"] for row in fake_search.store.iter_rows(("product_id",))} == {p.pk for p in products}


def test_a_perturbed_photo_finds_its_item_first(fake_search, fashion_items):
    products = ingest_catalog(fashion_items[:40])
    hits = [
        search_by_image(content=perturbed(fashion_items[i][0], seed=i), k=3)[0].product.pk == products[i].pk
        for i in range(0, 40, 4)
    ]
    assert sum(hits) >= 9, hits


def test_a_random_embedder_fails_the_perturbed_photo_check(fake_search, fashion_items):
    """The check above is not vacuous: with a model that ignores the image it finds almost nothing."""
    products = ingest_catalog(fashion_items[:40])
    version = registry.active_version(fresh=True)
    fake_search.embedders[version.model_version] = RandomEmbedder(version.model_version)
    found = [
        search_by_image(content=perturbed(fashion_items[i][0], seed=i), k=3)[0].product.pk == products[i].pk
        for i in range(0, 40, 4)
    ]
    assert sum(found) <= 3


def test_similar_products_exclude_the_product_and_rank_its_look_alikes_first(fake_search, fashion_items):
    base = fashion_items[0][0]
    near = perturbed(base, seed=1)
    far = [content for content, _ in fashion_items[1:9]]
    products = ingest_catalog([(base, 0), (near, 0)] + [(content, 1) for content in far])
    ranked = similar_products(product=products[0], k=5)
    assert products[0].pk not in [r.product.pk for r in ranked]
    assert ranked[0].product.pk == products[1].pk
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)


def test_a_filter_that_only_the_vector_query_can_satisfy_on_a_catalog_larger_than_the_overfetch(
    fake_search, fashion_items
):
    ingest_catalog(fashion_items[:60], price="50.00")
    assert_filter_is_applied_inside_the_vector_query(fashion_items[0][0], catalog_size=60)


def test_a_category_edit_reaches_the_vector_fields(fake_search, fashion_items):
    product = ingest_catalog(fashion_items[:1])[0]
    shoes = catalog_services.category_get_or_create(name="Shoes")
    product.category = shoes
    product.save()
    assert search_services.product_vectors_sync(product_id=product.pk) == 1
    assert {row["category_id"] for row in fake_search.store.rows_for_product(product.pk)} == {shoes.pk}
    found = search_by_image(content=fashion_items[0][0], k=3, filters=SearchFilters(category_id=shoes.pk))
    assert [r.product.pk for r in found] == [product.pk]


def test_a_stored_image_damaged_on_disk_is_marked_failed_with_its_reason(fake_search, fashion_items):
    product = make_product("damaged")
    image = catalog_services.product_image_create(product=product, content=fashion_items[0][0])
    with open(image.image.path, "wb") as handle:
        handle.write(b"\x89PNG not really")
    report = search_services.images_ingest(image_ids=[image.pk])
    image.refresh_from_db()
    assert image.pk in report.failed and image.status == ProductImage.Status.FAILED and image.error
    assert fake_search.store.count() == 0


def test_a_catalog_scene_stores_its_main_items_box_and_a_product_shot_stays_whole(fake_search, fashion_items):
    """The shipped detector runs in the ingesting process on a street photo of the benchmark's test split."""
    from ml.data.street2shop import build_benchmark

    benchmark = build_benchmark(size="tiny", seed=0, progress=False)
    item = benchmark.queries("test")[0]
    buffer = io.BytesIO()
    benchmark.street_photo(item.photo_index).save(buffer, format="JPEG", quality=92)
    scene = catalog_services.product_image_create(product=make_product("scene"), content=buffer.getvalue())
    shot = catalog_services.product_image_create(product=make_product("shot"), content=fashion_items[0][0])
    search_services.images_ingest(image_ids=[scene.pk, shot.pk])
    scene.refresh_from_db()
    shot.refresh_from_db()
    assert shot.status == scene.status == ProductImage.Status.READY
    assert shot.item_box is None
    truths = [i.box for i in benchmark.items if i.photo_index == item.photo_index]
    x1, y1, x2, y2 = scene.item_box
    assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
    assert max(iou(scene.item_box, truth) for truth in truths) >= 0.5, (scene.item_box, truths)
    assert fake_search.store.count() == 2


def test_a_read_for_a_given_version_uses_its_embedder_and_its_own_collection(fake_search, fashion_items):
    """What A/B serving relies on: the selectors read the version they are given (a candidate) and write nothing."""
    products = ingest_catalog(fashion_items[:6])
    candidate = ModelVersion.objects.create(
        model_version="candidate-unit", kind="visnet", state=ModelVersion.State.CANDIDATE, ab_share=0.5
    )
    store = fake_search.store
    name = store.create_collection(candidate.model_version, PixelEmbedder.dim)
    kept = {p.pk for p in products[3:]}  # the candidate's collection holds only the last three products
    rows = [
        dict(row, model_version=candidate.model_version) for row in store._rows().values() if row["product_id"] in kept
    ]
    store.upsert(rows, collection=name)
    before = {collection: dict(rows) for collection, rows in store._state["collections"].items()}

    found = search_by_image(content=fashion_items[0][0], k=6, version=candidate)
    assert {r.product.pk for r in found} == kept and candidate.model_version in fake_search.embedders
    similar = similar_products(product=products[4], k=6, version=candidate)
    assert {r.product.pk for r in similar} == kept - {products[4].pk}
    assert len(search_by_image(content=fashion_items[0][0], k=6)) == 6  # no version given: the active one
    assert store._state["collections"] == before and store.active_collection() != name
