"""Mining candidate triplets for the catalog with the BISS scorers (ml/biss.py, ml/triplets.py), for review.

Catalog triplets: anchors, positives and negatives are all catalog products; the classes are the catalog's
categories. Street triplets (only when the CURATION_BENCHMARK is built on disk): street photos of the street-to-shop
benchmark whose exact item is a catalog product (the benchmark's shop keys are the demo catalog's SKUs), with
BISS-hard negatives among the catalog's products. Everything is imported through `triplets_import`, so a re-run
adds only what is new and never touches a reviewer's decision; a triplet a reviewer swapped is not mined again
the other way round.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image, UnidentifiedImageError

from webapp.catalog.models import Product, ProductImage
from webapp.curation import refs
from webapp.curation.models import Triplet
from webapp.curation.services import triplets_import

logger = logging.getLogger(__name__)

MAX_POOL = 20_000  # products scored in one run; a larger catalog is sampled (the new products always kept)
FEATURE_CHUNK = 2_000
SEED = 0


@dataclass
class MiningReport:
    products: int = 0  # catalog products whose image was scored
    new_products: int | None = None  # with `since`: the products created after it
    unreadable: int = 0
    catalog_mined: int = 0
    street_mined: int = 0
    street_note: str = ""
    skipped_swapped: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        scope = f"{self.products} products" + (f" ({self.new_products} new)" if self.new_products is not None else "")
        return (
            f"{scope}: {self.catalog_mined} catalog and {self.street_mined} street triplets mined "
            f"({self.street_note}); {self.created} created, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.skipped_swapped} skipped (swapped by a reviewer), {len(self.errors)} error(s) "
            f"in {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class CatalogItem:
    sku: str
    category_id: int
    category: str
    image_name: str
    is_new: bool


class CatalogShop:
    """The catalog seen as ml/triplets.py's `bench`: shop keys are SKUs, classes are categories."""

    def __init__(self, items: list[CatalogItem], images: list[Image.Image]):
        self.shop_keys = [item.sku for item in items]
        self.shop_labels = np.asarray([item.category_id for item in items], dtype=np.int64)
        self.shop_split = np.full(len(items), "catalog")
        self._images = images

    def shop_image(self, index: int) -> Image.Image:
        return self._images[int(index)]


def _catalog_items(since: datetime | None) -> list[CatalogItem]:
    """Every product with an image, its first image's file (position order), in product id order."""
    first_image: dict[int, str] = {}
    for product_id, name in ProductImage.objects.order_by("product_id", "position", "id").values_list(
        "product_id", "image"
    ):
        if name and product_id not in first_image:
            first_image[product_id] = name
    products = Product.objects.filter(pk__in=list(first_image)).order_by("id")
    rows = products.values_list("pk", "sku", "category_id", "category__name", "created_at")
    return [
        CatalogItem(sku, category_id, category, first_image[pk], since is None or created_at > since)
        for pk, sku, category_id, category, created_at in rows
    ]


def _sampled(items: list[CatalogItem]) -> list[CatalogItem]:
    """At most MAX_POOL products: every new one, then a seeded sample of the others, in catalog order."""
    if len(items) <= MAX_POOL:
        return items
    new = [i for i, item in enumerate(items) if item.is_new]
    old = [i for i, item in enumerate(items) if not item.is_new]
    room = max(0, MAX_POOL - len(new))
    chosen = np.random.default_rng(SEED).choice(len(old), min(room, len(old)), replace=False)
    keep = sorted(new[:MAX_POOL] + [old[int(i)] for i in chosen])
    return [items[i] for i in keep]


def _open_small(name: str) -> Image.Image | None:
    """The image, decoded small: the BISS scorers look at 48 px at most."""
    from django.core.files.storage import default_storage

    try:
        with default_storage.open(name, "rb") as handle, Image.open(handle) as image:
            image.draft("RGB", (128, 128))  # JPEG: decode at a fraction of the size
            small = image.convert("RGB")
    except (FileNotFoundError, OSError, UnidentifiedImageError, ValueError) as exc:
        logger.warning("mining: skipping %s: %s", name, exc)
        return None
    small.thumbnail((96, 96), Image.Resampling.BILINEAR)
    return small


