"""Server-rendered pages: catalog grid, product page with look-alikes, visual search by photo.

Search and similar-product tests use the real Milvus Lite server and the real embedder.
"""

from __future__ import annotations

import io
import struct
import zlib
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from tests.conftest import free_port, image_bytes
from webapp.catalog.models import Product, ProductImage
from webapp.catalog.services import category_get_or_create, product_image_create, product_upsert

SEARCH_URL = "/search/"


# HTML helpers ------------------------------------------------------------------------------
class _Tree(HTMLParser):
    """Just enough of a DOM: every element's tag, attributes and text (its own and its children's)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements, self._open = [], []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": {k: (v or "") for k, v in attrs}, "text": []}
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag):
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index]["tag"] == tag:
                del self._open[index:]
                return

    def handle_data(self, data):
        for element in self._open:
            element["text"].append(data)


def parse(response) -> list[dict]:
    tree = _Tree()
    tree.feed(response.content.decode())
    for element in tree.elements:
        element["text"] = " ".join("".join(element["text"]).split())
    return tree.elements


def by_class(elements, cls) -> list[dict]:
    return [e for e in elements if cls in e["attrs"].get("class", "").split()]


def by_id(elements, element_id) -> dict | None:
    return next((e for e in elements if e["attrs"].get("id") == element_id), None)


def result_rows(response) -> list[dict]:
    elements = parse(response)
    assert by_id(elements, "results") is not None, "no #results on the page"
    return [
        {"product_id": int(e["attrs"]["data-product-id"]), "score": float(e["attrs"]["data-score"]), "text": e["text"]}
        for e in by_class(elements, "result")
    ]


def card_titles(response) -> list[str]:
    return [e["text"] for e in by_class(parse(response), "card-title")]


def error_text(response) -> str:
    element = by_id(parse(response), "search-error")
    assert element is not None, "no #search-error on the page"
    return element["text"]


# Data helpers ------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _clear_cache():
    # Similar-product results are cached by product id; SQLite reuses ids after a rolled-back test.
    cache.clear()
    yield
    cache.clear()


def make_product(sku, *, price="20.00", category=None, title=None, in_stock=True, content=None, brand="Northwind"):
    category = category or category_get_or_create(name="Tops")
    product, _ = product_upsert(
        sku=sku,
        title=title or f"Product {sku}",
        price=Decimal(price),
        category=category,
        brand=brand,
        attributes={"colour": "navy", "material": "cotton"},
        in_stock=in_stock,
    )
    image = product_image_create(product=product, content=content) if content is not None else None
    return product, image


@pytest.fixture
def ingested_catalog(db, vector_store, fashion_items):
    """Six real Fashion-MNIST items as products, embedded and indexed synchronously (no worker)."""
    from webapp.search.services import images_ingest

    cheap = category_get_or_create(name="Everyday")
    premium = category_get_or_create(name="Premium")
    items = []
    for index, (content, label) in enumerate(fashion_items[:6]):
        product, image = make_product(
            f"fm-{index}",
            price=f"{10 + 20 * index}.00",
            title=f"Fashion item {index} (label {label})",
            category=cheap if index % 2 == 0 else premium,
            content=content,
        )
        items.append({"product": product, "image": image, "content": content, "label": label})
    report = images_ingest(image_ids=[item["image"].pk for item in items])
    assert sorted(report.ready) == sorted(item["image"].pk for item in items), report
    return items


def search(client, content, name="photo.jpg", content_type="image/jpeg", **fields):
    upload = SimpleUploadedFile(name, content, content_type=content_type)
    return client.post(SEARCH_URL, {"image": upload, **fields})


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes (never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def pillow_bytes(fmt: str, size=(32, 32), **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 60, 30)).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def media_files(settings) -> list:
    root = settings.MEDIA_ROOT
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# Catalog listing ---------------------------------------------------------------------------
def test_listing_pages_and_filters_by_category(client, db, django_assert_max_num_queries):
    shirts = category_get_or_create(name="Shirts")
    bags = category_get_or_create(name="Bags")
    for index in range(30):
        make_product(
            f"shirt-{index:02d}",
            title=f"Shirt {index:02d}",
            price=f"{1200 + index}.50",
            category=shirts,
            content=image_bytes(color=(index * 8, 40, 90)) if index < 3 else None,
            in_stock=index != 1,
        )
    for index in range(3):
        make_product(f"bag-{index}", title=f"Bag {index}", category=bags)

    with django_assert_max_num_queries(6):
        response = client.get(reverse("catalog:product-list"))
    assert response.status_code == 200
    elements = parse(response)
    cards = by_class(elements, "product-card")
    assert len(cards) == 24
    assert "Shirt 00" in cards[0]["text"] and "1,200.50 USD" in cards[0]["text"] and "In stock" in cards[0]["text"]
    assert "Sold out" in cards[1]["text"]
    # No thumbnail yet: the card falls back to the original image.
    first_image = ProductImage.objects.get(product__sku="shirt-00")
    assert any(e["tag"] == "img" and e["attrs"].get("src") == first_image.image.url for e in elements)
    # Category links by slug, and page links.
    hrefs = {e["attrs"].get("href") for e in elements if e["tag"] == "a"}
    assert f"/?category={bags.slug}" in hrefs and f"/?category={shirts.slug}" in hrefs
    assert "?page=2" in hrefs
    assert Product.objects.get(sku="shirt-00").get_absolute_url() in hrefs

    assert card_titles(client.get("/?page=2")) == [f"Shirt {i:02d}" for i in range(24, 30)] + [
        "Bag 0",
        "Bag 1",
        "Bag 2",
    ]
    # Out-of-range and junk page numbers fall back to a real page instead of failing.
    assert client.get("/?page=99").status_code == 200
    assert client.get("/?page=abc").status_code == 200

    response = client.get(f"/?category={bags.slug}")
    assert card_titles(response) == ["Bag 0", "Bag 1", "Bag 2"]
    assert "?page=2" not in response.content.decode()

    response = client.get(f"/?category={shirts.slug}&page=2")
    assert card_titles(response) == [f"Shirt {i:02d}" for i in range(24, 30)]
    hrefs = {e["attrs"].get("href") for e in parse(response) if e["tag"] == "a"}
    assert f"?category={shirts.slug}&page=1" in hrefs  # paging keeps the filter

    assert client.get("/?category=no-such-category").status_code == 404


def test_pages_use_local_assets_only(client, db):
    response = client.get("/")
    elements = parse(response)
    assets = [e["attrs"].get("href") for e in elements if e["tag"] == "link"]
    assets += [e["attrs"]["src"] for e in elements if e["tag"] in ("script", "img") and e["attrs"].get("src")]
    assert assets and all(url.startswith("/") for url in assets), assets
    nav = {e["text"]: e["attrs"]["href"] for e in elements if e["tag"] == "a" and e["text"]}
    assert nav["Catalog"] == "/" and nav["Visual search"] == SEARCH_URL
    assert nav["Admin"] == "/admin/" and nav["API docs"] == "/api/docs/"
    for path in ("/static/css/site.css", "/static/js/visual_search.js", "/static/js/feedback.js"):
        assert client.get(path).status_code == 200, path


# Product page ------------------------------------------------------------------------------
def test_product_page_shows_details_and_visually_similar_products(client, ingested_catalog):
    target = ingested_catalog[0]["product"]
    response = client.get(reverse("catalog:product-detail", args=[target.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert target.title in html and "Northwind" in html and "10.00" in html and target.category.name in html
    assert "colour" in html.lower() and "navy" in html and target.sku in html

    elements = parse(response)
    similar = by_class(elements, "similar-item")
    others = {item["product"].pk for item in ingested_catalog[1:]}
    assert {int(e["attrs"]["data-product-id"]) for e in similar} == others
    scores = [float(e["attrs"]["data-score"]) for e in similar]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert f"{scores[0]:.3f}" in similar[0]["text"]
    # Every look-alike can be marked "not similar" (the button shows once static/js/feedback.js runs); the row says
    # which model version served it and carries the token the marks send back.
    buttons = by_class(elements, "not-similar")
    assert [b["attrs"]["data-product-id"] for b in buttons] == [e["attrs"]["data-product-id"] for e in similar]
    row = by_class(elements, "similar-row")[0]["attrs"]
    assert row["data-model-version"] and row["data-feedback-token"] and row["data-feedback-url"]
    assert any(e["tag"] == "script" and e["attrs"].get("src", "").endswith("js/feedback.js") for e in elements)
    # Each look-alike links to its product page and shows its ingested thumbnail.
    for item in ingested_catalog[1:]:
        product = item["product"]
        image = ProductImage.objects.get(pk=item["image"].pk)
        assert image.thumbnail and image.thumbnail.url in html
        assert f'href="{product.get_absolute_url()}"' in html


def test_product_page_without_a_ready_vector_says_so(client, ingested_catalog, fashion_items):
    product, _ = make_product("pending-1", content=fashion_items[10][0])
    response = client.get(product.get_absolute_url())
    assert response.status_code == 200
    assert by_id(parse(response), "similar-pending") is not None
    assert not by_class(parse(response), "similar-item")


def test_product_page_survives_an_unreachable_vector_store(client, db, settings, serving_version):
    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"
    settings.MILVUS_CONNECT_TIMEOUT = 0.5  # nothing listens there: fail fast
    product, _ = make_product("offline-1", content=image_bytes())
    response = client.get(product.get_absolute_url())
    assert response.status_code == 200
    notice = by_id(parse(response), "similar-unavailable")
    assert notice is not None and "can't be shown right now" in notice["text"]
    assert product.title in response.content.decode()


def test_unknown_product_is_404(client, db):
    assert client.get(reverse("catalog:product-detail", args=[999999])).status_code == 404


# Visual search -----------------------------------------------------------------------------
def test_search_page_renders_the_upload_form(client, db):
    category_get_or_create(name="Outerwear")
    response = client.get(SEARCH_URL)
    assert response.status_code == 200
    elements = parse(response)
    form = by_id(elements, "search-form")
    assert form["attrs"]["method"] == "post" and form["attrs"]["enctype"] == "multipart/form-data"
    file_input = next(e for e in elements if e["tag"] == "input" and e["attrs"].get("name") == "image")
    assert file_input["attrs"]["type"] == "file"
    assert by_id(elements, "dropzone") is not None
    assert any(e["tag"] == "option" and e["attrs"].get("value") == "outerwear" for e in elements)
    assert any(e["tag"] == "input" and e["attrs"].get("name") == "max_price" for e in elements)
    assert any(e["tag"] == "script" and e["attrs"].get("src", "").endswith("js/visual_search.js") for e in elements)
    assert by_id(elements, "results") is None and by_id(elements, "search-error") is None
    # The script's part: the API it calls, the (hidden until a photo is chosen) photo with its boxes and the
    # whole-photo button; the no-JS form keeps a "whole photo" box of its own.
    assert form["attrs"]["data-api-url"] == "/api/search/"
    stage = by_id(elements, "photo-stage")
    assert stage is not None and "hidden" in stage["attrs"]
    assert by_id(elements, "box-layer") is not None and by_id(elements, "stage-photo") is not None
    assert by_id(elements, "search-whole")["attrs"]["type"] == "button"
    assert by_id(elements, "search-status")["attrs"]["role"] == "status"
    assert any(e["tag"] == "input" and e["attrs"].get("name") == "whole_photo" for e in elements)


def test_search_returns_ranked_results_with_scores(client, ingested_catalog):
    query = ingested_catalog[3]
    products_before, images_before = Product.objects.count(), ProductImage.objects.count()

    response = search(client, query["content"], name="query.png", content_type="image/png")
    assert response.status_code == 200
    rows = result_rows(response)
    assert [r["product_id"] for r in rows][0] == query["product"].pk
    assert {r["product_id"] for r in rows} == {item["product"].pk for item in ingested_catalog}
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0.99
    assert query["product"].title in rows[0]["text"] and f"{scores[0]:.3f}" in rows[0]["text"]
    assert f"{scores[1]:.3f}" in rows[1]["text"]
    # The shopper's photo is previewed as a data: URL; nothing is stored.
    assert 'src="data:image/webp;base64,' in response.content.decode()
    assert (Product.objects.count(), ProductImage.objects.count()) == (products_before, images_before)


def test_search_filters_by_max_price_category_and_stock(client, ingested_catalog):
    query = ingested_catalog[5]  # price 110.00, the most expensive
    rows = result_rows(search(client, query["content"], max_price="50"))
    prices = {item["product"].pk: item["product"].price for item in ingested_catalog}
    assert rows and query["product"].pk not in {r["product_id"] for r in rows}
    assert all(prices[r["product_id"]] <= 50 for r in rows)
    assert {r["product_id"] for r in rows} == {pk for pk, price in prices.items() if price <= 50}

    category = ingested_catalog[0]["product"].category
    rows = result_rows(search(client, query["content"], category=category.slug))
    assert {r["product_id"] for r in rows} == {
        item["product"].pk for item in ingested_catalog if item["product"].category_id == category.pk
    }

    rows = result_rows(search(client, query["content"], max_price="5"))
    assert rows == []
    assert (
        "No products match"
        in client.post(
            SEARCH_URL, {"image": SimpleUploadedFile("q.png", query["content"]), "max_price": "5"}
        ).content.decode()
    )


BAD_IMAGES = {
    "not an image": (b"just some text, definitely not pixels\n" * 20, "not an image Pillow can identify"),
    "truncated": (None, "damaged or truncated"),
    "zero bytes": (b"", "The file is empty (0 bytes)."),
    "decompression bomb": (png_header(12_000, 12_000), "too many pixels (possible decompression bomb)"),
    "huge dimensions": (png_header(20_000, 10), "the longest side may be 12000 px"),
    "too many megapixels": (png_header(7_000, 6_000), "megapixels; the limit is 40"),
    "too small": (png_header(4, 4), "each side must be at least 8 px"),
    "TGA behind .jpg": (pillow_bytes("TGA"), "Unsupported image format TGA"),
    "ICO behind .jpg": (pillow_bytes("ICO"), "Unsupported image format ICO"),
    "PDF behind .jpg": (pillow_bytes("PDF"), "not an image Pillow can identify"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_search_refuses_bad_images_with_400_and_creates_nothing(client, db, settings, case):
    # Nothing may reach the vector store: point it at a closed port so a leak would show as a 503.
    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"
    settings.MILVUS_CONNECT_TIMEOUT = 0.5  # nothing listens there: fail fast
    content, message = BAD_IMAGES[case]
    if content is None:
        whole = pillow_bytes("PNG", size=(64, 64))
        content = whole[: len(whole) // 2]
    response = search(client, content, name="photo.jpg", content_type="image/jpeg")
    assert response.status_code == 400, case
    assert message in error_text(response)
    elements = parse(response)
    assert by_id(elements, "results") is None
    assert by_id(elements, "search-form") is not None  # the form is shown again
    assert Product.objects.count() == 0 and ProductImage.objects.count() == 0
    assert media_files(settings) == []


def test_search_refuses_an_oversize_file(client, db, settings):
    settings.IMAGE_MAX_BYTES = 2_000
    response = search(client, pillow_bytes("BMP", size=(64, 64)), name="big.bmp", content_type="image/bmp")
    assert response.status_code == 400
    assert "the limit is 2.0" in unescape(error_text(response)).replace("\xa0", " ")
    assert media_files(settings) == []


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"max_price": "-5"}, "max_price", "greater than or equal to 0"),
        ({"max_price": "cheap"}, "max_price", "Enter a number."),
        ({"category": "no-such-category"}, "category", "Unknown category."),
    ],
)
def test_search_refuses_invalid_filters_with_field_errors(client, db, fields, field, message):
    category_get_or_create(name="Dresses")
    response = search(client, image_bytes(), name="ok.png", content_type="image/png", **fields)
    assert response.status_code == 400
    elements = parse(response)
    errors = [e["text"] for e in by_class(elements, "field-error")]
    assert any(message in text for text in errors), errors
    assert "highlighted fields" in error_text(response)
    assert by_id(elements, "results") is None
    if field == "max_price":  # the value typed is kept in the re-rendered form
        assert any(e["attrs"].get("name") == "max_price" and e["attrs"].get("value") == fields[field] for e in elements)


def test_search_without_a_file_is_400(client, db):
    response = client.post(SEARCH_URL, {"max_price": "10"})
    assert response.status_code == 400
    assert "Choose a photo" in error_text(response)


def test_search_is_503_when_the_vector_store_is_unreachable(client, db, settings, serving_version):
    settings.MILVUS_URI = f"http://127.0.0.1:{free_port()}"
    settings.MILVUS_CONNECT_TIMEOUT = 0.5  # nothing listens there: fail fast
    response = search(client, image_bytes(size=(64, 64)), name="ok.png", content_type="image/png")
    assert response.status_code == 503
    assert "temporarily unavailable" in error_text(response)
    assert by_id(parse(response), "results") is None


# Without JavaScript: the most confident item, or the whole photo -------------------------------------------
def street_photo_bytes(size=(320, 240), seed: int = 0) -> bytes:
    """A textured scene (not a clean product shot), so the search localizes items first."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(30, 200, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_search_without_javascript_searches_the_most_confident_item_and_draws_every_box(
    client, ingested_catalog, monkeypatch
):
    from webapp.search import localization

    found = [
        localization.ItemBox(0, "Shirt", 0.91, (32, 24, 160, 216)),
        localization.ItemBox(1, "Bag", 0.4, (200, 100, 300, 200)),
    ]
    monkeypatch.setattr(
        "webapp.search.selectors.photo_localize", lambda picture: localization.Localization(found, 1.0, 1.0)
    )
    response = search(client, street_photo_bytes(), name="street.jpg")
    assert response.status_code == 200
    elements = parse(response)
    summary = by_id(elements, "query-summary")
    assert summary["attrs"]["data-kind"] == "detected" and summary["attrs"]["data-index"] == "0"
    assert "Shirt (91%)" in summary["text"]
    boxes = by_class(elements, "static-box")
    assert [b["attrs"]["data-index"] for b in boxes] == ["0", "1"]
    assert "is-selected" in boxes[0]["attrs"]["class"] and "is-selected" not in boxes[1]["attrs"]["class"]
    assert boxes[0]["text"] == "Shirt 91%" and boxes[1]["text"] == "Bag 40%"
    # Percentages of the 320x240 photo, so they sit on the preview at any size.
    assert "left: 10.000%; top: 10.000%; width: 40.000%; height: 80.000%;" in boxes[0]["attrs"]["style"]
    assert len(result_rows(response)) == len(ingested_catalog)
    assert by_id(elements, "query-note") is None


def test_search_without_javascript_falls_back_to_the_whole_photo_when_detection_is_down(
    client, ingested_catalog, settings
):
    settings.LOCALIZE_TIMEOUT_SECONDS = 0.5  # no localize worker runs here
    response = search(client, street_photo_bytes(), name="street.jpg")
    assert response.status_code == 200
    elements = parse(response)
    assert by_id(elements, "query-summary")["attrs"]["data-kind"] == "whole_photo"
    assert "Item detection is unavailable" in by_id(elements, "query-note")["text"]
    assert not by_class(elements, "static-box")
    assert len(result_rows(response)) == len(ingested_catalog)

    # Asking for the whole photo works the same way, and says why there are no boxes.
    response = search(client, street_photo_bytes(), name="street.jpg", whole_photo="on")
    assert response.status_code == 200
    elements = parse(response)
    assert by_id(elements, "query-summary")["attrs"]["data-kind"] == "whole_photo"
    assert "unavailable" in by_id(elements, "query-note")["text"]
    assert len(result_rows(response)) == len(ingested_catalog)
