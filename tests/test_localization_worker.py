"""Localization through a real `localize` worker with the shipped detector, on street photos of the test split:
every item boxed, each item picked finds its own product, phone photos come back upright."""

from __future__ import annotations

import io
import time
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from tests.search_checks import iou
from webapp.catalog import services as catalog_services
from webapp.search import services as search_services

DISTRACTORS = 40


def jpeg(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def benchmark():
    from ml.data.street2shop import build_benchmark

    return build_benchmark(size="small", seed=0, progress=False)


@pytest.fixture
def two_item_photos(benchmark):
    """Test-split street photos holding two items, with those items' ground truth."""
    by_photo: dict[int, list] = {}
    for item in benchmark.queries("test"):
        by_photo.setdefault(item.photo_index, []).append(item)
    return [(index, items) for index, items in sorted(by_photo.items()) if len(items) == 2][:4]


@pytest.fixture
def street_catalog(visnet_version, benchmark, two_item_photos):
    """The photos' shop items as products, plus distractors of the same gallery, ingested with VisNet."""
    wanted = [item.shop_index for _, items in two_item_photos for item in items]
    gallery = [int(i) for i in benchmark.gallery_indices("test") if int(i) not in wanted][:DISTRACTORS]
    products, image_ids = {}, []
    for shop_index in wanted + gallery:
        category = catalog_services.category_get_or_create(name=f"class-{int(benchmark.shop_labels[shop_index])}")
        product, _ = catalog_services.product_upsert(
            sku=f"shop-{shop_index}", title=f"Shop {shop_index}", price=Decimal("30.00"), category=category
        )
        image = catalog_services.product_image_create(product=product, content=png(benchmark.shop_image(shop_index)))
        image_ids.append(image.pk)
        products[shop_index] = product
    report = search_services.images_ingest(image_ids=image_ids)
    assert len(report.ready) == len(image_ids), report
    return products


def post_photo(client, content: bytes, **fields):
    upload = SimpleUploadedFile("street.jpg", content, content_type="image/jpeg")
    return client.post("/api/search/", {"image": upload, "k": 5, **fields})


@pytest.mark.engine_agnostic
def test_the_localize_worker_loads_the_detector_before_its_first_photo(localize_worker):
    """No cold start: the detector is loaded and run once while the worker starts, not on the first shopper photo."""
    deadline = time.monotonic() + 60
    while "detector loaded and warmed up" not in localize_worker.log():
        assert localize_worker.process.poll() is None, localize_worker.log()[-3000:]
        assert time.monotonic() < deadline, localize_worker.log()[-3000:]
        time.sleep(0.2)
    assert "could not be loaded" not in localize_worker.log()


@pytest.mark.engine_agnostic
def test_detect_answers_boxes_from_a_real_localize_worker(client, localize_worker, benchmark, two_item_photos):
    photo_index, items = two_item_photos[0]
    upload = SimpleUploadedFile("street.jpg", jpeg(benchmark.street_photo(photo_index)), content_type="image/jpeg")
    response = client.post("/api/detect/", {"image": upload})
    assert response.status_code == 200, (response.content, localize_worker.log()[-3000:])
    body = response.json()
    assert body["image"] == {"width": 320, "height": 320}
    for box in body["boxes"]:
        x1, y1, x2, y2 = box["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320 and 0 < box["score"] <= 1
    assert [b["index"] for b in body["boxes"]] == list(range(len(body["boxes"])))
    assert [b["score"] for b in body["boxes"]] == sorted((b["score"] for b in body["boxes"]), reverse=True)


def test_each_item_picked_in_a_two_item_street_photo_finds_its_own_product(
    client, localize_worker, street_catalog, benchmark, two_item_photos
):
    found, picked = 0, 0
    for photo_index, items in two_item_photos:
        content = jpeg(benchmark.street_photo(photo_index))
        first = post_photo(client, content)
        assert first.status_code == 200, (first.content, localize_worker.log()[-3000:])
        body = first.json()
        assert "localize;dur=" in first["Server-Timing"] and "detect;dur=" in first["Server-Timing"]
        assert body["query"]["kind"] == "detected" and body["query"]["index"] == 0
        for item in items:
            matches = [b for b in body["boxes"] if iou(b["box"], item.box) >= 0.5]
            if not matches:
                continue
            picked += 1
            box = ",".join(str(v) for v in matches[0]["box"])
            answer = post_photo(client, content, box=box).json()
            # A detected box sent back is searched as that item.
            assert answer["query"]["kind"] == "detected" and answer["query"]["index"] == matches[0]["index"]
            assert answer["query"]["box"] == matches[0]["box"]
            top = [r["product"]["id"] for r in answer["results"]]
            found += street_catalog[item.shop_index].pk in top
    assert picked >= 6, f"the detector boxed {picked} of 8 items"
    assert found >= picked - 2, f"{found} of {picked} picked items found their product in the top 5"


@pytest.mark.engine_agnostic
def test_a_phone_photo_with_exif_rotation_gets_boxes_in_upright_pixels(
    client, localize_worker, benchmark, two_item_photos
):
    photo_index, items = two_item_photos[1]
    upright = benchmark.street_photo(photo_index)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera held sideways: the stored pixels are rotated, viewers turn them 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    upload = SimpleUploadedFile("phone.jpg", jpeg(stored, exif=exif.tobytes()), content_type="image/jpeg")
    body = client.post("/api/detect/", {"image": upload}).json()
    assert body["image"] == {"width": 320, "height": 320}
    assert any(iou(box["box"], item.box) >= 0.5 for box in body["boxes"] for item in items), body["boxes"]
