"""Triplet review: reference pictures, the review page's JSON endpoints, and the admin's pictures, filters, bulk
actions and decision history."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.test_curation import add_products, make_user, shop_triplets
from webapp.curation.models import QueryPhoto, Triplet, TripletDecision
from webapp.curation.refs import BOX_COLOUR


@pytest.fixture(scope="session")
def tiny_benchmark():
    """The tiny street-to-shop benchmark, built once under the test VAR_DIR (about a second)."""
    from ml.data.street2shop import build_benchmark

    return build_benchmark("tiny", 0, progress=False, workers=1)


@pytest.fixture
def curation_benchmark(settings, tiny_benchmark):
    settings.CURATION_BENCHMARK, settings.CURATION_BENCHMARK_SEED = "tiny", 0
    return tiny_benchmark


@pytest.fixture
def shop(db, fashion_items):
    """Eight demo-like products (Fashion-MNIST items, 28x28) in two categories."""
    items = [(f"sku-{i}", png, "Shirt" if i < 6 else "Bag") for i, (png, _) in enumerate(fashion_items[:8])]
    return add_products(items)


def png_of(response) -> Image.Image:
    assert response["Content-Type"] == "image/png", response["Content-Type"]
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def test_a_shop_reference_is_scaled_up_pixel_for_pixel_and_cached(admin_client, shop, fashion_items):
    response = admin_client.get("/curation/refs/shop:sku-2.png")
    assert response.status_code == 200
    picture = np.asarray(png_of(response))
    original = np.asarray(Image.open(io.BytesIO(fashion_items[2][0])).convert("RGB"))
    assert picture.shape == (336, 336, 3)  # 28 px x 12: large enough to judge
    assert np.array_equal(picture[::12, ::12], original) and np.array_equal(picture[11::12, 11::12], original)
    assert response["Cache-Control"] == "private, max-age=86400" and response["ETag"]
    again = admin_client.get("/curation/refs/shop:sku-2.png", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304 and not again.content

    unknown = admin_client.get("/curation/refs/shop:nope.png")
    assert unknown.status_code == 404 and unknown["Cache-Control"] == "no-store"
    assert png_of(unknown).size == (320, 320)  # a placeholder that says why, still a picture
    assert admin_client.get("/curation/refs/catalog:1.png").status_code == 400


def test_a_street_reference_is_its_photo_with_the_box_drawn_or_its_crop(admin_client, db, curation_benchmark):
    from ml.data.street2shop import crop_box

    index = next(i for i, item in enumerate(curation_benchmark.items) if item.split == "test")
    item = curation_benchmark.items[index]
    ref = f"street:test:{index}"
    photo = np.asarray(png_of(admin_client.get(f"/curation/refs/{ref}.png?mode=photo")))
    assert photo.shape == (320, 320, 3)
    x0, y0, x1, y1 = item.box
    assert tuple(photo[y0 + 1, (x0 + x1) // 2]) == BOX_COLOUR and tuple(photo[(y0 + y1) // 2, x0 + 1]) == BOX_COLOUR

    crop = png_of(admin_client.get(f"/curation/refs/{ref}.png?mode=crop"))
    assert crop.width == crop.height >= 320
    source = curation_benchmark.street_photo(item.photo_index)
    expected = source.crop(crop_box(item.box, source.size, context=0.1)).resize(crop.size, Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(crop, dtype=float) - np.asarray(expected, dtype=float)).mean() < 2

    wrong_split = admin_client.get(f"/curation/refs/street:train:{index}.png")
    assert wrong_split.status_code == 404
    assert admin_client.get(f"/curation/refs/street:test:{10**6}.png").status_code == 404


def test_without_the_benchmark_a_street_reference_is_a_placeholder_and_nothing_is_built(admin_client, db, settings):
    from ml.data.street2shop import default_root

    settings.CURATION_BENCHMARK, settings.CURATION_BENCHMARK_SEED = "tiny", 4242
    response = admin_client.get("/curation/refs/street:test:3.png?mode=photo")
    assert response.status_code == 503 and response["Cache-Control"] == "no-store"
    assert png_of(response).size == (320, 320)
    assert not default_root("tiny", 4242).exists()


def test_a_shopper_query_photo_shows_the_searched_box(admin_client, db, settings):
    from django.core.files.base import ContentFile

    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (40, 120, 200)).save(buffer, format="JPEG", quality=95)
    photo = QueryPhoto(checksum="c" * 64, box=[20, 30, 120, 130], width=200, height=150)
    photo.image.save("q.jpg", ContentFile(buffer.getvalue()), save=True)
    shown = np.asarray(png_of(admin_client.get(f"/curation/refs/query:{photo.pk}.png")))
    factor = 320 / 150
    assert shown.shape == (320, round(200 * factor), 3)
    assert tuple(shown[round(30 * factor) + 1, round(70 * factor)]) == BOX_COLOUR
    crop = png_of(admin_client.get(f"/curation/refs/query:{photo.pk}.png?mode=crop"))
    assert crop.width == crop.height >= 320
    assert admin_client.get("/curation/refs/query:999999.png").status_code == 404


@pytest.fixture
def queue(shop, curation_benchmark):
    """40 pending catalog triplets (Shirt), 3 street ones (Bag), and 2 approved by rita."""
    catalog = shop_triplets([p.sku for p in shop[:6]], 40)
    street_items = [i for i, item in enumerate(curation_benchmark.items) if item.split == "test"][:3]
    street = Triplet.objects.bulk_create(
        [
            Triplet(
                anchor_ref=f"street:test:{i}",
                positive_ref="shop:sku-6",
                negative_ref="shop:sku-7",
                kind="street",
                source="exact",
                category="Bag",
            )
            for i in street_items
        ]
    )
    rita = make_user("rita", staff=True, superuser=False)
    from webapp.curation.services import triplet_decide

    for triplet in catalog[-2:]:
        triplet_decide(triplet=triplet, action="approve", reviewer=rita)
    return {"catalog": catalog, "street": street, "rita": rita}


def test_the_batch_endpoint_pages_through_pending_triplets_with_their_pictures_and_filters(admin_client, queue):
    first = admin_client.get("/curation/review/triplets/?limit=10").json()
    assert [t["id"] for t in first["triplets"]] == [t.pk for t in queue["catalog"][:10]]
    assert first["after"] == queue["catalog"][9].pk and first["remaining"] == 38 + 3 - 10
    shown = first["triplets"][0]
    assert shown["anchor"] == {
        "ref": queue["catalog"][0].anchor_ref,
        "url": f"/curation/refs/{queue['catalog'][0].anchor_ref}.png",
        "context_url": None,
    }
    assert shown["status"] == "pending" and shown["category"] == "Shirt" and shown["history"] == []
    following = admin_client.get(f"/curation/review/triplets/?limit=50&after={first['after']}").json()
    assert len(following["triplets"]) == 41 - 10 and following["remaining"] == 0

    street = admin_client.get("/curation/review/triplets/?kind=street").json()["triplets"]
    assert [t["id"] for t in street] == [t.pk for t in queue["street"]]
    assert street[0]["anchor"]["url"].endswith("?mode=crop") and street[0]["anchor"]["context_url"].endswith(
        "?mode=photo"
    )
    assert [t["id"] for t in admin_client.get("/curation/review/triplets/?category=Bag").json()["triplets"]] == [
        t.pk for t in queue["street"]
    ]
    by_rita = admin_client.get("/curation/review/triplets/?status=approved&reviewer=rita").json()["triplets"]
    assert [t["id"] for t in by_rita] == [t.pk for t in queue["catalog"][-2:]]
    assert by_rita[0]["history"][0]["reviewer"] == "rita" and by_rita[0]["history"][0]["action"] == "approved"
    everything = admin_client.get("/curation/review/triplets/?status=&limit=100").json()  # any status
    assert len(everything["triplets"]) == 43 and everything["remaining"] == 0
    bad = admin_client.get("/curation/review/triplets/?kind=sideways")
    assert bad.status_code == 400 and "kind 'sideways'" in bad.json()["detail"]


def test_the_review_page_shows_the_filters_and_what_is_left(admin_client, queue):
    page = admin_client.get("/curation/review/?kind=street&category=Bag")
    assert page.status_code == 200
    body = page.content.decode()
    assert '<option value="street" selected>' in body and '<option value="Bag" selected>' in body
    assert '<option value="rita">rita</option>' in body and '<option value="pending" selected>' in body
    assert '<dd id="review-remaining">3</dd>' in body
    assert (
        'data-batch-url="/curation/review/triplets/?kind=street&amp;category=Bag&amp;status=pending&amp;reviewer="'
        in body
    )
    assert "js/review.js" in body and "css/review.css" in body
    assert "kind &#x27;x&#x27; is not one of" in admin_client.get("/curation/review/?kind=x").content.decode()


def decide(client, pk, action, **extra):
    return client.post(
        f"/curation/review/triplets/{pk}/decision/",
        json.dumps({"action": action}),
        content_type="application/json",
        **extra,
    )


def test_decisions_and_undo_through_the_json_endpoints(admin_client, admin_user, queue):
    first, second = queue["catalog"][:2]
    answer = decide(admin_client, first.pk, "approve")
    assert answer.status_code == 200
    data = answer.json()
    assert data["decision"]["action"] == "approved" and data["decision"]["reviewer"] == admin_user.username
    assert data["triplet"]["status"] == "approved" and data["triplet"]["history"][0]["id"] == data["decision"]["id"]
    first.refresh_from_db()
    assert first.status == "approved" and first.reviewed_by == admin_user

    undone = admin_client.post(f"/curation/review/decisions/{data['decision']['id']}/undo/")
    assert undone.status_code == 200 and undone.json()["triplet"]["status"] == "pending"
    stale = admin_client.post(f"/curation/review/decisions/{data['decision']['id']}/undo/")
    assert stale.status_code == 409 and "not the latest" in stale.json()["detail"]
    assert admin_client.post("/curation/review/decisions/999999/undo/").status_code == 404

    bad = decide(admin_client, second.pk, "maybe")
    assert bad.status_code == 400 and "unknown action" in bad.json()["detail"]
    assert decide(admin_client, 10**9, "approve").status_code == 404
    # Form-encoded works too.
    assert (
        admin_client.post(f"/curation/review/triplets/{second.pk}/decision/", {"action": "reject"}).status_code == 200
    )

    Triplet.objects.create(
        anchor_ref=second.anchor_ref,
        positive_ref=second.negative_ref,
        negative_ref=second.positive_ref,
        kind="catalog",
        source="other",
    )
    clash = decide(admin_client, second.pk, "swap")
    assert clash.status_code == 409 and "already exists as triplet" in clash.json()["detail"]
    assert TripletDecision.objects.filter(triplet=second).count() == 1
    assert admin_client.get(f"/curation/review/triplets/{second.pk}/decision/").status_code == 405


def test_decisions_need_the_csrf_token(client, queue):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    make_user("boss", superuser=True)
    strict.login(username="boss", password="pw-12345678")
    pk = queue["catalog"][0].pk
    assert decide(strict, pk, "approve").status_code == 403
    strict.get("/curation/review/")  # the page sets the cookie the script sends back
    token = strict.cookies["csrftoken"].value
    assert decide(strict, pk, "approve", HTTP_X_CSRFTOKEN=token).status_code == 200


def test_the_admin_shows_pictures_filters_bulk_actions_and_the_decision_history(admin_client, admin_user, queue):
    street = queue["street"][0]
    body = admin_client.get("/admin/curation/triplet/?kind__exact=street").content.decode()
    assert f'<img src="/curation/refs/{street.anchor_ref}.png?mode=crop"' in body
    assert 'id="review-link"' in body and 'href="/curation/review/?kind=street"' in body
    assert body.count('name="_selected_action"') == 3

    rita_rows = admin_client.get("/admin/curation/triplet/?reviewer=rita").content.decode()
    assert rita_rows.count('name="_selected_action"') == 2
    assert (
        admin_client.get("/admin/curation/triplet/?category=Bag").content.decode().count('name="_selected_action"') == 3
    )

    chosen = [t.pk for t in queue["catalog"][:3]]
    admin_client.post("/admin/curation/triplet/", {"action": "swap_triplets", "_selected_action": chosen})
    admin_client.post("/admin/curation/triplet/", {"action": "approve_triplets", "_selected_action": chosen})
    admin_client.post("/admin/curation/triplet/", {"action": "reset_triplets", "_selected_action": chosen[:1]})
    log = TripletDecision.objects.filter(triplet_id=chosen[0]).order_by("decided_at", "id")
    assert [(d.action, d.reviewer) for d in log] == [
        ("swapped", admin_user),
        ("approved", admin_user),
        ("reset", admin_user),
    ]
    assert Triplet.objects.get(pk=chosen[1]).status == "approved"

    page = admin_client.get(f"/admin/curation/triplet/{chosen[0]}/change/").content.decode()
    assert (
        "Decision history" in page and page.count(admin_user.username) >= 3 and "Positive and negative swapped" in page
    )

    # Changing the status in the form goes through the service: logged like any decision.
    change = admin_client.post(
        f"/admin/curation/triplet/{chosen[0]}/change/",
        {
            "status": "rejected",
            "decisions-TOTAL_FORMS": "3",
            "decisions-INITIAL_FORMS": "3",
            "decisions-MIN_NUM_FORMS": "0",
            "decisions-MAX_NUM_FORMS": "1000",
            **{f"decisions-{i}-id": str(d.pk) for i, d in enumerate(log.order_by("-decided_at", "-id"))},
            **{f"decisions-{i}-triplet": str(chosen[0]) for i in range(3)},
        },
    )
    assert change.status_code == 302, change.content.decode()[:2000]
    assert TripletDecision.objects.filter(triplet_id=chosen[0]).latest("decided_at", "id").action == "rejected"
    assert admin_client.get("/admin/curation/triplet/add/").status_code == 403
