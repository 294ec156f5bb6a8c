"""Serving similar products from the stored lists: bytes serialised once and cached, HTTP caching (ETag, 304,
Cache-Control), the WSGI fast path in front of Django, invalidation, and the live fallback.

Most tests write stored lists straight into the table (the lists are the input here, not what is tested) and point
the product at a Milvus address where nothing listens: a stored list must answer without the vector store. The
fallback test runs against a real Milvus Lite server. WSGI tests call the project's real WSGI application
(webapp/wsgi.py: the fast path in front of Django's handler), counting the requests that reach Django.
"""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.http import QueryDict
from django.test import RequestFactory
from django.utils import timezone
from django.utils.http import http_date
from rest_framework.renderers import JSONRenderer
from rest_framework.test import APIClient

from tests.conftest import free_port
from tests.fakes import PixelEmbedder
from webapp.api.serializers import RankedResultsOutputSerializer, SimilarProductsInputSerializer
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Category, Product, ProductImage
from webapp.catalog.selectors import product_queryset
from webapp.recommendations import services as list_services
from webapp.recommendations import serving
from webapp.recommendations.fastpath import SimilarFastPath
from webapp.recommendations.models import SimilarList, pack_neighbours
from webapp.recommendations.selectors import stored_similar
from webapp.search import experiments, registry
from webapp.search import services as search_services
from webapp.search.feedback import results_token_read
from webapp.search.models import ModelVersion
from webapp.search.selectors import RankedProduct, similar_products
from webapp.search.vector_store import SearchFilters

CANDIDATE = "candidate-v2"
SECURITY_HEADERS = {"x-content-type-options", "referrer-policy", "cross-origin-opener-policy", "x-frame-options"}


@pytest.fixture(autouse=True)
def _isolated(settings):
    settings.SERVED_COUNTS_FLUSH_SECONDS = 3600  # counts stay pending in memory, where the tests read them
    cache.clear()  # SQLite reuses ids after a rolled-back test: no bytes may survive one
    serving.similar_entries_clear()
    experiments._served_pending.clear()
    registry.reset_active_version_cache()
    yield
    cache.clear()
    serving.similar_entries_clear()
    experiments._served_pending.clear()
    registry.reset_active_version_cache()


@pytest.fixture
def milvus_down(settings):
    """The vector store's address is a port where nothing listens: any call to it fails."""
    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"
    settings.MILVUS_CONNECT_TIMEOUT = 1.0
    settings.MILVUS_COLLECTION_PREFIX = "down"


def add_product(sku: str, category: Category, price: str, *, images: int = 1, **fields) -> Product:
    product, _ = catalog_services.product_upsert(
        sku=sku,
        title=fields.pop("title", f"Product {sku}"),
        price=Decimal(price),
        category=category,
        brand=fields.pop("brand", "Northwind"),
        in_stock=fields.pop("in_stock", True),
        attributes=fields.pop("attributes", {"colour": "red"}),
    )
    for position in range(images):  # names only: URLs are what is served, the files are not read
        ProductImage.objects.create(
            product=product,
            image=f"products/{product.pk}/{position}.png",
            thumbnail=f"thumbnails/{product.pk}/{position}.jpg" if position == 0 else "",
            position=position,
            status=ProductImage.Status.READY if position == 0 else ProductImage.Status.PENDING,
        )
    return product


def store_list(version: ModelVersion, product: Product, neighbours: list[Product], exhaustive: bool = False):
    scores = [0.95 - 0.05 * rank for rank in range(len(neighbours))]
    SimilarList.objects.update_or_create(
        version=version,
        product_id=product.pk,
        defaults={
            "neighbours": pack_neighbours([n.pk for n in neighbours], scores),
            "size": len(neighbours),
            "exhaustive": exhaustive,
            "computed_at": timezone.now() - timedelta(hours=1),
        },
    )


