"""Shopper feedback: "not similar" marks on the product page's look-alikes and on photo-search results become one
event and one pending curation triplet per client, query and product; clicks are counted; bad input is refused
with a clear 400, floods with 429; the admin's A/B comparison shows the counts to permitted staff only.

The vector store and the embedder are the in-memory fakes (tests/fakes.py): what is tested here is the feedback,
not the search. The A/B serving itself runs against a real Milvus server in test_experiments.py.
"""

from __future__ import annotations

import copy
import io
import time
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import signing
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from tests import test_browser
from tests.fakes import FakeVectorStore, PixelEmbedder
from tests.test_pages import by_class, by_id, parse
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Product
from webapp.curation.models import QueryPhoto, Triplet
from webapp.search import experiments, registry
from webapp.search import services as search_services
from webapp.search.feedback import FEEDBACK_SOURCE, QUERY_PHOTO_MAX_SIDE, THANKS, query_photo_ensure
from webapp.search.models import ModelVersion, ServedCount, ShopperEvent

NOT_SIMILAR = "/api/feedback/not-similar/"
CLICK = "/api/feedback/click/"
COMPARISON = "/admin/search/shopperevent/experiment/"


@pytest.fixture(autouse=True)
def _isolated(settings):
    cache.clear()  # similar lists and throttle histories live in the cache
    experiments._served_pending.clear()  # other tests' pending counts must not land in this test's database
    settings.SERVED_COUNTS_FLUSH_SECONDS = 0
    settings.FEEDBACK_THROTTLE_RATES = {"feedback": "1000/minute", "feedback-click": "1000/minute"}
    yield
    experiments._served_pending.clear()
    cache.clear()


@pytest.fixture
def shop(monkeypatch, db, fashion_items):
    """Eight Fashion-MNIST products (two categories) embedded by the pixel embedder into the fake store."""
    store = FakeVectorStore()
    monkeypatch.setattr(registry, "get_vector_store", lambda: store)
    monkeypatch.setattr(registry, "embedder_for", lambda version: PixelEmbedder(version.model_version))
    registry.reset_active_version_cache()
    tops = catalog_services.category_get_or_create(name="Tops")
    shoes = catalog_services.category_get_or_create(name="Shoes")
    products, image_ids, contents = [], [], []
    for index, (content, _label) in enumerate(fashion_items[:8]):
        product, _ = catalog_services.product_upsert(
            sku=f"item-{index}",
            title=f"Item {index}",
            price=Decimal("20.00"),
            category=tops if index < 4 else shoes,
        )
        image_ids.append(catalog_services.product_image_create(product=product, content=content).pk)
        products.append(product)
        contents.append(content)
    report = search_services.images_ingest(image_ids=image_ids)
    assert sorted(report.ready) == sorted(image_ids), report
    yield SimpleNamespace(
        store=store, products=products, contents=contents, version=registry.active_version(fresh=True)
    )
    registry.reset_active_version_cache()


