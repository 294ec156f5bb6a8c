"""The merchant catalog import: CSV and JSONL, files and URLs, one bad row never stops the others; rows written in
transactions of many rows, their images queued in batches once each commits (read back from the real broker)."""

import csv
import http.server
import json
import math
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from tests.conftest import image_bytes, start_worker, stop_worker, wait_until
from webapp.catalog import importing, services
from webapp.catalog.models import Product, ProductImage
from webapp.search import dispatch
from webapp.search.dispatch import INGEST_BATCH_SIZE, INGEST_IMAGES


def take_ingest_messages() -> list[list[int]]:
    """Take every message waiting on the configured broker's ingest queue; each one's image ids, sorted by their
    first id (the filesystem broker orders messages sent in the same millisecond at random)."""
    from webapp.celery import app

    batches = []
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        while (message := channel.basic_get(queue="ingest", no_ack=True)) is not None:
            assert message.headers["task"] == INGEST_IMAGES
            args, _kwargs, _embed = message.decode()
            batches.append(list(args[0]))
    return sorted(batches)


def write_catalog(folder: Path, rows: list[dict], name: str = "catalog.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "title", "price", "category", "images"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plain_rows(folder: Path, count: int, prefix: str = "bulk") -> list[dict]:
    """`count` rows, each with its own small PNG (a different colour each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        name = f"{prefix}-{index}.png"
        (folder / name).write_bytes(image_bytes("PNG", size=(16, 16), color=(index % 256, index // 256, 77)))
        rows.append(
            {"sku": f"{prefix}-{index}", "title": f"Item {index}", "price": "10", "category": "Shirt", "images": name}
        )
    return rows


def media_files(root) -> set[str]:
    root = Path(root)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def image_ids_of(skus) -> list[int]:
    return list(ProductImage.objects.filter(product__sku__in=list(skus)).order_by("pk").values_list("pk", flat=True))


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
    take_ingest_messages()  # whatever earlier tests left on the queue
    with django_capture_on_commit_callbacks(execute=True):
        call_command("import_catalog", str(path), "--errors", str(errors), stdout=out)
    assert "2 created, 0 updated, 2 images queued, 8 row(s) with errors" in out.getvalue()
    assert take_ingest_messages() == [image_ids_of(["A1", "A2"])]  # both images in one task, after the commit
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


@pytest.mark.django_db(transaction=True)
def test_a_large_import_queues_one_task_per_batch_of_images_not_one_per_image(tmp_path):
    take_ingest_messages()
    rows = plain_rows(tmp_path / "catalog", 150)
    catalog = write_catalog(tmp_path / "catalog", rows)
    report = importing.import_catalog(catalog, rows_per_transaction=100)  # two transactions: 100 rows, then 50
    assert (report.created, report.images, report.errors) == (150, 150, [])
    batches = take_ingest_messages()
    assert [len(batch) for batch in batches] == [32, 32, 32, 4, 32, 18]  # ceil(100/32) + ceil(50/32) tasks, in
    # the order the rows were written
    assert [i for batch in batches for i in batch] == image_ids_of(row["sku"] for row in rows)

    again = write_catalog(tmp_path / "catalog", plain_rows(tmp_path / "catalog", 40, prefix="one"), "one.csv")
    importing.import_catalog(again, rows_per_transaction=1)  # row by row, as before batching: a task per image
    assert [len(batch) for batch in take_ingest_messages()] == [1] * 40

    third = write_catalog(tmp_path / "catalog", plain_rows(tmp_path / "catalog", 70, prefix="all"), "all.csv")
    call_command("import_catalog", str(third), stdout=StringIO())  # the command's default: one transaction here
    assert len(take_ingest_messages()) == math.ceil(70 / INGEST_BATCH_SIZE)


@pytest.mark.django_db(transaction=True)
def test_a_row_failing_mid_transaction_loses_no_other_row_and_queues_nothing_of_its_own(
    tmp_path, settings, monkeypatch
):
    """The row's first image is stored, then its second is refused while the row is written (the import's own
    check switched off, so the service's check is what refuses it): that row's savepoint rolls back, file included;
    the rows before and after it in the same transaction are kept and queued."""
    take_ingest_messages()
    monkeypatch.setattr(importing, "validate_image_bytes", lambda content: None)
    folder = tmp_path / "catalog"
    rows = plain_rows(folder, 5)
    (folder / "cut.png").write_bytes(image_bytes("PNG", size=(64, 64), color=(200, 10, 10))[:100])
    (folder / "good.png").write_bytes(image_bytes("PNG", size=(20, 20), color=(1, 200, 1)))
    rows.insert(2, {"sku": "mixed", "title": "Mixed", "price": "5", "category": "Shirt", "images": "good.png|cut.png"})
    report = importing.import_catalog(write_catalog(folder, rows), rows_per_transaction=10)
    assert report.created == 5 and [(n, sku) for n, sku, _ in report.errors] == [(4, "mixed")]
    assert "damaged or truncated" in report.errors[0][2]
    assert not Product.objects.filter(sku="mixed").exists()
    kept = image_ids_of(row["sku"] for row in rows if row["sku"] != "mixed")
    assert len(kept) == 5 and ProductImage.objects.count() == 5
    assert take_ingest_messages() == [kept]  # one task, none of the failed row's images
    stored = set(ProductImage.objects.values_list("image", flat=True))
    assert media_files(settings.MEDIA_ROOT) == stored  # the failed row's first file went with its savepoint


@pytest.mark.django_db(transaction=True)
def test_a_transaction_that_rolls_back_keeps_and_queues_nothing_of_its_rows(tmp_path, settings):
    """The media folder of an existing product is blocked (a file where its folder goes), so storing its new image
    fails (ImageNotStored, an OSError: the import stops). The transaction that held it rolls back whole: its other
    rows, their files and their ingestion; the transaction committed before it is kept and queued."""
    take_ingest_messages()
    folder = tmp_path / "catalog"
    blocked = services.product_create(sku="blocked", title="Blocked", price="3", category_name="Shirt")
    media = Path(settings.MEDIA_ROOT)
    (media / "products").mkdir(parents=True)
    (media / "products" / str(blocked.pk)).write_text("a file where the product's image folder goes")
    rows = plain_rows(folder, 6)
    rows.insert(4, {"sku": "blocked", "title": "Blocked", "price": "3", "category": "Shirt", "images": "bulk-0.png"})
    catalog = write_catalog(folder, rows)
    with pytest.raises(services.ImageNotStored):
        importing.import_catalog(catalog, rows_per_transaction=3)  # [0, 1, 2] commits; [3, blocked, 4] rolls back
    first = image_ids_of(["bulk-0", "bulk-1", "bulk-2"])
    assert sorted(Product.objects.values_list("sku", flat=True)) == ["blocked", "bulk-0", "bulk-1", "bulk-2"]
    assert ProductImage.objects.count() == 3
    assert take_ingest_messages() == [first]
    stored = set(ProductImage.objects.values_list("image", flat=True))
    assert media_files(media) == stored | {f"products/{blocked.pk}"}  # no file of the rolled-back rows left


@pytest.mark.django_db(transaction=True)
def test_a_batched_block_outside_a_transaction_queues_its_committed_images_once_it_ends():
    """Each write commits at once there (autocommit): the ids gather as they commit and go out in one task at the
    block's end, not one task each."""
    take_ingest_messages()
    product = services.product_create(sku="loose", title="Loose", price="4", category_name="Shirt")
    with dispatch.ingest_batched_on_commit() as committed:
        images = [
            services.product_image_create(product=product, content=image_bytes(color=(i, 9, 9))) for i in range(3)
        ]
        assert committed == [image.pk for image in images]
        assert take_ingest_messages() == []
    assert take_ingest_messages() == [[image.pk for image in images]]
    services.product_image_create(product=product, content=image_bytes(color=(99, 9, 9)))  # after it: on its own
    assert len(take_ingest_messages()) == 1


@pytest.mark.django_db
def test_rows_the_database_would_refuse_are_reported_before_anything_is_written(tmp_path):
    folder = tmp_path / "catalog"
    rows = plain_rows(folder, 3)
    rows[0]["title"] = "x" * 301
    rows[1]["price"] = "12345678901"
    report = importing.import_catalog(write_catalog(folder, rows))
    assert report.created == 1
    assert ["title is longer than 300" in report.errors[0][2], "price must be below" in report.errors[1][2]] == [
        True,
        True,
    ]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_one_bad_image_in_a_batch_fails_alone_in_the_real_worker(
    tmp_path, settings, milvus_uri, milvus_names, vector_store, fashion_items
):
    """Six rows imported in one transaction: one task of six images. One stored file is damaged on disk before the
    worker runs; the worker marks that image failed with its reason and the other five ready, with their vectors."""
    take_ingest_messages()
    folder = tmp_path / "catalog"
    folder.mkdir()
    rows = []
    for index, (content, _) in enumerate(fashion_items[:6]):
        (folder / f"{index}.png").write_bytes(content)
        rows.append(
            {"sku": f"fm-{index}", "title": f"Item {index}", "price": "20", "category": "Top", "images": f"{index}.png"}
        )
    report = importing.import_catalog(write_catalog(folder, rows))
    assert report.images == 6
    damaged = ProductImage.objects.get(product__sku="fm-3")
    Path(damaged.image.path).write_bytes(b"\x89PNG\r\n\x1a\n damaged on disk")
    worker = start_worker(tmp_path, milvus_uri, milvus_names, settings.CELERY_BROKER_URL)
    try:
        wait_until(
            lambda: any(
                f"Task {INGEST_IMAGES}[" in line and " succeeded in " in line for line in worker.log().splitlines()
            ),
            120,
            message="the batch's task to succeed",
        )
    finally:
        stop_worker(worker)
    received = [
        json.loads(line)["data"]["args"]
        for line in worker.log().splitlines()
        if line.startswith("{") and f"Task {INGEST_IMAGES}[" in line and " received" in line
    ]
    assert received == [json.dumps([image_ids_of(row["sku"] for row in rows)])]  # one task held all six
    statuses = dict(ProductImage.objects.values_list("product__sku", "status"))
    assert statuses == {f"fm-{i}": ("failed" if i == 3 else "ready") for i in range(6)}
    damaged.refresh_from_db()
    assert "InvalidImage" in damaged.error
    assert vector_store.count() == 5
