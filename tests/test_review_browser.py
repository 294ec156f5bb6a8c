"""In headless Chromium: a merchandiser logs in and reviews triplets by keyboard only - approve, reject, swap then
approve, skip, undo - at the speed of the keys; every decision is stored with who and when. Prints the rate."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from tests import test_browser, test_review
from tests.test_curation import add_products, make_user, shop_triplets
from webapp.curation.models import Triplet, TripletDecision
from webapp.curation.roles import MERCHANDISER_GROUP, merchandiser_group_ensure

pytestmark = pytest.mark.browser

# The browser and media fixtures of the search page's browser tests, and the tiny street benchmark.
browser = test_browser.browser
media_served_from_test_root = test_browser.media_served_from_test_root
tiny_benchmark = test_review.tiny_benchmark
curation_benchmark = test_review.curation_benchmark

DECISIONS = 64  # keys that decide (approve, reject, swap); the sitting also skips once and undoes once
MIN_RATE_PER_MINUTE = 300  # 0.2 s a decision: a page that reloaded or fetched between triplets would not reach it
CARD_STATE = """
const card = document.getElementById('review-card');
const root = document.getElementById('review');
return [card.dataset.tripletId || '', card.dataset.ready === 'true',
        document.getElementById('ref-positive-name').textContent, root.dataset.inflight, root.dataset.saved,
        document.getElementById('review-count').textContent];