def upload(content: bytes, name: str = "photo.png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="image/png")


def similar(api: APIClient, product: Product, **headers) -> dict:
    response = api.get(f"/api/products/{product.pk}/similar/?k=5", **headers)
    assert response.status_code == 200, response.content
    return response.json()


def result_ids(body: dict) -> list[int]:
    return [r["product"]["id"] for r in body["results"]]


def sku_of(product_id: int) -> str:
    return Product.objects.get(pk=product_id).sku


def model_state(shop) -> tuple:
    """Everything a model change would touch: the versions and the vectors."""
    versions = list(ModelVersion.objects.order_by("pk").values_list("pk", "state", "ab_share", "updated_at"))
    return versions, copy.deepcopy(shop.store._state["collections"]), shop.store.active_collection()


# The product page ------------------------------------------------------------------------------------
def test_product_page_offers_not_similar_on_every_look_alike_and_names_the_serving_version(client, shop):
    response = client.get(shop.products[0].get_absolute_url())
    assert response.status_code == 200
    assert response.cookies.get("sessionid"), "the page starts a session: the shopper's A/B arm sticks to it"
    elements = parse(response)
    items = by_class(elements, "similar-item")
    buttons = by_class(elements, "not-similar")
    assert len(items) == 7 and len(buttons) == 7
    assert [b["attrs"]["data-product-id"] for b in buttons] == [i["attrs"]["data-product-id"] for i in items]
    assert all("hidden" in b["attrs"] and b["attrs"]["type"] == "button" for b in buttons)  # shown by feedback.js
    row = by_class(elements, "similar-row")[0]["attrs"]
    assert row["data-model-version"] == shop.version.model_version
    assert by_id(elements, "similar")["attrs"]["data-model-version"] == shop.version.model_version
    assert (row["data-feedback-url"], row["data-click-url"]) == (NOT_SIMILAR, CLICK)
    assert row["data-csrf-token"]
    # The token names exactly the shown results, in order.
    shown = [int(i["attrs"]["data-product-id"]) for i in items]
    from webapp.search.feedback import results_token_read

    ticket = results_token_read(row["data-feedback-token"])
    assert list(ticket.product_ids) == shown and ticket.query_ref == "shop:item-0"
    assert ticket.model_version == shop.version.model_version
    assert client.get("/static/js/feedback.js").status_code == 200


# "Not similar" on a product page's look-alikes ----------------------------------------------------------
def test_a_mark_records_one_event_and_one_pending_triplet_per_client_query_and_product(shop):
    api = APIClient()
    anchor = shop.products[0]
    before = model_state(shop)
    body = similar(api, anchor)
    assert body["model_version"] == shop.version.model_version
    shown = result_ids(body)
    marked = shown[2]

    response = api.post(NOT_SIMILAR, {"token": body["feedback_token"], "product": marked}, format="json")
    assert response.status_code == 201, response.content
    answer = response.json()
    assert answer["created"] is True and answer["message"] == THANKS
    assert (answer["surface"], answer["model_version"], answer["query_ref"]) == (
        "similar",
        shop.version.model_version,
        "shop:item-0",
    )
    triplet = Triplet.objects.get()
    assert answer["triplet"] == triplet.pk
    assert (triplet.anchor_ref, triplet.positive_ref, triplet.negative_ref) == (
        "shop:item-0",
        f"shop:{sku_of(shown[0])}",  # the best-ranked result the shopper did not mark
        f"shop:{sku_of(marked)}",
    )
    assert (triplet.kind, triplet.source, triplet.status) == (Triplet.Kind.FEEDBACK, FEEDBACK_SOURCE, "pending")
    assert triplet.category == "Tops"  # the anchor's category
    assert triplet.scores["negative_rank"] == 3 and triplet.scores["marks"] == 1
    event = ShopperEvent.objects.get()
    assert (event.kind, event.surface, event.product_id, event.query_ref) == (
        "not_similar",
        "similar",
        marked,
        "shop:item-0",
    )
    assert len(event.client_key) == 64 and "127.0.0.1" not in event.client_key

    # The same mark again: nothing new.
    again = api.post(NOT_SIMILAR, {"token": body["feedback_token"], "product": marked}, format="json")
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["triplet"] is None
    assert ShopperEvent.objects.count() == 1 and Triplet.objects.count() == 1

    # Marking the top result too: its triplet's positive is the best result still unmarked.
    api.post(NOT_SIMILAR, {"token": body["feedback_token"], "product": shown[0]}, format="json")
    second = Triplet.objects.get(negative_ref=f"shop:{sku_of(shown[0])}")
    assert second.positive_ref == f"shop:{sku_of(shown[1])}"

    # Another shopper saying the same thing adds an event, and a mark to the same triplet for the reviewer.
    other = similar(api, anchor, HTTP_X_CLIENT_ID="another-shopper-0001")
    response = api.post(
        NOT_SIMILAR,
        {"token": other["feedback_token"], "product": marked},
        format="json",
        HTTP_X_CLIENT_ID="another-shopper-0001",
    )
    assert response.status_code == 201
    assert ShopperEvent.objects.filter(kind="not_similar").count() == 3
    assert Triplet.objects.count() == 2 and Triplet.objects.get(pk=triplet.pk).scores["marks"] == 2
    # Never a model change: the versions and every vector are as they were.
    assert model_state(shop) == before


def test_a_page_form_mark_from_a_signed_in_shopper_needs_the_csrf_token(shop):
    user = get_user_model().objects.create_user("shopper", password="pw-123456")
    api = APIClient(enforce_csrf_checks=True)
    api.login(username="shopper", password="pw-123456")
    body = similar(api, shop.products[0])
    data = {"token": body["feedback_token"], "product": result_ids(body)[1]}
    assert api.post(NOT_SIMILAR, data, format="multipart").status_code == 403
    token = api.get(shop.products[0].get_absolute_url()).cookies["csrftoken"].value
    response = api.post(NOT_SIMILAR, data, format="multipart", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content
    # The click beacon cannot set headers: the token rides in the form, as static/js/feedback.js sends it.
    click = api.post(CLICK, {**data, "csrfmiddlewaretoken": token}, format="multipart")
    assert click.status_code == 201, click.content
    assert ShopperEvent.objects.filter(kind="click").count() == 1
    assert user.pk  # the key is the user's: the same on every device
    assert ShopperEvent.objects.values_list("client_key", flat=True).distinct().count() == 1


# "Not similar" on a photo search -------------------------------------------------------------------------
def test_a_photo_search_stores_no_photo_until_a_result_is_marked(shop, settings):
    api = APIClient()
    photo = shop.contents[5]
    response = api.post("/api/search/", {"image": upload(photo), "k": 5}, format="multipart")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"] == shop.version.model_version and body["feedback_token"]
    assert body["query"]["kind"] == "whole_photo"
    assert not QueryPhoto.objects.exists() and not (settings.MEDIA_ROOT / "queries").exists()
    shown = result_ids(body)
    token = body["feedback_token"]

    missing = api.post(NOT_SIMILAR, {"token": token, "product": shown[1]}, format="multipart")
    assert missing.status_code == 400 and "same photo" in missing.json()["image"][0]
    other = api.post(
        NOT_SIMILAR, {"token": token, "product": shown[1], "image": upload(shop.contents[6])}, format="multipart"
    )
    assert other.status_code == 400 and "not the photo" in other.json()["image"][0]
    assert not QueryPhoto.objects.exists() and not ShopperEvent.objects.exists()

    marked = api.post(NOT_SIMILAR, {"token": token, "product": shown[1], "image": upload(photo)}, format="multipart")
    assert marked.status_code == 201, marked.content
    stored = QueryPhoto.objects.get()
    assert marked.json()["query_ref"] == stored.ref and stored.box is None  # the whole photo was searched
    triplet = Triplet.objects.get()
    assert (triplet.anchor_ref, triplet.positive_ref, triplet.negative_ref) == (
        stored.ref,
        f"shop:{sku_of(shown[0])}",
        f"shop:{sku_of(shown[1])}",
    )
    assert triplet.category == Product.objects.get(pk=shown[0]).category.name  # no detected class: the positive's
    repeat = api.post(NOT_SIMILAR, {"token": token, "product": shown[1], "image": upload(photo)}, format="multipart")
    assert repeat.status_code == 200 and repeat.json()["created"] is False
    assert (QueryPhoto.objects.count(), Triplet.objects.count(), ShopperEvent.objects.count()) == (1, 1, 1)

    # The same photo searched at a box the shopper drew is another query, with its box.
    boxed = api.post("/api/search/", {"image": upload(photo), "k": 5, "box": "2,3,20,25"}, format="multipart").json()
    assert boxed["query"]["kind"] == "client"
    api.post(
        NOT_SIMILAR,
        {"token": boxed["feedback_token"], "product": result_ids(boxed)[1], "image": upload(photo)},
        format="multipart",
    )
    assert QueryPhoto.objects.count() == 2
    assert QueryPhoto.objects.exclude(pk=stored.pk).get().box == [2, 3, 20, 25]


def test_a_kept_search_photo_is_upright_small_and_free_of_metadata(db, settings):
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 3000, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show it upright
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # a GPS latitude, which must not be kept
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    stored = query_photo_ensure(content=buffer.getvalue(), box=(100, 200, 1100, 2200))
    assert (stored.width, stored.height) == (QUERY_PHOTO_MAX_SIDE // 2, QUERY_PHOTO_MAX_SIDE)  # upright, scaled
    assert stored.box == [34, 68, 375, 751]  # the box scaled with it (1500x3000 upright -> 512x1024)
    with stored.image.open("rb") as handle:
        kept = Image.open(io.BytesIO(handle.read()))
        assert not kept.getexif() and kept.size == (512, 1024)
    assert query_photo_ensure(content=buffer.getvalue(), box=(100, 200, 1100, 2200)).pk == stored.pk


# Clicks ---------------------------------------------------------------------------------------------------
def test_clicks_are_counted_for_the_version_that_served_the_result(shop):
    api = APIClient()
    body = similar(api, shop.products[0])
    for product_id in result_ids(body)[:2]:
        response = api.post(CLICK, {"token": body["feedback_token"], "product": product_id}, format="multipart")
        assert response.status_code == 201, response.content
        assert response.json() == {"surface": "similar", "model_version": shop.version.model_version}
    search = api.post("/api/search/", {"image": upload(shop.contents[3]), "k": 5}, format="multipart").json()
    api.post(CLICK, {"token": search["feedback_token"], "product": result_ids(search)[0]}, format="json")
    clicks = ShopperEvent.objects.filter(kind="click")
    assert clicks.filter(surface="similar").count() == 2 and clicks.filter(surface="search").count() == 1
    assert clicks.get(surface="search").query_ref.startswith("photo:")  # a click keeps no photo
    assert not QueryPhoto.objects.exists() and not Triplet.objects.exists()
    served = {(row.surface, row.served) for row in ServedCount.objects.filter(model_version=shop.version.model_version)}
    assert served == {("similar", 1), ("search", 1)}


# Bad input -------------------------------------------------------------------------------------------------
def test_invalid_feedback_is_a_clear_400_and_records_nothing(shop, monkeypatch):
    api = APIClient()
    body = similar(api, shop.products[0])
    token, shown = body["feedback_token"], result_ids(body)
    not_shown = next(p.pk for p in shop.products[1:] if p.pk not in shown)

    def post(data, url=NOT_SIMILAR):
        response = api.post(url, data, format="json")
        assert response.status_code == 400, response.content
        return response.json()

    assert "not among these results" in post({"token": token, "product": not_shown})["product"][0]
    assert "No product with id 999999" in post({"token": token, "product": 999999})["product"][0]
    assert "not valid" in post({"token": token[:-3] + "abc", "product": shown[0]})["token"][0]
    assert "not valid" in post({"token": "made-up", "product": shown[0]})["token"][0]
    assert set(post({"token": token})) == {"product"}
    assert set(post({"product": shown[0]})) == {"token"}
    assert "not among these results" in post({"token": token, "product": not_shown}, url=CLICK)["product"][0]

    real_timestamp = signing.TimestampSigner.timestamp
    monkeypatch.setattr(
        signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(int(time.time()) - 2 * 24 * 3600)
    )
    cache.clear()  # a fresh similar list, issued two days ago
    old = similar(api, shop.products[0])["feedback_token"]
    monkeypatch.setattr(signing.TimestampSigner, "timestamp", real_timestamp)
    assert "search again" in post({"token": old, "product": shown[0]})["token"][0]
    assert not ShopperEvent.objects.exists() and not Triplet.objects.exists()


def test_feedback_is_rate_limited_per_client(shop, settings):
    settings.FEEDBACK_THROTTLE_RATES = {"feedback": "3/minute", "feedback-click": "2/minute"}
    api = APIClient()
    body = similar(api, shop.products[0])
    codes = [
        api.post(NOT_SIMILAR, {"token": body["feedback_token"], "product": pid}, format="json").status_code
        for pid in result_ids(body)[:4]
    ]
    assert codes == [201, 201, 201, 429]
    assert ShopperEvent.objects.count() == 3
    clicks = [
        api.post(CLICK, {"token": body["feedback_token"], "product": result_ids(body)[0]}, format="json").status_code
        for _ in range(3)
    ]
    assert clicks == [201, 201, 429]  # its own budget


# The admin comparison ---------------------------------------------------------------------------------------
def test_an_anonymous_shopper_gives_feedback_but_cannot_see_the_comparison(client, shop):
    body = similar(APIClient(), shop.products[0])
    response = client.post(NOT_SIMILAR, {"token": body["feedback_token"], "product": result_ids(body)[0]})
    assert response.status_code == 201
    page = client.get(COMPARISON)
    assert page.status_code == 302 and "/admin/login/" in page["Location"]
    staff = get_user_model().objects.create_user("clerk", password="pw-123456", is_staff=True)
    client.force_login(staff)
    assert client.get(COMPARISON).status_code == 403  # staff, but not allowed to view shopper events


def test_the_comparison_shows_each_versions_counts_beside_its_offline_recall(client, shop):
    active = shop.version
    ModelVersion.objects.filter(pk=active.pk).update(metrics={"final": {"test": {"recall@1": 0.25, "recall@5": 0.5}}})
    candidate = ModelVersion.objects.create(
        model_version="candidate-v2",
        kind=ModelVersion.Kind.VISNET,
        state=ModelVersion.State.CANDIDATE,
        ab_share=0.3,
        metrics={"final": {"test": {"recall@1": 0.52, "recall@5": 0.71, "recall@20": 0.83}}},
    )
    for _ in range(40):
        experiments.served_record(version=active, surface="similar")
    for _ in range(10):
        experiments.served_record(version=candidate, surface="similar")
    for _ in range(3):
        experiments.served_record(version=candidate, surface="search")
    for index, (version, kind) in enumerate(
        [(active, "click")] * 8
        + [(active, "not_similar")] * 4
        + [(candidate, "click")] * 4
        + [(candidate, "not_similar")]
    ):
        ShopperEvent.objects.create(
            kind=kind,
            surface="similar",
            model_version=version.model_version,
            client_key=f"k{index}",
            query_ref="shop:item-0",
            product=shop.products[1],
        )
    viewer = get_user_model().objects.create_user("analyst", password="pw-123456", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_shopperevent"))
    client.force_login(viewer)
    response = client.get(COMPARISON)
    assert response.status_code == 200
    elements = parse(response)

    def row(role, surface):
        arm = next(e for e in elements if e["attrs"].get("id") == f"arm-{role}")
        assert arm["attrs"]["data-model-version"] == {"active": active, "candidate": candidate}[role].model_version
        start = elements.index(arm)
        return next(e for e in elements[start:] if f"surface-{surface}" in e["attrs"].get("class", "")), arm

    active_row, active_arm = row("active", "similar")
    assert (
        active_row["attrs"]["data-served"],
        active_row["attrs"]["data-clicks"],
        active_row["attrs"]["data-marks"],
    ) == (
        "40",
        "8",
        "4",
    )
    assert "20.00%" in active_row["text"] and "10.00%" in active_row["text"]  # click-through 8/40, "not similar" 4/40
    candidate_row, candidate_arm = row("candidate", "similar")
    assert [candidate_row["attrs"][k] for k in ("data-served", "data-clicks", "data-marks")] == ["10", "4", "1"]
    assert "40.00%" in candidate_row["text"] and "10.00%" in candidate_row["text"]
    search_row, _ = row("candidate", "search")
    assert search_row["attrs"]["data-served"] == "3"
    assert "30% of shoppers" in candidate_arm["text"]
    assert "recall@1 0.520" in candidate_arm["text"] and "recall@20 0.830" in candidate_arm["text"]
    assert "recall@1 0.250" in active_arm["text"]
    differences = by_id(elements, "differences")
    assert differences is not None and "+20.00 points" in differences["text"]  # 40% against 20% click-through
    # The comparison links to the version admin's actions (activate, roll back...) only for those allowed to run them.
    assert not by_class(elements, "version-action")
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["activate_modelversion", "view_modelversion"]))
    viewer = get_user_model().objects.get(pk=viewer.pk)
    client.force_login(viewer)
    elements = parse(client.get(COMPARISON))
    forms = by_class(elements, "version-action")
    assert len(forms) == 2 and all(f["attrs"]["action"] == "/admin/search/modelversion/" for f in forms)
    options = {e["attrs"]["value"] for e in elements if e["tag"] == "option"}
    assert {"activate_versions", "rollback_to_version"} <= options


# In a real browser -----------------------------------------------------------------------------------------
browser = test_browser.browser  # the search page's browser fixture (Chromium, headless)


@pytest.mark.browser
def test_a_shopper_marks_results_not_similar_and_clicks_through_in_a_browser(live_server, browser, shop, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.conftest import wait_until

    wait = WebDriverWait(browser, 30)
    browser.get(f"{live_server.url}{shop.products[0].get_absolute_url()}")
    items = browser.find_elements(By.CSS_SELECTOR, ".similar-item")
    button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".similar-item .not-similar")))
    assert button.text == "Not similar" and len(items) == 7
    button.click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, ".similar-item .feedback-status"), THANKS))
    marked = int(items[0].get_attribute("data-product-id"))
    assert ShopperEvent.objects.get(kind="not_similar").product_id == marked
    assert Triplet.objects.get().negative_ref == f"shop:{sku_of(marked)}"
    assert not items[0].find_element(By.CSS_SELECTOR, ".not-similar").is_displayed()
    assert "is-marked" in items[0].get_attribute("class").split()
    browser.save_screenshot(str(tmp_path / "product-feedback.png"))

    # Following a look-alike records the click (a beacon) on the way.
    followed = int(items[1].get_attribute("data-product-id"))
    items[1].find_element(By.CSS_SELECTOR, "a.card").click()
    wait.until(EC.url_contains(f"/products/{followed}/"))
    wait_until(lambda: ShopperEvent.objects.filter(kind="click", product_id=followed).exists(), timeout=10)

    # A photo search: the results come from the API, each with its button; a mark sends the photo along.
    photo = tmp_path / "query.png"
    photo.write_bytes(shop.contents[2])
    browser.get(f"{live_server.url}/search/")
    browser.find_element(By.CSS_SELECTOR, "input[type=file][name=image]").send_keys(str(photo))
    results = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results[data-feedback-token]")))
    assert results.get_attribute("data-model-version") == shop.version.model_version
    second = results.find_elements(By.CSS_SELECTOR, ".result")[1]
    second.find_element(By.CSS_SELECTOR, ".not-similar").click()
    wait.until(lambda _: THANKS in second.text)
    stored = QueryPhoto.objects.get()
    event = ShopperEvent.objects.get(kind="not_similar", surface="search")
    assert event.query_ref == stored.ref and event.product_id == int(second.get_attribute("data-product-id"))
    browser.save_screenshot(str(tmp_path / "feedback.png"))
