"""The JSON API: catalog reads and writes, similar products and search by photo on a real Milvus server
with the real embedder, refusal of bad images, authentication, outages and the OpenAPI schema."""

from __future__ import annotations

import io
import re
import struct
import zlib
from decimal import Decimal

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image
from rest_framework.test import APIClient

from tests.conftest import free_port, image_bytes, make_catalog_manager
from webapp.catalog import services
from webapp.catalog.models import Category, Product, ProductImage
from webapp.search import registry as search_registry
from webapp.search import services as search_services

pytestmark = pytest.mark.django_db

PRODUCT_KEYS = {
    "id",
    "sku",
    "title",
    "brand",
    "price",
    "currency",
    "category",
    "attributes",
    "in_stock",
    "url",
    "image",
    "images",
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Similar-product results are cached by collection and product id; ids repeat across tests.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def client():
    return APIClient()


@pytest.fixture
def user():
    return make_catalog_manager("merchant", password="s3cret-pass")


@pytest.fixture
def auth_client(user):
    api = APIClient()
    api.force_authenticate(user)
    return api


def make_product(sku, price="19.99", category="Shirt", in_stock=True, title=None, brand="Northwind"):
    category = services.category_get_or_create(name=category)
    product, _ = services.product_upsert(
        sku=sku,
        title=title or f"Product {sku}",
        price=Decimal(price),
        category=category,
        brand=brand,
        in_stock=in_stock,
        attributes={"colour": "red"},
    )
    return product


def upload(content: bytes, name="photo.png", content_type="image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type=content_type)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no pixel data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bilevel_bomb_png(side: int = 8_000) -> bytes:
    """A real, fully decodable PNG of side x side pixels that compresses to a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 1).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(size=(120, 90), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(buffer, format=fmt)
    return buffer.getvalue()


BAD_IMAGES = [
    pytest.param(b"", "empty.jpg", "image/jpeg", "empty", id="zero-bytes"),
    pytest.param(b"just some text, honestly\n", "photo.jpg", "image/jpeg", "not an image", id="text-as-jpeg"),
    pytest.param(noise_png((200, 200))[:1500], "cut.png", "image/png", "damaged or truncated", id="truncated-png"),
    pytest.param(
        png_header_only(50_000, 50_000),
        "huge.png",
        "image/png",
        "longest side|too many pixels",
        id="header-claims-50000x50000",
    ),
    pytest.param(bilevel_bomb_png(), "bomb.png", "image/png", "megapixels", id="decompression-bomb"),
    pytest.param(encoded("ICO"), "icon.ico", "image/x-icon", "Unsupported image format ICO", id="ico"),
    pytest.param(encoded("TGA"), "pic.tga", "image/x-tga", "Unsupported image format TGA", id="tga"),
]


# Catalog reads ---------------------------------------------------------------------------------


def test_list_shape_absolute_urls_and_no_query_explosion(client, django_assert_max_num_queries):
    product = make_product("sku-1", price="12.50")
    image = services.product_image_create(product=product, content=image_bytes("PNG"))
    make_product("sku-2")
    make_product("sku-3")
    with django_assert_max_num_queries(4):  # count, page, categories (joined), images (prefetched)
        response = client.get("/api/products/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3 and body["next"] is None and body["previous"] is None
    first = body["results"][0]
    assert set(first) == PRODUCT_KEYS
    assert first["id"] == product.pk and first["sku"] == "sku-1" and first["price"] == "12.50"
    assert first["currency"] == "USD" and first["brand"] == "Northwind" and first["attributes"] == {"colour": "red"}
    assert first["category"] == {"id": product.category_id, "name": "Shirt", "slug": "shirt"}
    assert first["url"] == "http://testserver" + reverse("catalog:product-detail", args=[product.pk])
    assert first["image"] == f"http://testserver{image.image.url}"  # no thumbnail before ingestion
    assert first["images"] == [
        {"id": image.pk, "url": f"http://testserver{image.image.url}", "thumbnail_url": None, "status": "pending"}
    ]
    assert body["results"][1]["image"] is None and body["results"][1]["images"] == []


def test_list_paginates(client):
    Product.objects.bulk_create(
        Product(
            sku=f"bulk-{i:02d}",
            title=f"Item {i}",
            price=Decimal(i),
            category=services.category_get_or_create(name="Bag"),
        )
        for i in range(30)
    )
    first = client.get("/api/products/").json()
    assert first["count"] == 30 and len(first["results"]) == 24 and first["previous"] is None
    assert first["next"].startswith("http://testserver/api/products/?page=2")
    second = client.get(first["next"]).json()
    assert [p["sku"] for p in second["results"]] == [f"bulk-{i:02d}" for i in range(24, 30)]
    assert second["next"] is None
    assert client.get("/api/products/?page=9").status_code == 404


def test_list_filters(client):
    shirt = make_product("shirt-cheap", price="10.00", category="Shirt", title="Linen shirt", brand="Kestrel")
    make_product("shirt-dear", price="90.00", category="Shirt", title="Silk shirt", in_stock=False)
    bag = make_product("bag", price="45.00", category="Bag", title="Tote", brand="Linenworks")

    def skus(query):
        response = client.get("/api/products/", query)
        assert response.status_code == 200, response.content
        return sorted(p["sku"] for p in response.json()["results"])

    assert skus({"category": shirt.category_id}) == ["shirt-cheap", "shirt-dear"]
    assert skus({"category": "bag"}) == ["bag"]  # by slug
    assert skus({"max_price": "45"}) == ["bag", "shirt-cheap"]
    assert skus({"max_price": "44.99"}) == ["shirt-cheap"]
    assert skus({"in_stock": "false"}) == ["shirt-dear"]
    assert skus({"in_stock": "true"}) == ["bag", "shirt-cheap"]
    assert skus({"q": "LINEN"}) == ["bag", "shirt-cheap"]  # title or brand, any case
    assert skus({"q": "silk", "in_stock": "true"}) == []
    assert skus({"category": "shirt", "max_price": "50", "q": "shirt"}) == ["shirt-cheap"]
    assert skus({}) == ["bag", "shirt-cheap", "shirt-dear"]  # no in_stock param: no stock filter
    assert bag.pk


@pytest.mark.parametrize(
    "query",
    [{"category": "no-such"}, {"category": "999999"}, {"max_price": "-1"}, {"max_price": "abc"}, {"in_stock": "maybe"}],
)
def test_list_rejects_bad_filters(client, query):
    make_product("sku-1")
    response = client.get("/api/products/", query)
    assert response.status_code == 400
    assert set(response.json()) == set(query)


def test_detail_and_404(client):
    product = make_product("sku-1")
    response = client.get(f"/api/products/{product.pk}/")
    assert response.status_code == 200 and response.json()["sku"] == "sku-1"
    assert set(response.json()) == PRODUCT_KEYS
    missing = client.get(f"/api/products/{product.pk + 1000}/")
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/json" and "detail" in missing.json()


# Catalog writes --------------------------------------------------------------------------------


def test_writes_need_authentication(client, tmp_path):
    product = make_product("sku-1")
    payload = {"sku": "new", "title": "New", "price": "5.00", "category": "Shirt"}
    assert client.post("/api/products/", payload, format="json").status_code in (401, 403)
    assert client.delete(f"/api/products/{product.pk}/").status_code in (401, 403)
    response = client.post(
        f"/api/products/{product.pk}/images/", {"image": upload(image_bytes("PNG"))}, format="multipart"
    )
    assert response.status_code in (401, 403)
    assert Product.objects.count() == 1 and ProductImage.objects.count() == 0

    basic = APIClient()
    basic.credentials(HTTP_AUTHORIZATION="Basic bWVyY2hhbnQ6d3Jvbmc=")  # merchant:wrong
    response = basic.post("/api/products/", payload, format="json")
    assert response.status_code in (401, 403) and "Invalid username/password" in response.json()["detail"]
    assert Product.objects.count() == 1


def test_create_product_with_basic_auth(client, user):
    client.credentials(HTTP_AUTHORIZATION="Basic bWVyY2hhbnQ6czNjcmV0LXBhc3M=")  # merchant:s3cret-pass
    payload = {
        "sku": "new-1",
        "title": "Wool coat",
        "brand": "Marlow",
        "price": "149.5",
        "currency": "eur",
        "category": "Outerwear",
        "attributes": {"size": "M"},
    }
    response = client.post("/api/products/", payload, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    product = Product.objects.get(sku="new-1")
    assert body["id"] == product.pk and body["price"] == "149.50" and body["currency"] == "EUR"
    assert body["category"]["name"] == "Outerwear" and body["category"]["slug"] == "outerwear"
    assert body["attributes"] == {"size": "M"} and body["in_stock"] is True and body["images"] == []
    assert body["url"].endswith(product.get_absolute_url())


@pytest.mark.parametrize(
    "change, field",
    [
        ({"sku": "taken"}, "sku"),
        ({"price": "-1"}, "price"),
        ({"currency": "E1"}, "currency"),
        ({"category": ""}, "category"),
        ({"title": None}, "title"),
    ],
)
def test_create_product_validation(auth_client, change, field):
    make_product("taken")
    payload = {"sku": "new-1", "title": "Coat", "price": "10", "category": "Coat", **change}
    response = auth_client.post("/api/products/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Product.objects.count() == 1


def test_add_image_to_product(auth_client, settings):
    product = make_product("sku-1")
    content = image_bytes("JPEG", size=(80, 60))
    response = auth_client.post(
        f"/api/products/{product.pk}/images/", {"image": upload(content, "p.jpg", "image/jpeg")}, format="multipart"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    image = ProductImage.objects.get(pk=body["id"])
    assert body["status"] == "pending" and body["thumbnail_url"] is None
    assert body["url"] == f"http://testserver{image.image.url}"
    assert (image.product_id, image.width, image.height) == (product.pk, 80, 60)
    assert (settings.MEDIA_ROOT / image.image.name).read_bytes() == content

    again = auth_client.post(
        f"/api/products/{product.pk}/images/", {"image": upload(content, "p.jpg")}, format="multipart"
    )
    assert again.status_code == 200 and again.json()["id"] == image.pk
    assert ProductImage.objects.count() == 1

    missing = auth_client.post("/api/products/999999/images/", {"image": upload(content)}, format="multipart")
    assert missing.status_code == 404


@pytest.mark.parametrize("content, name, content_type, message", BAD_IMAGES)
def test_add_bad_image_is_refused_and_writes_nothing(auth_client, settings, content, name, content_type, message):
    product = make_product("sku-1")
    response = auth_client.post(
        f"/api/products/{product.pk}/images/", {"image": upload(content, name, content_type)}, format="multipart"
    )
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}
    assert re.search(message, response.json()["detail"])
    assert ProductImage.objects.count() == 0
    assert not settings.MEDIA_ROOT.exists() or not any(p.is_file() for p in settings.MEDIA_ROOT.rglob("*"))


def test_add_image_limits_and_missing_file(auth_client, settings):
    product = make_product("sku-1")
    url = f"/api/products/{product.pk}/images/"
    response = auth_client.post(url, {}, format="multipart")
    assert response.status_code == 400 and "image" in response.json()

    settings.IMAGE_MAX_BYTES = 1000
    response = auth_client.post(url, {"image": upload(noise_png())}, format="multipart")
    assert response.status_code == 400 and "the limit is" in response.json()["detail"]

    settings.IMAGE_MAX_BYTES = 15 * 1024 * 1024
    settings.IMAGE_MAX_PIXELS = 1000  # a 64x48 image has 3072 pixels
    response = auth_client.post(url, {"image": upload(image_bytes("PNG"))}, format="multipart")
    assert response.status_code == 400 and "megapixels" in response.json()["detail"]
    assert ProductImage.objects.count() == 0


def test_delete_product(auth_client, django_capture_on_commit_callbacks):
    product = make_product("sku-1")
    services.product_image_create(product=product, content=image_bytes("PNG"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = auth_client.delete(f"/api/products/{product.pk}/")
    assert response.status_code == 204
    assert not Product.objects.exists() and not ProductImage.objects.exists()
    assert callbacks, "deleting a product with images schedules removal of their vectors"
    assert auth_client.get(f"/api/products/{product.pk}/").status_code == 404
    assert auth_client.delete(f"/api/products/{product.pk}/").status_code == 404


# Similar products and search by photo (real Milvus server, real embedder) ---------------------------


@pytest.fixture
def indexed_catalog(vector_store, fashion_items):
    """Eight Fashion-MNIST products with ingested images: four from each of two classes."""
    by_label: dict[int, list[bytes]] = {}
    for content, label in fashion_items:
        by_label.setdefault(label, []).append(content)
    chosen = [(label, items[:4]) for label, items in by_label.items() if len(items) >= 4][:2]
    products, image_ids = [], []
    for (_label, contents), category in zip(chosen, ("Tops", "Shoes"), strict=True):
        for i, content in enumerate(contents):
            product = make_product(
                f"{category.lower()}-{i}", price=f"{20 + 10 * i}.00", category=category, in_stock=i != 3
            )
            image_ids.append(services.product_image_create(product=product, content=content).pk)
            product.png = content
            products.append(product)
    report = search_services.images_ingest(image_ids=image_ids)
    assert sorted(report.ready) == sorted(image_ids) and not report.failed
    return products


def test_similar_products_ranked_excluding_the_product(client, settings, indexed_catalog):
    product = indexed_catalog[0]
    response = client.get(f"/api/products/{product.pk}/similar/")
    assert response.status_code == 200, response.content
    body = response.json()
    ids = [r["product"]["id"] for r in body["results"]]
    assert product.pk not in ids
    assert sorted(ids) == sorted(p.pk for p in indexed_catalog[1:])
    assert body["count"] == len(ids) == 7
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert body["collection"].startswith(settings.MILVUS_COLLECTION_PREFIX + "_")
    assert body["collection"] == search_registry.get_vector_store().collection_name(body["model_version"])
    assert body["feedback_token"]  # what a "not similar" mark or a click sends back
    assert set(body["results"][0]["product"]) == PRODUCT_KEYS
    assert body["results"][0]["product"]["image"].startswith("http://testserver/media/thumbnails/")

    assert [
        r["product"]["id"] for r in client.get(f"/api/products/{product.pk}/similar/?k=3").json()["results"]
    ] == ids[:3]


def test_similar_products_filters(client, indexed_catalog):
    product = indexed_catalog[0]
    url = f"/api/products/{product.pk}/similar/"

    def results(query):
        response = client.get(url, query)
        assert response.status_code == 200, response.content
        return [r["product"] for r in response.json()["results"]]

    cheap = results({"max_price": "30"})
    assert cheap and all(Decimal(p["price"]) <= 30 for p in cheap)
    assert {p["id"] for p in cheap} == {p.pk for p in indexed_catalog[1:] if p.price <= 30}

    shoes = Category.objects.get(name="Shoes")
    same_category = results({"category": shoes.slug})
    assert {p["id"] for p in same_category} == {p.pk for p in indexed_catalog if p.category_id == shoes.pk}
    assert results({"category": shoes.pk}) == same_category

    out_of_stock = results({"in_stock": "false"})
    assert {p["id"] for p in out_of_stock} == {p.pk for p in indexed_catalog[1:] if not p.in_stock}
    assert results({"category": shoes.slug, "max_price": "25"}) == [
        p for p in same_category if Decimal(p["price"]) <= 25
    ]


@pytest.mark.parametrize(
    "query",
    [
        {"k": "0"},
        {"k": "101"},
        {"k": "x"},
        {"max_price": "-0.01"},
        {"category": "no-such-slug"},
        {"category": "424242"},
    ],
)
def test_similar_products_rejects_bad_params(client, query):
    product = make_product("sku-1")
    response = client.get(f"/api/products/{product.pk}/similar/", query)
    assert response.status_code == 400
    assert set(response.json()) == set(query)


def test_similar_products_404_and_before_anything_is_indexed(client, vector_store):
    assert client.get("/api/products/999999/similar/").status_code == 404
    product = make_product("sku-1")
    response = client.get(f"/api/products/{product.pk}/similar/")
    assert response.status_code == 200
    assert response.json() == {
        "count": 0,
        "collection": None,
        "results": [],
        "model_version": None,  # nothing registered yet: no version served it
        "feedback_token": None,  # nothing to give feedback on
    }


def test_search_by_photo_finds_the_product_first(client, indexed_catalog):
    target = indexed_catalog[5]
    response = client.post("/api/search/", {"image": upload(target.png, "query.png"), "k": 5}, format="multipart")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 5 == len(body["results"])
    assert body["results"][0]["product"]["id"] == target.pk
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)

    filtered = client.post("/api/search/", {"image": upload(target.png), "max_price": "25"}, format="multipart")
    assert filtered.status_code == 200
    assert target.pk not in [r["product"]["id"] for r in filtered.json()["results"]]  # it costs 30.00
    assert all(Decimal(r["product"]["price"]) <= 25 for r in filtered.json()["results"])

    tops = client.post(
        "/api/search/", {"image": upload(target.png), "category": "tops", "in_stock": "true"}, format="multipart"
    ).json()["results"]
    assert tops and {r["product"]["category"]["slug"] for r in tops} == {"tops"}
    assert all(r["product"]["in_stock"] for r in tops)


def test_search_is_public_even_for_session_less_clients_and_empty_index(client, vector_store, fashion_items):
    response = client.post("/api/search/", {"image": upload(fashion_items[0][0])}, format="multipart")
    assert response.status_code == 200
    body = response.json()
    assert (body["count"], body["collection"], body["results"], body["boxes"]) == (0, None, [], [])
    assert body["image"] == {"width": 28, "height": 28} and body["query"]["kind"] == "whole_photo"


@pytest.mark.parametrize("content, name, content_type, message", BAD_IMAGES)
def test_search_refuses_bad_images(client, content, name, content_type, message):
    response = client.post("/api/search/", {"image": upload(content, name, content_type)}, format="multipart")
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}
    assert re.search(message, response.json()["detail"])


@pytest.mark.parametrize("data", [{}, {"image": "not-a-file"}, {"k": "0"}], ids=["no-file", "field-not-file", "k"])
def test_search_rejects_bad_params(client, data):
    if "k" in data:
        data = {**data, "image": upload(image_bytes("PNG"))}
    response = client.post("/api/search/", data, format="multipart")
    assert response.status_code == 400
    assert set(response.json()) <= {"image", "k"} and response.json()


def test_vector_store_outage_is_503(client, settings, fashion_items, serving_version):
    from webapp.search.registry import get_vector_store

    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    get_vector_store().connect_timeout = 1.0  # keep the test quick; the default waits longer
    product = make_product("sku-1")
    services.product_image_create(product=product, content=fashion_items[1][0])

    response = client.get(f"/api/products/{product.pk}/similar/")
    assert response.status_code == 503
    assert "unavailable" in response.json()["detail"]

    response = client.post("/api/search/", {"image": upload(fashion_items[0][0])}, format="multipart")
    assert response.status_code == 503 and set(response.json()) == {"detail"}

    # A bad image is still the client's fault, whatever the state of the vector store.
    response = client.post("/api/search/", {"image": upload(b"nope", "x.jpg", "image/jpeg")}, format="multipart")
    assert response.status_code == 400


# Schema and docs -------------------------------------------------------------------------------


def test_openapi_schema_is_valid_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    for path in (
        "/api/products/:",
        "/api/products/{product_id}/:",
        "/api/products/{product_id}/images/:",
        "/api/products/{product_id}/similar/:",
        "/api/search/:",
        "/api/feedback/not-similar/:",
        "/api/feedback/click/:",
    ):
        assert f"\n  {path}\n" in text, path


def test_schema_endpoint_lists_operations(client):
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    assert set(paths["/api/products/"]) == {"get", "post"}
    assert set(paths["/api/products/{product_id}/"]) == {"get", "delete"}
    assert set(paths["/api/products/{product_id}/images/"]) == {"post"}
    assert set(paths["/api/products/{product_id}/similar/"]) == {"get"}
    assert set(paths["/api/search/"]) == {"post"}
    assert set(paths["/api/feedback/not-similar/"]) == {"post"} and set(paths["/api/feedback/click/"]) == {"post"}
    assert set(paths["/api/feedback/not-similar/"]["post"]["responses"]) == {"200", "201", "400", "429"}
    similar_params = {p["name"] for p in paths["/api/products/{product_id}/similar/"]["get"]["parameters"]}
    assert similar_params == {"product_id", "k", "category", "max_price", "in_stock"}
    list_params = {p["name"] for p in paths["/api/products/"]["get"]["parameters"]}
    assert list_params == {"page", "category", "max_price", "in_stock", "q"}
    search_body = paths["/api/search/"]["post"]["requestBody"]["content"]
    assert list(search_body) == ["multipart/form-data"]
    assert schema["components"]["schemas"]["SearchByImage"]["required"] == ["image"]
    assert {"model_version", "feedback_token"} <= set(schema["components"]["schemas"]["RankedResults"]["properties"])


def test_docs_page_is_self_contained(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "VisNet visual search API" in html
    for needle in (
        "/api/products/{product_id}/similar/",
        "/api/search/",
        "/api/feedback/not-similar/",
        "Search by photo",
        "max_price",
        "multipart/form-data",
        'id="schema-Product"',
        "http://testserver/api/schema/",
    ):
        assert needle in html, needle
    assert "<script" not in html and "cdn" not in html.lower()