"""


@pytest.fixture
def review_queue(transactional_db, fashion_items, curation_benchmark):
    """Two street triplets first, then 80 catalog ones over twelve demo-like products."""
    products = add_products([(f"sku-{i}", png, "Shirt") for i, (png, _) in enumerate(fashion_items[:12])])
    street_items = [i for i, item in enumerate(curation_benchmark.items) if item.split == "test"][:2]
    Triplet.objects.bulk_create(
        [
            Triplet(
                anchor_ref=f"street:test:{i}",
                positive_ref="shop:sku-0",
                negative_ref="shop:sku-1",
                kind="street",
                source="exact",
                category="Shirt",
            )
            for i in street_items
        ]
    )
    shop_triplets([p.sku for p in products], 80)
    merchandiser_group_ensure()
    make_user("merch", staff=True, group=MERCHANDISER_GROUP)
    return list(Triplet.objects.order_by("id").values_list("pk", flat=True))


def test_a_merchandiser_reviews_by_keyboard_at_the_speed_of_the_keys(
    live_server, browser, media_served_from_test_root, review_queue, tmp_path
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30, poll_frequency=0.01)
    browser.get(f"{live_server.url}/curation/review/")
    assert "/admin/login/" in browser.current_url  # the page asks who is reviewing
    browser.find_element(By.ID, "id_username").send_keys("merch")
    browser.find_element(By.ID, "id_password").send_keys("pw-12345678", Keys.ENTER)
    wait.until(lambda d: d.current_url.endswith("/curation/review/"))

    def state():
        return browser.execute_script(CARD_STATE)

    def shown(previous_id="", previous_positive=""):
        """Wait until a triplet other than `previous_id` (or with another positive) is on screen, pictures decoded."""
        return wait.until(
            lambda d: (s := state())[1] and s[0] and (s[0] != previous_id or s[2] != previous_positive) and s
        )

    first = shown()
    assert int(first[0]) == review_queue[0]
    # A street anchor: its crop, large, with the whole photo and its box beside it; every picture large enough.
    sizes = browser.execute_script(
        "return ['ref-anchor', 'ref-anchor-context', 'ref-positive', 'ref-negative'].map(id => {"
        " const img = document.getElementById(id);"
        " return [img.naturalWidth, Math.round(img.getBoundingClientRect().width), img.hidden]; });"
    )
    anchor, context, positive, negative = sizes
    assert anchor[0] >= 320 and positive[0] == negative[0] == 336 and context == [320, context[1], False], sizes
    assert min(anchor[1], positive[1], negative[1]) >= 256, sizes
    browser.save_screenshot(str(tmp_path / "review-street.png"))

    keys = ActionChains(browser)

    def press(key):
        keys.send_keys(key).perform()
        keys.reset_actions()

    press("?")
    wait.until(lambda d: d.execute_script("return document.getElementById('review-help').open"))
    press(Keys.ESCAPE)
    wait.until(lambda d: not d.execute_script("return document.getElementById('review-help').open"))

    expected_status: dict[int, str] = {}
    expected_actions: dict[int, list[str]] = {}
    swapped: dict[int, str] = {}
    skipped = undone = None
    decisions = 0
    current = first
    latencies = []
    started = time.monotonic()
    decided_from = timezone.now()
    step = 0
    while decisions < DECISIONS:
        triplet_id = int(current[0])
        if step == 5:  # skip one: it stays pending
            skipped = triplet_id
            press("n")
            current = shown(current[0])
            step += 1
            continue
        if step % 9 == 3:  # the negative is the better match: swap, then approve the swapped triplet
            old_negative = browser.find_element(By.ID, "ref-negative-name").text
            t0 = time.monotonic()
            press("s")
            current = shown(current[0], current[2])
            latencies.append(time.monotonic() - t0)
            assert current[2] == old_negative and int(current[0]) == triplet_id
            swapped[triplet_id] = old_negative
            expected_actions.setdefault(triplet_id, []).append("swapped")
            decisions += 1
        key, status = ("r", "rejected") if step % 4 == 1 else ("a", "approved")
        t0 = time.monotonic()
        press(key)
        current = shown(current[0])
        latencies.append(time.monotonic() - t0)
        expected_actions.setdefault(triplet_id, []).append(status)
        expected_status[triplet_id] = status
        decisions += 1
        if step == 20:  # changed my mind: undo brings it back, then reject it
            undone = triplet_id
            press("u")
            current = shown(current[0])
            assert int(current[0]) == triplet_id
            expected_actions[triplet_id].append("reset")
            press("r")
            current = shown(current[0])
            expected_actions[triplet_id].append("rejected")
            expected_status[triplet_id] = "rejected"
            decisions += 1
        step += 1
    seconds = time.monotonic() - started
    rate = decisions / seconds * 60
    print(
        f"review: {decisions} decisions in {seconds:.1f} s = {rate:.0f} decisions/min "
        f"(key to next triplet shown: median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms)"
    )

    # Everything reaches the server, in order; the page counts this sitting's decisions.
    wait.until(lambda d: state()[3] == "0")
    saved_at = time.monotonic() - started
    final = state()
    assert int(final[5]) == decisions - 1  # the undone decision no longer counts
    assert browser.execute_script("return document.getElementById('review-rate').textContent") not in ("", "–")
    assert not browser.find_elements(By.CSS_SELECTOR, "#review-log .is-failed")
    browser.save_screenshot(str(tmp_path / "review-after.png"))
    print(f"review: all decisions stored {saved_at:.1f} s after the first key")
    assert rate >= MIN_RATE_PER_MINUTE, f"{rate:.0f} decisions/min is below {MIN_RATE_PER_MINUTE}"

    log = TripletDecision.objects.select_related("reviewer").order_by("decided_at", "id")
    assert {d.reviewer.username for d in log} == {"merch"}
    assert all(decided_from <= d.decided_at <= timezone.now() for d in log)
    stored: dict[int, list[str]] = {}
    for decision in log:
        stored.setdefault(decision.triplet_id, []).append(decision.action)
    assert stored == expected_actions
    statuses = dict(Triplet.objects.filter(pk__in=expected_status).values_list("pk", "status"))
    assert statuses == expected_status
    assert Triplet.objects.filter(reviewed_by__username="merch").count() == len(expected_status)
    for triplet_id, old_negative in swapped.items():
        assert Triplet.objects.get(pk=triplet_id).positive_ref == old_negative
    assert undone is not None and stored[undone] == ["approved", "reset", "rejected"]
    assert Triplet.objects.get(pk=skipped).status == "pending" and skipped not in stored

    # Coming back later: the queue starts at what is still pending (the skipped one first).
    browser.get(f"{live_server.url}/curation/review/")
    assert int(shown()[0]) == skipped
