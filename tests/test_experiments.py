"""A/B serving before activation: a candidate version answers a sticky share of shoppers from its own collection.

The split and the client key are unit-tested; serving runs against a real Milvus Lite server (the `vector_store`
fixture) with two collections whose vectors differ, through the API and the product page.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from rest_framework.test import APIClient

from ml.detection.crops import embed_items
from tests.fakes import PixelEmbedder
from tests.test_pages import by_class, by_id, parse
from webapp.catalog import services as catalog_services
from webapp.catalog.images import open_stored_image
from webapp.catalog.models import ProductImage
from webapp.search import experiments, registry
from webapp.search import services as search_services
from webapp.search.models import ModelVersion, ServedCount

CANDIDATE = "candidate-projected"


@pytest.fixture(autouse=True)
def _isolated(settings):
    cache.clear()
    experiments._served_pending.clear()  # other modules' requests counted in this process; not this test's business
    settings.SERVED_COUNTS_FLUSH_SECONDS = 0
    registry.reset_active_version_cache()
    yield
    experiments._served_pending.clear()
    registry.reset_active_version_cache()
    cache.clear()


def versions(share: float, state: str = ModelVersion.State.CANDIDATE) -> tuple[ModelVersion, ModelVersion]:
    active = ModelVersion.objects.create(model_version="active-v1", kind="imagenet", state=ModelVersion.State.ACTIVE)
    candidate = ModelVersion.objects.create(model_version=CANDIDATE, kind="visnet", state=state, ab_share=share)
    registry.reset_active_version_cache()
    return active, candidate


def arms(keys: list[str]) -> list[str]:
    return [experiments.serving_version_for(client_key=key).model_version for key in keys]


# The split --------------------------------------------------------------------------------------------------
def test_a_candidate_serves_its_share_and_every_shopper_keeps_their_arm(db):
    active, candidate = versions(share=0.2)
    keys = [f"{n:064x}" for n in range(10_000)]
    first = arms(keys)
    on_candidate = {key for key, arm in zip(keys, first, strict=True) if arm == CANDIDATE}
    assert 0.18 <= len(on_candidate) / len(keys) <= 0.22
    assert set(first) == {active.model_version, CANDIDATE}
    assert arms(keys) == first  # sticky: the same key, the same arm

    ModelVersion.objects.filter(pk=candidate.pk).update(ab_share=0.5)
    registry.reset_active_version_cache()
    widened = {key for key, arm in zip(keys, arms(keys), strict=True) if arm == CANDIDATE}
    assert on_candidate <= widened and 0.48 <= len(widened) / len(keys) <= 0.52  # nobody on it is moved back

    ModelVersion.objects.filter(pk=candidate.pk).update(ab_share=0.0)
    registry.reset_active_version_cache()
    assert set(arms(keys[:500])) == {active.model_version}


def test_only_an_embedded_candidate_serves(db):
    versions(share=0.5, state=ModelVersion.State.EMBEDDING)  # still being embedded: its collection is incomplete
    assert set(arms([f"{n:064x}" for n in range(300)])) == {"active-v1"}
    ModelVersion.objects.all().delete()
    registry.reset_active_version_cache()
    assert experiments.serving_version_for(client_key="0" * 64) is None  # nothing active: reads answer empty


def test_the_client_key_is_a_stable_hash_of_the_session_user_header_or_address(client, db):
    factory = RequestFactory()
    anonymous = factory.get("/", REMOTE_ADDR="203.0.113.9")
    by_address = experiments.client_key_for(anonymous)
    assert by_address == experiments.client_key_for(factory.get("/", REMOTE_ADDR="203.0.113.9"))
    assert by_address != experiments.client_key_for(factory.get("/", REMOTE_ADDR="203.0.113.10"))
    assert "203.0.113.9" not in by_address and len(by_address) == 64
    header = experiments.client_key_for(factory.get("/", HTTP_X_CLIENT_ID="app-install-1234", REMOTE_ADDR="1.2.3.4"))
    assert header == experiments.client_key_for(factory.get("/", HTTP_X_CLIENT_ID="app-install-1234"))
    assert header != by_address

    # Pages start a session; the shopper keeps its key across requests, other shoppers get their own.
    version = ModelVersion.objects.create(model_version="active-v1", kind="imagenet", state=ModelVersion.State.ACTIVE)
    registry.reset_active_version_cache()
    assert version.pk
    client.get("/search/")
    session_key = client.session.session_key
    assert session_key
    request = factory.get("/")
    request.session = client.session
    key = experiments.client_key_for(request)
    assert session_key not in key and key == experiments.client_key_for(request)


# Serving from the candidate's own collection (real Milvus) --------------------------------------------------
class ProjectedEmbedder(PixelEmbedder):
    """The pixel embedding through a fixed random projection: another model, with other neighbours."""

    projection = np.random.default_rng(7).normal(size=(256, 256)).astype(np.float32)

    def embed(self, images):
        vectors = super().embed(images) @ self.projection.T
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def ab_catalog(db, vector_store, monkeypatch, fashion_items):
    """Twelve products in the active collection (pixel vectors) and in a candidate's (projected vectors)."""
    monkeypatch.setattr(
        registry,
        "embedder_for",
        lambda version: (ProjectedEmbedder if version.model_version == CANDIDATE else PixelEmbedder)(
            version.model_version
        ),
    )
    category = catalog_services.category_get_or_create(name="Tops")
    image_ids, contents = [], {}
    for index, (content, _label) in enumerate(fashion_items[:12]):
        product, _ = catalog_services.product_upsert(
            sku=f"ab-{index}", title=f"AB {index}", price=Decimal("10.00"), category=category
        )
        image = catalog_services.product_image_create(product=product, content=content)
        image_ids.append(image.pk)
        contents[product.pk] = content
    assert sorted(search_services.images_ingest(image_ids=image_ids).ready) == sorted(image_ids)
    active = registry.active_version(fresh=True)

    candidate = ModelVersion.objects.create(
        model_version=CANDIDATE, kind="visnet", state=ModelVersion.State.CANDIDATE, ab_share=0.5, dim=256
    )
    vector_store.create_collection(CANDIDATE, 256)
    embedder = ProjectedEmbedder(CANDIDATE)
    images = list(ProductImage.objects.select_related("product").filter(pk__in=image_ids))
    pictures = [search_services.item_pictures(open_stored_image(image.image), image.item_box) for image in images]
    vectors = embed_items(embedder, pictures)
    rows = [search_services.vector_row(image, vector, CANDIDATE) for image, vector in zip(images, vectors, strict=True)]
    registry.version_store(candidate).upsert(rows)
    registry.reset_active_version_cache()
    return active, candidate, contents


