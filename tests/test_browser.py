"""End to end in headless Chromium: upload a real Fashion-MNIST photo on /search/, get the same product first."""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from pathlib import Path

import pytest

from tests.conftest import require_service

pytestmark = pytest.mark.browser

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
