"""The merchant catalog import: CSV and JSONL, files and URLs, one bad row never stops the others."""

import csv
import http.server
import json
import threading
from io import StringIO

import pytest
from django.core.management import call_command

from tests.conftest import image_bytes
from webapp.catalog.models import Product, ProductImage


@pytest.fixture
def image_server(tmp_path):
    """A local HTTP server (127.0.0.1 only) serving test images."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "red.jpg").write_bytes(image_bytes("JPEG", color=(220, 20, 20)))
    (root / "fake.jpg").write_bytes(b"<html>not an image</html>")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.django_db
def test_csv_import_reports_bad_rows_and_keeps_the_good_ones(
    tmp_path, image_server, django_capture_on_commit_callbacks
):
    (tmp_path / "blue.png").write_bytes(image_bytes("PNG", color=(20, 20, 220)))
    (tmp_path / "pdf.jpg").write_bytes(b"%PDF-1.4 a pdf behind a jpg name")
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [
        {
            "sku": "A1",
            "title": "Blue shirt",
            "brand": "Kestrel",
            "price": "19.50",
            "currency": "eur",
            "category": "Shirt",
            "in_stock": "yes",
            "attributes": '{"colour": "blue"}',
            "image": "blue.png",
        },
        {
            "sku": "A2",
            "title": "Red dress",
            "price": "49",
            "category": "Dress",
            "in_stock": "no",
            "image": f"{image_server}/red.jpg",
        },
        {"sku": "B1", "title": "No price", "price": "", "category": "Shirt", "image": "blue.png"},
        {"sku": "B2", "title": "Bad price", "price": "cheap", "category": "Shirt", "image": "blue.png"},
        {"sku": "B3", "title": "Fake image", "price": "5", "category": "Shirt", "image": "pdf.jpg"},
        {"sku": "B4", "title": "Empty image", "price": "5", "category": "Shirt", "image": "empty.png"},
        {"sku": "B5", "title": "Missing file", "price": "5", "category": "Shirt", "image": "nope.png"},
        {"sku": "B6", "title": "HTML at URL", "price": "5", "category": "Shirt", "image": f"{image_server}/fake.jpg"},
        {"sku": "B7", "title": "404", "price": "5", "category": "Shirt", "image": f"{image_server}/missing.jpg"},
        {"sku": "B8", "title": "ftp", "price": "5", "category": "Shirt", "image": "ftp://example.com/x.jpg"},
    ]
    path = tmp_path / "catalog.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=["sku", "title", "brand", "price", "currency", "category", "in_stock", "attributes", "image"],
        )
        writer.writeheader()
        writer.writerows(rows)
    out = StringIO()
    errors = tmp_path / "errors.csv"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        call_command("import_catalog", str(path), "--errors", str(errors), stdout=out)
    assert "2 created, 0 updated, 2 images queued, 8 row(s) with errors" in out.getvalue()
    assert len(callbacks) == 2  # one ingestion task queued per stored image, after commit
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["A1", "A2"]
    a1 = Product.objects.get(sku="A1")
    assert (a1.currency, a1.attributes, a1.in_stock, str(a1.price)) == ("EUR", {"colour": "blue"}, True, "19.50")
    a2 = Product.objects.get(sku="A2")
    assert a2.in_stock is False and a2.images.get().source_url.endswith("/red.jpg")
    assert ProductImage.objects.count() == 2
    report = {row["sku"]: row["error"] for row in csv.DictReader(errors.open())}
    assert "price" in report["B1"] and "not a number" in report["B2"]
    assert "not an image" in report["B3"] and "empty" in report["B4"] and "not found" in report["B5"]
    assert "not an image" in report["B6"] and "HTTP 404" in report["B7"] and "http(s)" in report["B8"]


@pytest.mark.django_db
def test_jsonl_import_updates_existing_products_without_duplicating_images(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes("PNG", color=(1, 2, 3)))
    (tmp_path / "b.png").write_bytes(image_bytes("PNG", color=(9, 8, 7)))
    lines = [
        json.dumps(
            {
                "sku": "J1",
                "title": "Coat",
                "price": 120,
                "category": "Coat",
                "images": ["a.png", "b.png"],
                "attributes": {"size": ["S", "M"]},
            }
        ),
        "{broken json",
        json.dumps(["not", "an", "object"]),
    ]
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = StringIO()
    call_command("import_catalog", str(path), stdout=out)
    assert "1 created, 0 updated, 2 images queued, 2 row(s) with errors" in out.getvalue()
    assert "invalid JSON" in out.getvalue() and "JSON object" in out.getvalue()

    path.write_text(
        json.dumps({"sku": "J1", "title": "Warm coat", "price": "99.90", "category": "Coat", "images": "a.png|b.png"})
        + "\n"
    )
    call_command("import_catalog", str(path), stdout=StringIO())
    product = Product.objects.get(sku="J1")
    assert product.title == "Warm coat" and str(product.price) == "99.90"
    assert product.images.count() == 2


@pytest.mark.django_db
def test_demo_catalog_is_loaded_once_from_real_fashion_mnist(django_capture_on_commit_callbacks):
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        call_command("load_demo_catalog", "--size", "25", stdout=out)
    assert "25 new products" in out.getvalue()
    call_command("load_demo_catalog", "--size", "25", stdout=(again := StringIO()))
    assert "0 new products" in again.getvalue()
    assert Product.objects.count() == 25 and ProductImage.objects.filter(width=28, height=28).count() == 25
    assert Product.objects.values("category").distinct().count() >= 5