@pytest.fixture
def shop(serving_version, milvus_down):
    """Ten products in two categories with awkward data (non-ASCII, U+2028, nested attributes, no image, two
    images) and a stored list per product under the active version (exhaustive: a catalog smaller than K); the
    vector store is down."""
    tops = catalog_services.category_get_or_create(name="Tops")
    shoes = catalog_services.category_get_or_create(name="Shoes")
    products = [
        add_product(
            "t-0",
            tops,
            "19.99",
            title="Pull « été » — line\u2028break",
            attributes={"sizes": ["S", "M"], "fit": {"kind": "slim", "stretch": 0.05}, "é": None},
        ),
        add_product("t-1", tops, "5.5", images=0, brand=""),
        add_product("t-2", tops, "120", images=2, in_stock=False),
        add_product("t-3", tops, "33.10"),
        add_product("t-4", tops, "0.99", in_stock=False),
        add_product("s-0", shoes, "59.00"),
        add_product("s-1", shoes, "45.45", images=2),
        add_product("s-2", shoes, "12.00", in_stock=False),
        add_product("s-3", shoes, "75.00"),
        add_product("s-4", shoes, "18.00"),
    ]
    for index, product in enumerate(products):
        store_list(serving_version, product, products[index + 1 :] + products[:index], exhaustive=True)
    return products


def stored_ids(version: ModelVersion, product: Product) -> list[int]:
    return SimilarList.objects.get(version=version, product_id=product.pk).unpacked()[0].tolist()


def drf_json(body: dict, request, version: ModelVersion | None, pairs: list[tuple[int, float]]) -> bytes:
    """What the DRF serializer renders for these (product id, score) pairs, with the body's token."""
    products = product_queryset().in_bulk([pid for pid, _ in pairs])
    ranked = [RankedProduct(products[pid], score) for pid, score in pairs]
    data = {
        "count": len(pairs),
        "collection": body["collection"],
        "results": [{"score": r.score, "product": r.product} for r in ranked],
        "model_version": version.model_version if version is not None else None,
        "feedback_token": body["feedback_token"],
    }
    return JSONRenderer().render(RankedResultsOutputSerializer(data, context={"request": request}).data)


def served() -> dict[str, int]:
    totals: dict[str, int] = {}
    for (_day, version, surface), count in experiments._served_pending.items():
        if surface == "similar":
            totals[version] = totals.get(version, 0) + count
    return totals


