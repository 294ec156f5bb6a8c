"""End to end in headless Chromium: upload a real Fashion-MNIST photo on /search/, get the same product first;
upload a street photo with two items, see both boxed, search the second one by clicking its box."""

from __future__ import annotations

import base64
import io
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_service
from tests.search_checks import iou

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = ROOT / "models" / "detector-default"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
)


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        require_service("chromium/chromedriver not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def media_served_from_test_root(settings, monkeypatch):
    """webapp/urls.py binds the media `serve` view's document_root at import; point it at this test's MEDIA_ROOT."""
    from webapp import urls

    for pattern in urls.urlpatterns:
        if "document_root" in getattr(pattern, "default_args", {}):
            monkeypatch.setitem(pattern.default_args, "document_root", str(settings.MEDIA_ROOT))


def all_images_loaded(driver) -> bool:
    return driver.execute_script(
        "return Array.from(document.images).every(img => img.hidden || (img.complete && img.naturalWidth > 0));"
    )


def test_visual_search_finds_the_uploaded_product_first(
    live_server, browser, vector_store, fashion_items, tmp_path, monkeypatch, media_served_from_test_root
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from webapp.catalog.services import category_get_or_create, product_image_create, product_upsert
    from webapp.search.services import images_ingest

    # This test ingests synchronously; queue nothing for a worker (none runs here).
    monkeypatch.setattr("webapp.search.dispatch.ingest_queue", lambda image_ids, **kwargs: 0)

    # One item of each of the first five labels in the Fashion-MNIST test split.
    picked, labels = [], set()
    for content, label in fashion_items:
        if label not in labels:
            labels.add(label)
            picked.append((content, label))
        if len(picked) == 5:
            break
    products, image_ids = [], []
    for index, (content, label) in enumerate(picked):
        category = category_get_or_create(name=f"Label {label}")
        product, _ = product_upsert(
            sku=f"browser-{index}",
            title=f"Browser item {index}",
            price=Decimal(f"{19 + 10 * index}.99"),
            category=category,
            brand="Kestrel",
            attributes={"label": label},
        )
        image_ids.append(product_image_create(product=product, content=content).pk)
        products.append(product)
    report = images_ingest(image_ids=image_ids)
    assert sorted(report.ready) == sorted(image_ids), report

    target_index = 2
    target = products[target_index]
    query = tmp_path / "query.png"
    query.write_bytes(picked[target_index][0])

    wait = WebDriverWait(browser, 60)
    browser.get(f"{live_server.url}/search/")

    # Dropping a file on the zone puts it into the real file input (what the form submits).
    dropped = browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        const zone = document.getElementById("dropzone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        const highlighted = zone.classList.contains("is-dragover");
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        const input = document.querySelector("input[type=file][name=image]");
        return [highlighted, input.files.length, input.files[0].name, zone.classList.contains("is-dragover")];
        """,
        base64.b64encode(picked[0][0]).decode(),
    )
    assert dropped == [True, 1, "dropped.png", False]
    wait.until(EC.visibility_of_element_located((By.ID, "upload-preview")))
    assert "dropped.png" in browser.find_element(By.CSS_SELECTOR, "[data-file-name]").text

    browser.get(f"{live_server.url}/search/")
    file_input = browser.find_element(By.CSS_SELECTOR, "input[type=file][name=image]")
    file_input.send_keys(str(query))
    # The page script shows a local preview of the chosen file before anything is sent.
    wait.until(EC.visibility_of_element_located((By.ID, "upload-preview")))
    browser.find_element(By.ID, "search-submit").click()

    results = wait.until(EC.presence_of_element_located((By.ID, "results")))
    rows = results.find_elements(By.CSS_SELECTOR, ".result")
    assert len(rows) == len(products)
    first = rows[0]
    assert int(first.get_attribute("data-product-id")) == target.pk
    assert target.title in first.text
    scores = [float(row.get_attribute("data-score")) for row in rows]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99
    shown = [row.find_element(By.CSS_SELECTOR, ".score-value").text for row in rows]
    assert all(re.fullmatch(r"-?\d\.\d{3}", text) for text in shown), shown
    assert shown[0] == f"{scores[0]:.3f}"
    assert not browser.find_elements(By.ID, "search-error")
    wait.until(all_images_loaded)
    browser.save_screenshot(str(tmp_path / "visual_search.png"))

    # Follow the best match to its product page: its look-alikes are the other products.
    first.find_element(By.CSS_SELECTOR, "a.card").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".similar-item")))
    assert browser.current_url.endswith(target.get_absolute_url())
    similar = {int(e.get_attribute("data-product-id")) for e in browser.find_elements(By.CSS_SELECTOR, ".similar-item")}
    assert similar == {p.pk for p in products} - {target.pk}
    wait.until(all_images_loaded)
    browser.save_screenshot(str(tmp_path / "product.png"))

    browser.get(f"{live_server.url}/")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".product-card")) == len(products)
    wait.until(all_images_loaded)
    browser.save_screenshot(str(tmp_path / "catalog.png"))


# A street photo with two items -----------------------------------------------------------------------------
STREET_SIZE = 320
ITEM_SIDE = 110
# Where the two items go (top-left corners): apart, like two garments in one street photo.
ITEM_PLACES = ((28, 36), (178, 168))
ITEM_COLOURS = ((0.16, 0.24, 0.55), (0.70, 0.18, 0.16))  # navy, brick red


def paste_item(photo: np.ndarray, png: bytes, corner: tuple[int, int], colour) -> tuple[int, int, int, int]:
    """Paste a catalog item (dark on white) the way the street-to-shop benchmark does: the item's own intensity is
    its alpha mask, recoloured and shaded, the background showing around it. Returns its box (x1, y1, x2, y2)."""
    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L").resize((ITEM_SIDE, ITEM_SIDE), Image.Resampling.BICUBIC)
    intensity = (255 - np.asarray(grey, dtype=np.float32)) / 255.0
    alpha = np.clip(intensity / 0.25, 0.0, 1.0)[..., None]
    shade = np.clip(1.15 - 0.6 * intensity, 0.0, 1.0)[..., None]
    rgb = np.asarray(colour, dtype=np.float32) * shade * 255.0
    x, y = corner
    region = photo[y : y + ITEM_SIDE, x : x + ITEM_SIDE]
    photo[y : y + ITEM_SIDE, x : x + ITEM_SIDE] = region * (1 - alpha) + rgb * alpha
    ys, xs = np.nonzero(alpha[..., 0] > 0.1)
    return x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1


def two_item_street_photo(items: list[tuple[bytes, int]]) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """Two catalog items at ~110 px on a 320x320 real textured photo (a background from the benchmark's test
    pool), as JPEG, with each item's box."""
    from ml.data.backgrounds import load_background

    background = load_background("skimage/gravel")
    left, top = (background.width - STREET_SIZE) // 2, (background.height - STREET_SIZE) // 2
    photo = np.asarray(background.crop((left, top, left + STREET_SIZE, top + STREET_SIZE)), dtype=np.float32).copy()
    boxes = [
        paste_item(photo, png, corner, colour)
        for (png, _), corner, colour in zip(items, ITEM_PLACES, ITEM_COLOURS, strict=True)
    ]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), boxes


STREET_LABELS = (1, 8)  # a trouser and a bag: two items no detector or embedder can mistake for each other


@pytest.fixture
def street_catalog(vector_store, fashion_items, monkeypatch):
    """One product per Fashion-MNIST label (the two street items among them), ingested synchronously."""
    from ml.data.fashion_mnist import CLASS_NAMES
    from webapp.catalog.services import category_get_or_create, product_image_create, product_upsert
    from webapp.search.services import images_ingest

    monkeypatch.setattr("webapp.search.dispatch.ingest_queue", lambda image_ids, **kwargs: 0)
    picked = {}
    for content, label in fashion_items:
        picked.setdefault(label, content)
    products, image_ids = {}, []
    for label, content in sorted(picked.items()):
        product, _ = product_upsert(
            sku=f"street-{label}",
            title=f"{CLASS_NAMES[label]} {label}",
            price=Decimal(f"{20 + label}.00"),
            category=category_get_or_create(name=CLASS_NAMES[label]),
            brand="Kestrel",
            attributes={"label": label},
        )
        image_ids.append(product_image_create(product=product, content=content).pk)
        products[label] = product
    report = images_ingest(image_ids=image_ids)
    assert sorted(report.ready) == sorted(image_ids), report
    items = [(picked[label], label) for label in STREET_LABELS]
    return products, items


CSS = "css selector"  # selenium's By.CSS_SELECTOR (selenium is imported inside the tests)


def result_ids(driver) -> list[int]:
    return [int(row.get_attribute("data-product-id")) for row in driver.find_elements(CSS, "#results .result")]


def ranks_before(ids: list[int], wanted: int, other: int) -> bool:
    """`wanted` is in the results, ahead of `other` when that is there at all (a category filter may drop it)."""
    return wanted in ids and (other not in ids or ids.index(wanted) < ids.index(other))


def settled(driver):
    """The newest search has answered: results or a message, nothing in flight."""
    return driver.execute_script(
        "const stage = document.getElementById('photo-stage');"
        "return !stage.classList.contains('is-busy') &&"
        " (!!document.getElementById('results') || !document.getElementById('search-message').hidden);"
    )


def check_two_box_search(browser, live_server, street_catalog, tmp_path, screenshot: Path | None = None):
    """The page flow, whatever found the boxes (shared with a development run that stubs the detector)."""
    from selenium.webdriver.support.ui import WebDriverWait

    products, items = street_catalog
    photo, truth = two_item_street_photo(items)
    path = tmp_path / "street.jpg"
    path.write_bytes(photo)
    wait = WebDriverWait(browser, 90)

    browser.get(f"{live_server.url}/search/")
    browser.find_element(CSS, "input[type=file][name=image]").send_keys(str(path))
    # Choosing the photo searches at once: the photo with every item boxed, results for the most confident one.
    wait.until(settled)
    assert browser.find_element(CSS, "#search-message").get_attribute("hidden"), browser.find_element(
        CSS, "#search-message"
    ).text
    boxes = browser.find_elements(CSS, "#box-layer .box")
    assert len(boxes) == 2, [b.get_attribute("aria-label") for b in boxes]
    shown = [tuple(int(v) for v in b.get_attribute("data-box").split(",")) for b in boxes]
    # Each detected box is one of the two items (the first is the most confident).
    matched = [max(range(2), key=lambda t: iou(box, truth[t])) for box in shown]
    assert sorted(matched) == [0, 1], (shown, truth)
    assert all(iou(box, truth[t]) > 0.5 for box, t in zip(shown, matched, strict=True)), (shown, truth)
    labels = [b.get_attribute("aria-label") for b in boxes]
    assert all(re.fullmatch(r".+, \d{1,3}%", label) for label in labels), labels
    assert [b.get_attribute("aria-pressed") for b in boxes] == ["true", "false"]
    summary = browser.find_element(CSS, "#query-summary")
    assert summary.get_attribute("data-kind") == "detected" and summary.get_attribute("data-index") == "0"
    assert labels[0].split(",")[0] in summary.text
    first = result_ids(browser)
    assert first
    first_item, second_item = (products[STREET_LABELS[t]].pk for t in matched)
    assert ranks_before(first, first_item, second_item), (first, first_item, second_item)

    # The boxes sit on the items as drawn: the layer covers the photo, the box's rectangle scales with it.
    geometry = browser.execute_script(
        "const img = document.getElementById('stage-photo').getBoundingClientRect();"
        "const box = document.querySelector('#box-layer .box').getBoundingClientRect();"
        "return [img.left, img.top, img.width, box.left, box.top, box.width];"
    )
    scale = geometry[2] / 320
    assert (
        abs(geometry[3] - (geometry[0] + shown[0][0] * scale)) < 2
        and abs(geometry[5] - (shown[0][2] - shown[0][0]) * scale) < 2
    )
    if screenshot is not None:
        browser.save_screenshot(str(screenshot.with_name(screenshot.stem + "-first.png")))

    # Clicking the second box searches that item, without a page reload.
    browser.execute_script("window.__samePage = true;")
    old_list = browser.find_element(CSS, "#results")
    boxes[1].click()
    wait.until(lambda d: d.find_elements(CSS, "#results") and d.find_element(CSS, "#results") != old_list)
    wait.until(settled)
    assert browser.execute_script("return window.__samePage === true;")
    assert [b.get_attribute("aria-pressed") for b in boxes] == ["false", "true"]
    assert "is-selected" in boxes[1].get_attribute("class").split()
    summary = browser.find_element(CSS, "#query-summary")
    # The page sent the second box back: the API searched it as that detected item.
    assert summary.get_attribute("data-kind") == "detected" and summary.get_attribute("data-index") == "1"
    assert labels[1].split(",")[0] in summary.text
    second = result_ids(browser)
    assert second and second != first
    assert ranks_before(second, second_item, first_item), (second, first_item, second_item)
    wait.until(all_images_loaded)
    if screenshot is not None:
        browser.save_screenshot(str(screenshot))
    return first, second


@pytest.mark.engine_agnostic
@pytest.mark.skipif(
    not DETECTOR.exists(), reason="no detector artifact at models/detector-default (python -m ml.detection.train)"
)
def test_a_photo_with_two_items_shows_two_boxes_and_clicking_the_second_searches_it(
    live_server, browser, street_catalog, localize_worker, tmp_path, media_served_from_test_root
):
    """Against the real API: the real detector in a real `localize` worker finds the two items."""
    check_two_box_search(browser, live_server, street_catalog, tmp_path, screenshot=tmp_path / "two_boxes.png")


@pytest.mark.engine_agnostic
def test_without_item_detection_the_page_says_so_and_searches_the_whole_photo_or_a_box_you_draw(
    live_server, browser, street_catalog, settings, tmp_path, media_served_from_test_root
):
    """The real API with no localize worker: busy (503) first; then the whole photo, a box drawn and moved with
    the keyboard and dragged with the pointer, the filters, and a bad image - all without a page reload."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    settings.LOCALIZE_TIMEOUT_SECONDS = 0.5  # nobody answers on the localize queue: fail fast
    products, items = street_catalog
    photo, _ = two_item_street_photo(items)
    path = tmp_path / "street.jpg"
    path.write_bytes(photo)
    wait = WebDriverWait(browser, 60)

    def search_and_wait(action):
        old = browser.find_elements(CSS, "#results")
        action()
        wait.until(lambda d: d.find_elements(CSS, "#results") and d.find_elements(CSS, "#results") != old)
        wait.until(settled)
        assert browser.find_element(CSS, "#search-message").get_attribute("hidden")
        return browser.find_element(CSS, "#query-summary")

    browser.get(f"{live_server.url}/search/")
    browser.execute_script("window.__samePage = true;")
    browser.find_element(CSS, "input[type=file][name=image]").send_keys(str(path))
    wait.until(settled)
    message = browser.find_element(CSS, "#search-message")
    assert message.get_attribute("data-kind") == "busy" and "no localization worker answered" in message.text
    assert browser.find_elements(CSS, "#search-retry") and not browser.find_elements(CSS, "#results")
    browser.save_screenshot(str(tmp_path / "busy.png"))

    summary = search_and_wait(browser.find_element(CSS, "#search-whole").click)
    assert summary.get_attribute("data-kind") == "whole_photo" and "whole photo" in summary.text
    assert "unavailable" in browser.find_element(CSS, "#query-note").text
    assert browser.find_element(CSS, "#search-whole").get_attribute("aria-pressed") == "true"
    assert not browser.find_elements(CSS, "#box-layer .box") and len(result_ids(browser)) == len(products)

    # A new box: focused, moved with the arrow keys, grown with Shift+arrows, searched with Enter.
    browser.find_element(CSS, "#add-box").click()
    box = browser.switch_to.active_element
    assert "box" in box.get_attribute("class").split() and box.get_attribute("data-box") == "80,80,240,240"
    box.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_UP, Keys.SHIFT + Keys.ARROW_DOWN)
    x1, y1, x2, y2 = (int(v) for v in box.get_attribute("data-box").split(","))
    assert x1 > 80 and x2 - x1 == 160 and y1 < 80 and y2 - y1 > 160, (x1, y1, x2, y2)
    summary = search_and_wait(lambda: box.send_keys(Keys.ENTER))
    assert summary.get_attribute("data-kind") == "client"
    assert summary.get_attribute("data-box") == box.get_attribute("data-box") == f"{x1},{y1},{x2},{y2}"
    assert box.get_attribute("aria-pressed") == "true"
    assert browser.find_element(CSS, "#search-whole").get_attribute("aria-pressed") == "false"

    # Dragged with the pointer: the search runs again for where it was dropped.
    summary = search_and_wait(
        lambda: ActionChains(browser).click_and_hold(box).move_by_offset(-30, 45).release().perform()
    )
    moved = tuple(int(v) for v in box.get_attribute("data-box").split(","))
    assert moved[0] < x1 and moved[1] > y1 and moved[2] - moved[0] == x2 - x1, moved
    assert summary.get_attribute("data-kind") == "client" and summary.get_attribute("data-box") == ",".join(
        map(str, moved)
    )

    # The filters apply to the next search (and changing one searches again).
    price = browser.find_element(CSS, "input[name=max_price]")
    summary = search_and_wait(lambda: price.send_keys("24", Keys.TAB))
    assert summary.get_attribute("data-box") == ",".join(map(str, moved))
    assert set(result_ids(browser)) == {p.pk for p in products.values() if p.price <= 24}
    browser.save_screenshot(str(tmp_path / "drawn_box.png"))

    # Not an image: the API's reason is shown, and the old results go.
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"just some text, definitely not pixels\n" * 20)
    browser.find_element(CSS, "input[type=file][name=image]").send_keys(str(junk))
    wait.until(lambda d: d.find_element(CSS, "#search-message").get_attribute("data-kind") == "invalid")
    wait.until(settled)
    assert "not an image" in browser.find_element(CSS, "#search-message").text
    assert not browser.find_elements(CSS, "#results") and not browser.find_elements(CSS, ".results-section")
    assert browser.execute_script("return window.__samePage === true;")
