"""Zero downtime: shoppers search continuously over HTTP (the search page, the search API and the similar-products
API) while a real worker re-embeds the catalog for another version and swaps the alias, and then while the version
is rolled back. Every answer is counted: no request may fail and none may come back empty.

Real components: a Milvus Lite server, a Celery worker process, Django's live HTTP server. Two ImageNet stand-ins
at different image sizes (different vectors, fast on 2 cores) play the old and the new version.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
import requests

from tests.conftest import start_worker, stop_worker, wait_until
from webapp.catalog.demo import demo_catalog_load
from webapp.catalog.models import Product, ProductImage
from webapp.recommendations.models import SimilarList, SimilarListBuild
from webapp.search import activation, registry, versions
from webapp.search.models import ModelVersion

V128 = "imagenet-efficientnet_lite0-128"
V160 = "imagenet-efficientnet_lite0-160"
CATALOG_SIZE = 36
RESULT_ITEM = re.compile(r'<li class="result"')
PAGE_VERSION = re.compile(r'data-model-version="([^"]*)"')


@pytest.fixture
def stand_in_128(settings, vector_store):
    settings.EMBEDDER_IMAGE_SIZE = 128
    settings.REQUEST_THROTTLE_RATES = {**settings.REQUEST_THROTTLE_RATES, "search": None}  # availability, not abuse
    registry.reset_active_version_cache()
    yield vector_store
    registry.reset_active_version_cache()


@pytest.fixture
def worker(tmp_path, milvus_uri, milvus_names, stand_in_128, transactional_db):
    from django.conf import settings

    from webapp.celery import app

    app.set_current()
    app.set_default()
    app.control.purge()
    process = start_worker(
        tmp_path, milvus_uri, milvus_names, settings.CELERY_BROKER_URL, extra_env={"EMBEDDER_IMAGE_SIZE": "128"}
    )
    yield process
    stop_worker(process)


class Shoppers:
    """Threads that search without pause; each answer is an ok, an error (status, exception) or empty."""

    def __init__(self, base_url: str, products: list[tuple[int, bytes]]):
        self.base_url, self.products = base_url, products
        self.counts: Counter = Counter()
        self.versions: dict[str, set] = {"page": set(), "api": set(), "similar": set()}
        self.failures: list[str] = []
        self.phase = "before"
        self.by_phase: Counter = Counter()
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def record(self, surface: str, outcome: str, detail: str = "", version: str | None = None) -> None:
        with self._lock:
            self.counts[(surface, "requests")] += 1
            self.by_phase[(self.phase, surface)] += 1
            if outcome != "ok":
                self.counts[(surface, outcome)] += 1
                self.failures.append(f"{surface} {outcome} during {self.phase}: {detail}"[:300])
            if version:
                self.versions[surface].add(version)

    def loop(self, surface: str) -> None:
        session = requests.Session()
        index = 0
        while not self.stop.is_set():
            product_id, content = self.products[index % len(self.products)]
            index += 1
            try:
                getattr(self, surface)(session, product_id, content)
            except Exception as exc:  # noqa: BLE001 (any failure is the finding)
                self.record(surface, "errors", repr(exc))

    def page(self, session, product_id, content) -> None:
        if "csrftoken" not in session.cookies:
            session.get(f"{self.base_url}/search/", timeout=30)
        response = session.post(
            f"{self.base_url}/search/",
            data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
            files={"image": ("item.png", content, "image/png")},
            timeout=30,
        )
        if response.status_code != 200:
            return self.record("page", "errors", f"{response.status_code} {response.text[:200]}")
        version = PAGE_VERSION.search(response.text)
        found = len(RESULT_ITEM.findall(response.text))
        self.record("page", "ok" if found else "empty", "no results", version.group(1) if version else None)

    def api(self, session, product_id, content) -> None:
        response = session.post(
            f"{self.base_url}/api/search/", files={"image": ("item.png", content, "image/png")}, timeout=30
        )
        if response.status_code != 200:
            return self.record("api", "errors", f"{response.status_code} {response.text[:200]}")
        body = response.json()
        top = body["results"][0]["product"]["id"] if body["results"] else None
        outcome = "empty" if top is None else "ok" if top == product_id else "wrong"  # wrong: models mixed up
        self.record("api", outcome, f"top {top} for {product_id}", body.get("model_version"))

    def similar(self, session, product_id, content) -> None:
        response = session.get(f"{self.base_url}/api/products/{product_id}/similar/?k=8", timeout=30)
        if response.status_code != 200:
            return self.record("similar", "errors", f"{response.status_code} {response.text[:200]}")
        body = response.json()
        found = len(body["results"])
        self.record("similar", "ok" if found == 8 else "empty", f"{found} results", body.get("model_version"))


def make_catalog(fashion_items) -> list[tuple[int, bytes]]:
    """The first Fashion-MNIST test items as demo products (queued to the worker in one batch on commit)."""
    demo_catalog_load(size=CATALOG_SIZE)
    ids = dict(Product.objects.values_list("sku", "pk"))
    items = fashion_items[:CATALOG_SIZE]
    return [(ids[f"fmnist-test-{index:05d}"], content) for index, (content, _) in enumerate(items)]


@pytest.mark.worker
def test_no_search_fails_or_comes_back_empty_through_an_activation_and_a_rollback(
    stand_in_128, worker, live_server, fashion_items
):
    store = stand_in_128
    assert versions.default_version_ensure().model_version == V128
    products = make_catalog(fashion_items)
    wait_until(
        lambda: ProductImage.objects.filter(status="ready").count() == CATALOG_SIZE,
        120,
        interval=0.5,
        message=f"the catalog ingested (worker log: {worker.log()[-2000:]})",
    )
    v160, _ = versions.model_version_register(kind="imagenet", image_size=160)
    old, new = store.collection_name(V128), store.collection_name(V160)

    # Each web process loads a version's embedder on its first search with it (seconds, far more on a busy 2-core
    # machine); that cold start is not what this test measures, so this process loads both before the clock runs.
    registry.embedder_for(registry.active_version(fresh=True))
    registry.embedder_for(v160)
    shoppers = Shoppers(live_server.url, products)
    threads = [threading.Thread(target=shoppers.loop, args=(s,), daemon=True) for s in ("page", "api", "similar")]
    for thread in threads:
        thread.start()
    settle = registry.ACTIVE_VERSION_TTL_SECONDS + 1.5  # every process notices the change
    try:
        time.sleep(2)
        shoppers.phase = "re-embedding"
        assert activation.model_version_activate(version=v160) == "queued"
        wait_until(
            lambda: ModelVersion.objects.get(pk=v160.pk).state == "active",
            120,
            interval=0.1,
            message=f"the swap (worker log: {worker.log()[-2000:]})",
        )
        assert store.active_collection() == new
        # The new version's lists were built before the swap: its product pages read stored lists at once.
        assert SimilarListBuild.objects.get(version=v160).state == "done"
        assert SimilarList.objects.filter(version=v160).count() == CATALOG_SIZE
        shoppers.phase = "after the swap"
        time.sleep(settle)
        shoppers.phase = "after the rollback"
        activation.model_version_rollback()
        assert store.active_collection() == old
        time.sleep(settle)
    finally:
        shoppers.stop.set()
        for thread in threads:
            thread.join(60)

    summary = {
        surface: {kind: shoppers.counts[(surface, kind)] for kind in ("requests", "errors", "empty", "wrong")}
        for surface in ("page", "api", "similar")
    }
    print(f"\nzero-downtime: {summary}; per phase: {dict(shoppers.by_phase)}; versions seen: {shoppers.versions}")
    assert not shoppers.failures, shoppers.failures[:5]
    for surface in ("page", "api", "similar"):
        assert summary[surface]["errors"] == summary[surface]["empty"] == summary[surface]["wrong"] == 0, summary
        for phase in ("re-embedding", "after the swap", "after the rollback"):
            assert shoppers.by_phase[(phase, surface)] > 0, (phase, surface, shoppers.by_phase)
        assert shoppers.versions[surface] >= {V128, V160}, shoppers.versions  # both sides of the swap answered
    assert ModelVersion.objects.get(model_version=V128).state == "active"
    assert store.has_collection(new), "the rolled-back version's collection stays"
    # The rollback rebuilds the lists of the version it went back to (not maintained while it was standby).
    v128 = ModelVersion.objects.get(model_version=V128)
    wait_until(lambda: SimilarListBuild.objects.get(version=v128).state == "done", 60, message="the rebuild")
    assert SimilarList.objects.filter(version=v128).count() == CATALOG_SIZE