def clients_in_each_arm(candidate: ModelVersion) -> dict[str, str]:
    """An X-Client-Id that lands on each arm (found by the same hash the server uses)."""
    found: dict[str, str] = {}
    for n in range(1000):
        client_id = f"shopper-app-{n:04d}"
        key = experiments.client_key_for(RequestFactory().get("/", HTTP_X_CLIENT_ID=client_id))
        arm = "candidate" if experiments.client_bucket(client_key=key, salt=candidate.model_version) < 0.5 else "active"
        found.setdefault(arm, client_id)
        if len(found) == 2:
            return found
    raise AssertionError("no client on one of the arms")


def expected_neighbours(store, product_id: int, k: int) -> list[int]:
    """The ranking the collection's own vectors dictate (cosine, the product itself excluded)."""
    rows = list(store.iter_rows(("product_id", "vector")))
    matrix = np.asarray([row["vector"] for row in rows], dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    query = matrix[[row["product_id"] for row in rows].index(product_id)]
    order = np.argsort(-(matrix @ query), kind="stable")
    return [rows[i]["product_id"] for i in order if rows[i]["product_id"] != product_id][:k]


def test_the_candidate_answers_its_shoppers_from_its_own_collection(ab_catalog, vector_store):
    active, candidate, contents = ab_catalog
    assert vector_store.active_collection() == vector_store.collection_name(active.model_version)  # alias unmoved
    shoppers = clients_in_each_arm(candidate)
    api = APIClient()
    product_id = next(iter(contents))
    answers = {}
    for arm, client_id in shoppers.items():
        body = api.get(f"/api/products/{product_id}/similar/?k=5", HTTP_X_CLIENT_ID=client_id).json()
        version = candidate if arm == "candidate" else active
        assert body["model_version"] == version.model_version
        assert body["collection"] == vector_store.collection_name(version.model_version)
        answers[arm] = [r["product"]["id"] for r in body["results"]]
        assert answers[arm] == expected_neighbours(registry.version_store(version), product_id, 5)
        again = api.get(f"/api/products/{product_id}/similar/?k=5", HTTP_X_CLIENT_ID=client_id).json()
        assert again["model_version"] == body["model_version"]  # sticky
    assert answers["candidate"] != answers["active"], "the two collections' vectors differ, so must the answers"

    # Search by photo: the candidate's embedder and collection, for the candidate's shoppers only.
    photo = contents[product_id]
    searched = {}
    for arm, client_id in shoppers.items():
        upload = SimpleUploadedFile("q.png", photo, content_type="image/png")
        body = api.post(
            "/api/search/", {"image": upload, "k": 6}, format="multipart", HTTP_X_CLIENT_ID=client_id
        ).json()
        version = candidate if arm == "candidate" else active
        assert body["model_version"] == version.model_version
        searched[arm] = [r["product"]["id"] for r in body["results"]]
        assert searched[arm][0] == product_id and searched[arm][1:] == answers[arm]
    served = {(s.model_version, s.surface): s.served for s in ServedCount.objects.all()}
    assert served == {
        (active.model_version, "similar"): 2,
        (CANDIDATE, "similar"): 2,
        (active.model_version, "search"): 1,
        (CANDIDATE, "search"): 1,
    }


def test_the_product_page_keeps_a_shopper_on_one_arm_and_says_which(ab_catalog, client):
    active, candidate, contents = ab_catalog
    product_id = next(iter(contents))
    seen = set()
    for _ in range(12):  # twelve new shoppers: with a 50% share both arms come up (p of not: 2 * 0.5^12)
        client.cookies.clear()
        first = parse(client.get(f"/products/{product_id}/"))
        version = by_id(first, "similar")["attrs"]["data-model-version"]
        for _ in range(2):
            page = parse(client.get(f"/products/{product_id}/"))
            assert by_id(page, "similar")["attrs"]["data-model-version"] == version
        shown = [int(e["attrs"]["data-product-id"]) for e in by_class(first, "similar-item")]
        store = registry.version_store(candidate if version == CANDIDATE else active)
        assert shown == expected_neighbours(store, product_id, 11)
        seen.add(version)
    assert seen == {active.model_version, CANDIDATE}


# Served counts ----------------------------------------------------------------------------------------------
def test_served_counts_are_batched_in_memory_and_added_up_in_the_database(db, settings):
    settings.SERVED_COUNTS_FLUSH_SECONDS = 3600
    active, candidate = versions(share=0.5)
    for _ in range(5):
        experiments.served_record(version=active, surface="similar")
    experiments.served_record(version=candidate, surface="search")
    assert not ServedCount.objects.exists()  # nothing written per response
    assert experiments.served_counts_flush() == 6
    for _ in range(2):
        experiments.served_record(version=active, surface="similar")
    experiments.served_counts_flush()
    assert {(s.model_version, s.surface, s.served) for s in ServedCount.objects.all()} == {
        ("active-v1", "similar", 7),
        (CANDIDATE, "search", 1),
    }
