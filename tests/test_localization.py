"""Localization in the search path, without processes: the box a client sends, the bounded wait for a localize
worker, the fallbacks. The real worker and detector are exercised in test_localization_worker.py."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from webapp.catalog.images import looks_like_product_shot
from webapp.search.localization import _rescale, decode_from_web, encode_for_worker


def street_photo(size=(320, 240), seed: int = 0) -> bytes:
    """A textured scene (not a product shot) as JPEG bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(30, 200, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def upload(content: bytes, name: str = "photo.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="image/jpeg")


@pytest.fixture
def quick_timeout(settings):
    settings.LOCALIZE_TIMEOUT_SECONDS = 0.5
    return settings


@pytest.mark.django_db
@pytest.mark.parametrize(
    "box, message",
    [
        ("0,0,400,100", "lies outside the 320x240 photo"),
        ("-5,0,100,100", "lies outside"),
        ("50,50,50,120", "has no area"),
        ("60,50,40,120", "has no area"),
        ("1,2,3", "four whole numbers"),
        ("a,b,c,d", "four whole numbers"),
    ],
)
def test_a_box_outside_the_photo_without_area_or_malformed_is_400_with_the_reason(client, box, message):
    response = client.post("/api/search/", {"image": upload(street_photo()), "box": box})
    assert response.status_code == 400
    assert message in response.json()["box"][0]


@pytest.mark.django_db
def test_a_box_and_whole_photo_together_are_refused(client):
    response = client.post("/api/search/", {"image": upload(street_photo()), "box": "0,0,10,10", "whole_photo": "true"})
    assert response.status_code == 400 and "not both" in response.json()["box"][0]


@pytest.mark.django_db
def test_search_answers_503_with_the_reason_when_no_localize_worker_answers(client, quick_timeout, serving_version):
    started = time.monotonic()
    response = client.post("/api/search/", {"image": upload(street_photo())})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "no localization worker answered within 0.5 s" in response.json()["detail"]
    assert elapsed < 0.5 + 20, f"the request waited {elapsed:.1f} s"  # bounded by the timeout, not hung


@pytest.mark.django_db
def test_detect_answers_503_when_no_localize_worker_answers(client, quick_timeout):
    response = client.post("/api/detect/", {"image": upload(street_photo())})
    assert response.status_code == 503 and "no localization worker" in response.json()["detail"]


@pytest.mark.django_db
def test_the_whole_photo_or_a_drawn_box_is_still_searched_without_localization(client, quick_timeout):
    whole = client.post("/api/search/", {"image": upload(street_photo()), "whole_photo": "true"})
    assert whole.status_code == 200, whole.content
    body = whole.json()
    assert body["query"]["kind"] == "whole_photo" and "unavailable" in body["query"]["note"]
    assert body["boxes"] == [] and body["image"] == {"width": 320, "height": 240}
    drawn = client.post("/api/search/", {"image": upload(street_photo()), "box": "10,20,110,200"})
    assert drawn.status_code == 200
    assert drawn.json()["query"] | {"note": ""} == {
        "kind": "client",
        "index": None,
        "label": None,
        "box": [10, 20, 110, 200],
        "note": "",
    }


@pytest.mark.django_db
def test_a_clean_product_shot_is_searched_whole_without_asking_a_worker(client, quick_timeout, fashion_items):
    response = client.post("/api/search/", {"image": upload(fashion_items[0][0], "item.png")})
    assert response.status_code == 200
    query = response.json()["query"]
    assert query["kind"] == "whole_photo" and "plain background" in query["note"]
    assert response["Server-Timing"].startswith("decode;dur=") and "localize" not in response["Server-Timing"]
    drawn = client.post("/api/search/", {"image": upload(fashion_items[0][0], "item.png"), "box": "2,2,20,26"})
    assert drawn.json()["query"] == {"kind": "client", "index": None, "label": None, "box": [2, 2, 20, 26], "note": ""}


def test_catalog_images_are_product_shots_and_street_photos_are_scenes(fashion_items):
    assert all(looks_like_product_shot(Image.open(io.BytesIO(content))) for content, _ in fashion_items[:20])
    assert not looks_like_product_shot(Image.open(io.BytesIO(street_photo())))


def test_the_photo_sent_to_a_worker_is_shrunk_and_its_boxes_scaled_back():
    photo = Image.new("RGB", (2000, 1000), (120, 80, 40))
    payload, scale = encode_for_worker(photo)
    sent = decode_from_web(payload)
    assert sent.size == (640, 320) and scale == pytest.approx(3.125)
    boxes = _rescale(
        [
            {"label": "Shirt", "score": 0.9, "box": [64, 32, 128, 96]},
            {"label": "Bag", "score": 0.5, "box": [5, 5, 5, 9]},
        ],
        scale,
        2000,
        1000,
    )
    assert [(b.label, b.box) for b in boxes] == [("Shirt", (200, 100, 400, 300))]  # the zero-width box is dropped


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_grey_cmyk_alpha_and_palette_photos_are_searched(client, quick_timeout, mode):
    picture = Image.open(io.BytesIO(street_photo())).convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG" if mode in ("L", "CMYK") else "PNG")
    response = client.post("/api/search/", {"image": upload(buffer.getvalue()), "whole_photo": "true"})
    assert response.status_code == 200, response.content


@pytest.mark.django_db
@pytest.mark.parametrize("size", [(12, 9), (4000, 3000), (3000, 400)])
def test_tiny_huge_and_panorama_photos_are_searched(client, quick_timeout, size):
    response = client.post("/api/search/", {"image": upload(street_photo(size)), "box": f"0,0,{size[0]},{size[1]}"})
    assert response.status_code == 200, response.content
    assert response.json()["image"] == {"width": size[0], "height": size[1]}


@pytest.mark.django_db
def test_openapi_documents_detect_and_the_boxes_of_a_photo_search(client):
    schema = client.get("/api/schema/?format=json").json()
    assert "/api/detect/" in schema["paths"] and "503" in schema["paths"]["/api/search/"]["post"]["responses"]
    components = schema["components"]["schemas"]
    assert {"image", "boxes", "query", "results"} <= set(components["PhotoSearchResults"]["properties"])
    assert {"index", "label", "score", "box"} <= set(components["ItemBox"]["properties"])
    search_form = components["SearchByImage"]["properties"]
    assert {"box", "whole_photo"} <= set(search_form)


def test_an_item_is_embedded_as_the_mean_of_its_crops_and_a_whole_image_as_itself():
    from ml.detection.crops import embed_items, item_crops
    from tests.fakes import PixelEmbedder

    embedder = PixelEmbedder("pixels")
    photo = Image.open(io.BytesIO(street_photo((320, 240))))
    crops = item_crops(photo, (40, 30, 140, 200), (0.05, 0.1))
    assert [crop.size for crop in crops] == [(187, 187), (204, 204)]  # square, grown by 5% and 10% of the side
    vectors = embed_items(embedder, [crops, item_crops(photo, None, (0.05, 0.1))])
    expected = embedder.embed(crops).sum(axis=0)
    assert np.allclose(vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert np.allclose(vectors[1], embedder.embed_one(photo), atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_loading_the_detector_leaves_pillow_refusing_a_non_image_as_before():
    """ultralytics patches PIL.Image.open to pip-install a HEIF plugin on an unknown file; the detector undoes it."""
    from PIL import UnidentifiedImageError

    from ml.detection.detector import load_detector

    load_detector("tests/fixtures/tiny-detector", device="cpu")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"not an image at all"))