def _features(images: list[Image.Image]) -> np.ndarray:
    from ml.biss import default_ensemble

    scorer = default_ensemble(cnn=False)
    parts = [scorer.features(images[start : start + FEATURE_CHUNK]) for start in range(0, len(images), FEATURE_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


def _street_triplets(items: list[CatalogItem], features: np.ndarray, since: datetime | None) -> tuple[list, str]:
    from ml.triplets import mine_street_triplets

    if not refs.benchmark_built():
        return [], "street skipped: the benchmark is not built (mine_triplets --build-benchmark)"
    bench = refs.benchmark_loaded()
    key_to_index = {key: index for index, key in enumerate(bench.shop_keys)}
    in_bench = [row for row, item in enumerate(items) if item.sku in key_to_index]
    if not in_bench:
        return [], f"street: no catalog product is an item of the {bench.size} benchmark"
    wanted = {key_to_index[items[row].sku] for row in in_bench if items[row].is_new or since is None}
    queries = [index for index, street in enumerate(bench.items) if int(street.shop_index) in wanted]
    if not queries:
        return [], f"street: no street photo of the {bench.size} benchmark shows these products"
    mined = mine_street_triplets(
        bench,
        pool=np.asarray([key_to_index[items[row].sku] for row in in_bench], dtype=np.int64),
        features=features[in_bench],
        queries=queries,
        seed=SEED,
    )
    return mined, f"{len(queries)} street photo items of the {bench.size} benchmark"


def _catalog_triplets(shop: CatalogShop, features: np.ndarray, items: list[CatalogItem], limit: int, since) -> list:
    from ml.triplets import mine_catalog_triplets

    # One positive per anchor and two negatives (one in its category, one outside): two triplets per anchor.
    anchors = None if since is not None else math.ceil(limit / 2)
    mined = mine_catalog_triplets(
        shop, pool=np.arange(len(items)), features=features, anchors=anchors, seed=SEED, source="biss-ensemble"
    )
    if since is not None:
        new = {item.sku for item in items if item.is_new}
        mined = [t for t in mined if t.anchor.removeprefix("shop:") in new]
    return mined


def _without_swapped(mined: list) -> tuple[list, int]:
    """Drops a mined triplet whose swapped version is stored: a reviewer already turned it round."""
    anchors = {t.anchor for t in mined}
    stored: set[tuple[str, str, str]] = set()
    anchor_list = sorted(anchors)
    for start in range(0, len(anchor_list), 500):
        rows = Triplet.objects.filter(anchor_ref__in=anchor_list[start : start + 500]).values_list(
            "anchor_ref", "positive_ref", "negative_ref"
        )
        stored.update(rows)
    kept = [
        t
        for t in mined
        if (t.anchor, t.positive, t.negative) in stored or (t.anchor, t.negative, t.positive) not in stored
    ]
    return kept, len(mined) - len(kept)


def triplets_mine(*, limit: int, since: datetime | None = None) -> MiningReport:
    """Mine at most `limit` candidate triplets for the catalog and import them for review.

    Street triplets come first (when the benchmark is built), catalog triplets fill the rest. With `since`, only
    products created after it are anchors (street: positives), their neighbours still drawn from the catalog.
    The same catalog mines the same triplets, so a second run adds nothing.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    started = time.monotonic()
    report = MiningReport()
    items = _catalog_items(since)
    if since is not None:
        report.new_products = sum(item.is_new for item in items)
        if not report.new_products:
            report.street_note = "no new products"
            report.seconds = time.monotonic() - started
            return report
    items = _sampled(items)
    images: list[Image.Image] = []
    readable: list[CatalogItem] = []
    for item in items:
        image = _open_small(item.image_name)
        if image is None:
            report.unreadable += 1
            continue
        images.append(image)
        readable.append(item)
    report.products = len(readable)
    if len(readable) < 3:
        report.street_note = "too few products with images"
        report.seconds = time.monotonic() - started
        return report
    features = _features(images)
    street, report.street_note = _street_triplets(readable, features, since)
    street = street[:limit]
    catalog = _catalog_triplets(CatalogShop(readable, images), features, readable, limit, since)
    rng = np.random.default_rng(SEED)
    catalog = [catalog[int(i)] for i in rng.permutation(len(catalog))][: limit - len(street)]
    report.street_mined, report.catalog_mined = len(street), len(catalog)

    category_of = {item.sku: item.category for item in readable}
    mined, report.skipped_swapped = _without_swapped(street + catalog)
    lines = (
        json.dumps({**asdict(t), "category": category_of.get(t.positive.removeprefix("shop:"), "")}) for t in mined
    )
    imported = triplets_import(lines=lines)
    report.created, report.updated, report.unchanged = imported.created, imported.updated, imported.unchanged
    report.errors = imported.errors
    report.seconds = time.monotonic() - started
    logger.info("triplet mining: %s", report.summary())
    return report