# The body ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query",
    ["", "k=5", "k=3&in_stock=true", "category=tops&max_price=40", "category={tops_id}&in_stock=false&k=1", "k=100"],
)
def test_the_body_is_the_drf_serializers_json_byte_for_byte(shop, serving_version, query):
    tops = Category.objects.get(name="Tops")
    query = query.format(tops_id=tops.pk)
    product = shop[9]  # its list starts with the product with the awkward title and attributes
    response = APIClient().get(f"/api/products/{product.pk}/similar/?{query}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["count"] >= 1 and body["model_version"] == serving_version.model_version
    request = RequestFactory().get("/")
    params = SimilarProductsInputSerializer(data=RequestFactory().get("/", dict(_pairs(query))).GET)
    assert params.is_valid(), params.errors
    expected = stored_similar(
        product=product, k=params.validated_data["k"], filters=params.to_filters(), version=serving_version
    )
    assert expected is not None  # exhaustive lists: the (down) vector store is never asked
    assert [r["product"]["id"] for r in body["results"]] == [pid for pid, _ in expected]
    assert response.content == drf_json(body, request, serving_version, expected)


def _pairs(query: str) -> list[tuple[str, str]]:
    return [tuple(part.split("=", 1)) for part in query.split("&") if part]  # type: ignore[misc]


def test_the_awkward_product_renders_as_the_serializer_renders_it(shop, serving_version):
    body = APIClient().get(f"/api/products/{shop[9].pk}/similar/?k=3").content
    assert b"\\u2028" in body and "« été »".encode() in body  # escaped as DRF does, UTF-8 otherwise
    first = APIClient().get(f"/api/products/{shop[9].pk}/similar/?k=3").json()["results"][0]["product"]
    assert first["price"] == "19.99" and first["attributes"]["fit"] == {"kind": "slim", "stretch": 0.05}
    assert first["image"] == f"http://testserver/media/thumbnails/{shop[0].pk}/0.jpg"
    no_image = APIClient().get(f"/api/products/{shop[0].pk}/similar/?k=1").json()["results"][0]["product"]
    assert no_image["id"] == shop[1].pk and no_image["image"] is None and no_image["images"] == []
    assert no_image["price"] == "5.50" and no_image["brand"] == ""


def test_the_default_k_is_the_input_serializers():
    assert SimilarProductsInputSerializer().fields["k"].default == serving.DEFAULT_K


# HTTP caching ------------------------------------------------------------------------------------------------
def test_etag_and_last_modified_answer_304(shop, serving_version, settings):
    settings.SIMILAR_HTTP_MAX_AGE = 45
    api = APIClient()
    url = f"/api/products/{shop[3].pk}/similar/?k=4"
    first = api.get(url)
    assert first.status_code == 200
    assert first["Cache-Control"] == "public, max-age=45"
    etag, last_modified = first["ETag"], first["Last-Modified"]
    assert etag.startswith('"') and len(etag) == 34
    shown = Product.objects.filter(pk__in=[r["product"]["id"] for r in first.json()["results"]])
    computed_at = SimilarList.objects.get(version=serving_version, product_id=shop[3].pk).computed_at
    newest = max([computed_at, *(p.updated_at for p in shown)])
    assert last_modified == http_date(int(newest.timestamp()))

    again = api.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b""
    assert again["ETag"] == etag and again["Cache-Control"] == "public, max-age=45"
    assert api.get(url, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200
    assert api.get(url, HTTP_IF_MODIFIED_SINCE=last_modified).status_code == 304
    earlier = http_date(int(newest.timestamp()) - 60)
    assert api.get(url, HTTP_IF_MODIFIED_SINCE=earlier).status_code == 200
    # If-None-Match decides when both are sent
    assert api.get(url, HTTP_IF_NONE_MATCH='"other"', HTTP_IF_MODIFIED_SINCE=last_modified).status_code == 200
    assert served() == {serving_version.model_version: 6}  # every answer, 304s included, showed the list


def with_candidate(shop: list[Product]) -> ModelVersion:
    candidate = ModelVersion.objects.create(
        model_version=CANDIDATE, kind="visnet", state=ModelVersion.State.CANDIDATE, ab_share=0.5
    )
    for index, product in enumerate(shop):
        store_list(candidate, product, list(reversed(shop[index + 1 :] + shop[:index])), exhaustive=True)
    registry.reset_active_version_cache()
    return candidate


def clients_in_each_arm(candidate: ModelVersion) -> dict[str, str]:
    found: dict[str, str] = {}
    for n in range(1000):
        client_id = f"shopper-app-{n:04d}"
        key = experiments.client_key_for(RequestFactory().get("/", HTTP_X_CLIENT_ID=client_id))
        arm = "candidate" if experiments.client_bucket(client_key=key, salt=candidate.model_version) < 0.5 else "active"
        found.setdefault(arm, client_id)
        if len(found) == 2:
            return found
    raise AssertionError("no client on one of the arms")


def test_cache_control_is_private_while_an_ab_candidate_serves(shop, serving_version):
    url = f"/api/products/{shop[0].pk}/similar/?k=3"
    assert APIClient().get(url)["Cache-Control"] == "public, max-age=60"
    candidate = with_candidate(shop)
    for arm, client_id in clients_in_each_arm(candidate).items():
        version = candidate if arm == "candidate" else serving_version
        for _ in range(2):  # built, then from the cache
            response = APIClient().get(url, HTTP_X_CLIENT_ID=client_id)
            assert response["Cache-Control"] == "private, max-age=60"
            body = response.json()
            assert body["model_version"] == version.model_version
            assert [r["product"]["id"] for r in body["results"]] == stored_ids(version, shop[0])[:3]


# The stored list, the vector store and the fallback -----------------------------------------------------------
def test_a_stored_list_answers_without_the_vector_store(shop, serving_version, client):
    product = shop[2]
    response = APIClient().get(f"/api/products/{product.pk}/similar/?k=6")
    assert response.status_code == 200
    assert [r["product"]["id"] for r in response.json()["results"]] == stored_ids(serving_version, product)[:6]

    page = client.get(f"/products/{product.pk}/")
    assert page.status_code == 200 and b'id="similar-unavailable"' not in page.content
    assert list(page.context["similar_row"].product_ids) == stored_ids(serving_version, product)
    assert page.context["feedback_token"]
    assert served() == {serving_version.model_version: 2}

    # Without a list, or with one that cannot fill k, the vector store is asked: it is down here.
    SimilarList.objects.filter(product_id=product.pk).delete()
    serving.similar_bytes_invalidate(version_id=serving_version.pk, product_ids=[product.pk])
    assert APIClient().get(f"/api/products/{product.pk}/similar/?k=6").status_code == 503
    store_list(serving_version, shop[3], shop[4:7])  # three neighbours, not all there are
    assert APIClient().get(f"/api/products/{shop[3].pk}/similar/?k=3").status_code == 200
    assert APIClient().get(f"/api/products/{shop[3].pk}/similar/?k=4").status_code == 503
    page = client.get(f"/products/{product.pk}/")
    assert page.status_code == 200 and b'id="similar-unavailable"' in page.content


def test_the_product_pages_similar_row_is_rendered_once_and_dropped_with_the_apis_bytes(
    shop, serving_version, client, monkeypatch
):
    from webapp.catalog import views

    rendered = []
    render = views._similar_items_html
    monkeypatch.setattr(views, "_similar_items_html", lambda similar: rendered.append(1) or render(similar))
    product = shop[1]
    first = client.get(f"/products/{product.pk}/")
    client.cookies.clear()
    again = client.get(f"/products/{product.pk}/")
    assert len(rendered) == 1  # the second page view took the row from the cache
    items = [part.split(b'"')[0] for part in first.content.split(b'class="similar-item" data-product-id="')[1:]]
    assert [int(pid) for pid in items] == stored_ids(serving_version, product)
    assert again.content.count(b'class="similar-item"') == len(items)
    # Each view still issues a feedback token naming what it shows, and counts as served.
    for page in (first, again):
        assert list(results_token_read(page.context["feedback_token"]).product_ids) == stored_ids(
            serving_version, product
        )
    assert served() == {serving_version.model_version: 2}

    # A rewritten list drops the cached row with the API's bytes, as the list services do.
    store_list(serving_version, product, shop[5:8], exhaustive=True)
    serving.similar_bytes_invalidate(version_id=serving_version.pk, product_ids=[product.pk])
    fresh = client.get(f"/products/{product.pk}/")
    assert len(rendered) == 2
    assert list(fresh.context["similar_row"].product_ids) == [p.pk for p in shop[5:8]]
    assert fresh.content.count(b'class="similar-item"') == 3

    # The API's bytes and the page's row live in one entry: either filling it keeps the other.
    api = APIClient().get(f"/api/products/{product.pk}/similar/")
    assert api.status_code == 200
    client.get(f"/products/{product.pk}/")
    assert len(rendered) == 2
    variants = serving.similar_bytes_variants(version_id=serving_version.pk, product_id=product.pk)
    assert any(name.startswith(serving.PAGE_VARIANT_PREFIX) for name in variants)
    assert any(not name.startswith(serving.PAGE_VARIANT_PREFIX) for name in variants)


def test_unknown_products_and_bad_parameters_answer_as_before(shop):
    api = APIClient()
    assert api.get(f"/api/products/{shop[0].pk}/similar/").status_code == 200  # something cached
    assert api.get("/api/products/999999/similar/").status_code == 404
    assert api.get("/api/products/999999/similar/?k=0").status_code == 404  # the product is judged first
    assert set(api.get(f"/api/products/{shop[0].pk}/similar/?k=0").json()) == {"k"}
    assert set(api.get(f"/api/products/{shop[0].pk}/similar/?category=nope").json()) == {"category"}


@pytest.fixture
def pixel_shop(monkeypatch, settings, vector_store, db, fashion_items):
    """Sixteen ingested products in the real Milvus server (pixel embedder), lists of 5 built for each."""
    settings.SIMILAR_LIST_K = 5
    monkeypatch.setattr(registry, "embedder_for", lambda version: PixelEmbedder(version.model_version))
    registry.reset_active_version_cache()
    products = []
    for index, (content, label) in enumerate(fashion_items[:16]):
        category = catalog_services.category_get_or_create(name=f"class-{label}")
        product, _ = catalog_services.product_upsert(
            sku=f"px-{index}", title=f"Item {index}", price=Decimal(10 + index), category=category
        )
        catalog_services.product_image_create(product=product, content=content)
        products.append(product)
    image_ids = list(ProductImage.objects.values_list("pk", flat=True))
    assert sorted(search_services.images_ingest(image_ids=image_ids).ready) == sorted(image_ids)
    version = registry.active_version(fresh=True)
    assert list_services.similar_lists_build(version=version) is True
    return products, version


def test_a_list_that_cannot_fill_k_falls_back_to_the_live_query(pixel_shop):
    products, version = pixel_shop
    product = products[0]
    stored_ids_of_first = SimilarList.objects.get(version=version, product_id=product.pk).unpacked()[0].tolist()
    assert len(stored_ids_of_first) == 5
    # Below the dearest stored neighbour's price: at most 4 of the 5 pass, so k=5 cannot be filled from the list.
    price_cap = max(Product.objects.get(pk=pid).price for pid in stored_ids_of_first) - 1
    request = RequestFactory().get("/")
    for query, k, filters, from_list in [
        ("k=5", 5, SearchFilters(), True),
        ("k=8", 8, SearchFilters(), False),  # longer than the list
        (f"k=5&max_price={price_cap}", 5, SearchFilters(max_price=float(price_cap)), False),
    ]:
        response = APIClient().get(f"/api/products/{product.pk}/similar/?{query}")
        assert response.status_code == 200, response.content
        pairs = stored_similar(product=product, k=k, filters=filters, version=version)
        assert (pairs is not None) == from_list, query
        if pairs is None:
            pairs = [(r.product.pk, r.score) for r in similar_products(product=product, k=k, filters=filters)]
        assert pairs, "the answer has results"
        assert [r["product"]["id"] for r in response.json()["results"]] == [pid for pid, _ in pairs]
        assert response.content == drf_json(response.json(), request, version, pairs)


# The WSGI fast path --------------------------------------------------------------------------------------------
class DjangoCalls:
    """Django's WSGI application, counting the requests that reach it."""

    def __init__(self, application):
        self.application, self.calls = application, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.application(environ, start_response)


@pytest.fixture
def wsgi(db):
    """The project's WSGI stack (webapp/wsgi.py) around a counter. Like Django's test client, it keeps the test's
    database connection open across requests (a request's end would otherwise close it mid-transaction)."""
    from webapp.wsgi import application, django_application

    assert isinstance(application, SimilarFastPath) and application.application is django_application
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    django = DjangoCalls(django_application)
    yield SimilarFastPath(django), django
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def call(app, path: str, query: str = "", method: str = "GET", **environ) -> tuple[int, dict[str, str], bytes]:
    base = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    answer: dict = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = int(status[:3]), headers

    result = app({**base, **environ}, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    headers = {name.lower(): value for name, value in answer["headers"]}
    assert len(headers) == len(answer["headers"]), f"a header repeated: {answer['headers']}"
    return answer["status"], headers, body


def test_the_fast_path_answers_from_the_cache_exactly_what_django_answers(shop, serving_version, wsgi, settings):
    app, django = wsgi
    path, query = f"/api/products/{shop[4].pk}/similar/", "k=5&in_stock=true"
    status, built_headers, built = call(app, path, query)
    assert (status, django.calls) == (200, 1)  # a miss: Django built and cached it

    status, fast_headers, fast = call(app, path, query, HTTP_X_REQUEST_ID="req-00000001")
    assert (status, django.calls) == (200, 1) and fast == built
    assert fast_headers["x-request-id"] == "req-00000001"
    assert set(fast_headers) >= SECURITY_HEADERS

    settings.SIMILAR_FAST_PATH = False  # the same request, answered by Django from the same cached bytes
    status, django_headers, from_django = call(app, path, query, HTTP_X_REQUEST_ID="req-00000001")
    assert (status, django.calls) == (200, 2) and from_django == fast
    assert fast_headers == django_headers
    assert built_headers.keys() == django_headers.keys()

    settings.SIMILAR_FAST_PATH = True
    conditional = {"HTTP_IF_NONE_MATCH": fast_headers["etag"], "HTTP_X_REQUEST_ID": "req-00000002"}
    status, fast_304, body = call(app, path, query, **conditional)
    assert (status, body, django.calls) == (304, b"", 2)
    settings.SIMILAR_FAST_PATH = False
    status, django_304, body = call(app, path, query, **conditional)
    assert (status, body, django.calls) == (304, b"", 3)
    assert fast_304 == django_304
    assert served() == {serving_version.model_version: 5}


def test_over_https_the_fast_path_adds_what_the_security_middleware_adds(shop, wsgi, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    _, django = wsgi
    django.application = WSGIHandler()  # the middlewares read these settings when the application loads
    app = SimilarFastPath(django)  # and so does the fast path
    path = f"/api/products/{shop[1].pk}/similar/"
    https = {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_REQUEST_ID": "req-00000003"}
    call(app, path, **https)
    status, fast_headers, fast = call(app, path, **https)
    assert (status, django.calls) == (200, 1)
    assert b'"url":"https://testserver/products/' in fast
    settings.SIMILAR_FAST_PATH = False
    status, django_headers, from_django = call(app, path, **https)
    assert (status, django.calls, from_django) == (200, 2, fast)
    assert fast_headers == django_headers
    assert fast_headers["strict-transport-security"].startswith("max-age=31536000")
    settings.SIMILAR_FAST_PATH = True
    status, _, _ = call(app, path)  # plain HTTP: Django redirects it
    assert (status, django.calls) == (301, 3)


@pytest.mark.parametrize(
    "query, environ",
    [
        ("k=5&format=json", {}),
        ("k=5&unknown=1", {}),
        ("k=5&k=5", {}),
        ("k=05.0", {}),
        ("k=5&in_stock=yes", {}),
        ("k=5", {"HTTP_ACCEPT": "text/html"}),
        ("k=5", {"HTTP_ACCEPT": "application/json; indent=4"}),
        ("k=5", {"HTTP_AUTHORIZATION": "Basic bm9ib2R5Om5vdGhpbmc="}),
        ("k=5", {"HTTP_COOKIE": "sessionid=abcdefgh12345678"}),
        ("k=5", {"HTTP_COOKIE": "theme=dark; csrftoken=not-a-token"}),
        ("k=5", {"HTTP_IF_MATCH": '"x"'}),
        ("k=5", {"HTTP_HOST": "evil.example"}),
        ("k=5", {"REQUEST_METHOD": "HEAD"}),
        ("k=5", {"CONTENT_LENGTH": "3", "wsgi.input": io.BytesIO(b"abc")}),
    ],
)
def test_the_fast_path_leaves_anything_unusual_to_django(shop, wsgi, query, environ):
    app, django = wsgi
    path = f"/api/products/{shop[5].pk}/similar/"
    call(app, path, "k=5")
    call(app, path, "k=5")
    assert django.calls == 1  # cached, and the fast path answers the plain request
    status, _, _ = call(app, path, query, **environ)
    assert django.calls == 2, f"{query} {environ} was answered by the fast path"
    call(app, path, "k=5", HTTP_COOKIE="theme=dark")  # other cookies change nothing Django answers
    assert django.calls == 2
    assert status in (200, 400, 401, 403, 412)


def test_the_fast_path_falls_through_on_a_miss_and_for_other_paths(shop, wsgi):
    app, django = wsgi
    assert call(app, "/api/products/999999/similar/")[0] == 404
    assert call(app, f"/api/products/0{shop[0].pk}/similar/")[0] == 200  # Django's <int:> reads the leading zero
    assert call(app, f"/api/products/{shop[0].pk}/")[0] == 200
    assert django.calls == 3
    call(app, f"/api/products/{shop[0].pk}/similar/", "k=2")
    call(app, f"/api/products/{shop[0].pk}/similar/", "k=3")  # another variant: a miss
    assert django.calls == 5
    cache.clear()
    serving.similar_entries_clear()
    call(app, f"/api/products/{shop[0].pk}/similar/", "k=2")
    assert django.calls == 6


def test_the_fast_path_serves_each_ab_arm_its_own_versions_bytes(shop, serving_version, wsgi):
    app, django = wsgi
    path = f"/api/products/{shop[6].pk}/similar/"
    call(app, path, "k=4")  # cached before the experiment: public, active version
    candidate = with_candidate(shop)
    arms = clients_in_each_arm(candidate)
    on_active, on_candidate = {"HTTP_X_CLIENT_ID": arms["active"]}, {"HTTP_X_CLIENT_ID": arms["candidate"]}

    status, headers, body = call(app, path, "k=4", **on_active)  # the active version's bytes, now private
    assert (status, django.calls) == (200, 1) and headers["cache-control"] == "private, max-age=60"
    assert b'"model_version":"%s"' % serving_version.model_version.encode() in body

    status, headers, body = call(app, path, "k=4", **on_candidate)  # not cached for the candidate: Django
    assert (status, django.calls) == (200, 2) and b'"model_version":"candidate-v2"' in body
    status, headers, again = call(app, path, "k=4", **on_candidate)
    assert (status, django.calls, again) == (200, 2, body) and headers["cache-control"] == "private, max-age=60"
    ids = [r["product"]["id"] for r in json.loads(again)["results"]]
    assert ids == stored_ids(candidate, shop[6])[:4]
    assert served() == {serving_version.model_version: 2, CANDIDATE: 2}


def test_invalidation_drops_every_variant_of_a_product(shop, serving_version, wsgi):
    app, django = wsgi
    product, other = shop[7], shop[8]
    for query in ("k=5", "k=3&in_stock=true", "category=shoes"):
        call(app, f"/api/products/{product.pk}/similar/", query)
        call(app, f"/api/products/{product.pk}/similar/", query)
    call(app, f"/api/products/{other.pk}/similar/", "k=5")
    assert django.calls == 4
    variants = serving.similar_bytes_variants(version_id=serving_version.pk, product_id=product.pk)
    assert variants is not None and len(variants) == 3

    serving.similar_bytes_invalidate(version_id=serving_version.pk, product_ids=[product.pk])
    assert serving.similar_bytes_variants(version_id=serving_version.pk, product_id=product.pk) is None
    for query in ("k=5", "k=3&in_stock=true", "category=shoes"):
        call(app, f"/api/products/{product.pk}/similar/", query)
    assert django.calls == 7  # every variant rebuilt by Django
    call(app, f"/api/products/{other.pk}/similar/", "k=5")
    assert django.calls == 7  # another product's bytes stay

    # Invalidation is per version: the candidate's bytes of the same product are another entry.
    serving.similar_bytes_invalidate(version_id=serving_version.pk + 1000, product_ids=[other.pk])
    call(app, f"/api/products/{other.pk}/similar/", "k=5")
    assert django.calls == 7


def test_a_list_updated_after_invalidation_is_served_fresh(shop, serving_version, wsgi):
    app, django = wsgi
    path = f"/api/products/{shop[0].pk}/similar/"
    _, _, before = call(app, path, "k=2")
    store_list(serving_version, shop[0], [shop[9], shop[8], shop[7]])
    _, _, stale = call(app, path, "k=2")
    assert stale == before  # cached: a list update must invalidate
    serving.similar_bytes_invalidate(version_id=serving_version.pk, product_ids=[shop[0].pk])
    _, _, fresh = call(app, path, "k=2")
    assert [r["product"]["id"] for r in json.loads(fresh)["results"]] == [shop[9].pk, shop[8].pk]
    assert django.calls == 2


def test_empty_answers_are_not_cached(serving_version, milvus_down, wsgi):
    app, django = wsgi
    category = catalog_services.category_get_or_create(name="Tops")
    lonely = add_product("lonely", category, "10.00")
    store_list(serving_version, lonely, [], exhaustive=True)  # the only product: nothing is like it
    for _ in range(2):
        status, _, body = call(app, f"/api/products/{lonely.pk}/similar/")
        assert status == 200 and b'"count":0' in body
    assert django.calls == 2
    assert serving.similar_bytes_variants(version_id=serving_version.pk, product_id=lonely.pk) is None


def test_a_deleted_neighbour_is_skipped_and_the_next_ones_fill_the_page(shop, serving_version):
    product = shop[0]
    listed = stored_ids(serving_version, product)
    Product.objects.filter(pk__in=listed[:2]).delete()  # its list still names them (lazy half of the update)
    for query, expected in [("k=3", listed[2:5]), ("k=3&in_stock=true", None)]:
        body = APIClient().get(f"/api/products/{product.pk}/similar/?{query}").json()
        shown = [r["product"]["id"] for r in body["results"]]
        if expected is None:
            expected = [pid for pid in listed[2:] if Product.objects.get(pk=pid).in_stock][:3]
        assert shown == expected and body["count"] == 3


@pytest.mark.parametrize(
    "query, variant",
    [
        ("", "http://h k=12 c= p= s="),
        ("k=12", "http://h k=12 c= p= s="),  # the default spelled out is the same response
        ("k=007", "http://h k=7 c= p= s="),
        ("category=shoes&max_price=19.5&in_stock=false", "http://h k=12 c=shoes p=19.5 s=false"),
        ("category=12", "http://h k=12 c=12 p= s="),
        ("k=0", None),
        ("k=101", None),
        ("k=1.0", None),
        ("max_price=-1", None),
        ("max_price=1e3", None),
        ("max_price=1.12345", None),
        ("in_stock=1", None),
        ("category=a%20b", None),
        ("k=1&k=2", None),
        ("page=2", None),
    ],
)
def test_only_simple_parameters_have_a_cache_variant(query, variant):
    assert serving.similar_variant(params=QueryDict(query), scheme_host="http://h") == variant


@pytest.mark.parametrize("prefix", ["/", "/shop/"])
def test_a_products_url_is_what_reverse_gives_under_any_script_prefix(prefix):
    from django.urls import get_script_prefix, reverse, set_script_prefix

    from webapp.recommendations.serving import _product_path

    before = get_script_prefix()
    set_script_prefix(prefix)
    try:
        for product_id in (1, 42, 9_876_543_210, 10**17):
            assert _product_path(product_id) == reverse("catalog:product-detail", args=[product_id])
    finally:
        set_script_prefix(before)
    assert _product_path(7) == reverse("catalog:product-detail", args=[7])


def test_a_deleted_product_whose_list_is_still_stored_answers_404(shop, serving_version):
    product = shop[3]
    with connection.cursor() as cursor:  # the row goes, the list stays (as until the incremental update runs)
        cursor.execute(f"DELETE FROM {ProductImage._meta.db_table} WHERE product_id = %s", [product.pk])
        cursor.execute(f"DELETE FROM {Product._meta.db_table} WHERE id = %s", [product.pk])
    assert SimilarList.objects.filter(version=serving_version, product_id=product.pk).exists()
    response = APIClient().get(f"/api/products/{product.pk}/similar/")
    assert response.status_code == 404
    assert response.json() == APIClient().get("/api/products/999999/similar/").json()  # as for any unknown id
