"""Near-duplicate products: the benchmark's mechanics (tiny model, tiny catalog), and the product side against the
real Milvus Lite server with the shipped VisNet: finding pairs, idempotent re-runs, dismiss, merge, permissions."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from PIL import Image

from ml.evaluation import near_duplicates as bench
from webapp.catalog import duplicates, services
from webapp.catalog.images import looks_like_product_shot
from webapp.catalog.models import DuplicatePair, Product, ProductImage
from webapp.search import dispatch
from webapp.search import services as search_services

ROOT = Path(__file__).resolve().parent.parent
TINY_VISNET = ROOT / "tests" / "fixtures" / "tiny-visnet"
Status = DuplicatePair.Status


# -- the benchmark (plain ml/) --------------------------------------------------------------------------------


def unit(rows) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def test_pairs_are_counted_once_each_duplicates_scored_exactly_and_false_pairs_binned():
    # Listings 0 and 3 share pixels (a duplicate pair); 1 is close to 0 (a false pair); 2 is far from all.
    angle = np.deg2rad([0.0, 10.0, 90.0, 3.0])
    vectors = unit(np.stack([np.cos(angle), np.sin(angle)], axis=1))
    groups = np.array([7, 8, 9, 7])
    counts = bench.count_pairs(vectors, groups, keep_top=2, block=2)  # blocks smaller than the matrix
    assert counts.true_scores.tolist() == pytest.approx([np.cos(np.deg2rad(3.0))])
    assert counts.false.sum() == 2  # (0, 1) at cos 10 deg and (1, 3) at cos 7 deg; cos 87-90 deg is below the floor
    assert counts.at(0.99) == (1, 1)  # cos 7 deg = 0.9925 counts, cos 10 deg = 0.985 does not
    assert counts.at(0.98) == (1, 2)
    assert [(a, b) for _, a, b in counts.top_false] == [(1, 3), (0, 1)]


def test_the_threshold_is_the_lowest_reaching_the_precision_target():
    edges = bench.score_edges()
    false = np.zeros(len(edges) - 1, dtype=np.int64)
    false[np.searchsorted(edges, 0.9)] = 5  # five false pairs score 0.900-0.901
    counts = bench.PairCounts(edges, false, np.array([0.95] * 99 + [0.7], dtype=np.float32))
    threshold, met = bench.choose_threshold(counts, 0.99)
    assert met and threshold == pytest.approx(0.901)
    point = bench.operating_point(counts, threshold)
    assert point["precision"] == 1.0 and point["recall"] == pytest.approx(0.99)
    assert bench.operating_point(counts, 0.9)["precision"] == pytest.approx(99 / 104)
    _, met = bench.choose_threshold(counts, 1.01)  # unreachable: the most precise threshold, flagged as such
    assert not met


def test_a_relisting_is_fixed_by_its_seed_and_stays_a_clean_product_shot(fashion_items):
    pixels = 255 - np.asarray(Image.open(io.BytesIO(fashion_items[0][0])).convert("L"))
    first = bench.relist(bench.catalog_image(pixels), bench.relisting_for(0, 5))
    again = bench.relist(bench.catalog_image(pixels), bench.relisting_for(0, 5))
    assert np.array_equal(np.asarray(first), np.asarray(again)) and first.mode == "RGB"
    assert bench.relisting_for(0, 5) != bench.relisting_for(1, 5)
    # The benchmark embeds a re-listing whole, as ingestion does a clean product shot: check the product's own rule.
    shots = [
        looks_like_product_shot(bench.relist(bench.catalog_image(pixels), bench.relisting_for(0, index)))
        for index in range(60)
    ]
    assert np.mean(shots) >= 0.9


def test_the_study_runs_end_to_end_on_a_tiny_catalog(tmp_path):
    out = tmp_path / "near_duplicates.md"
    result = bench.main(
        ["--visnet", str(TINY_VISNET), "--catalog", "160", "--relisted", "30", "--root", str(tmp_path / "cache")]
        + ["--out", str(out), "--no-progress"]
    )
    assert result["catalog_items"] == 160
    assert {s: result["splits"][s]["relisted_items"] for s in ("val", "test")} == {"val": 15, "test": 15}
    assert result["splits"]["test"]["listings"] == 95
    assert 0.5 <= result["threshold"] < 1.0
    # The duplicate pairs of a half: its re-listings, plus the items Fashion-MNIST holds twice (if any there).
    assert result["test"]["duplicate_pairs"] >= 15
    assert any(abs(row["threshold"] - result["threshold"]) < 1e-9 for row in result["table"])
    if result["target_met_on_val"]:
        assert result["val"]["precision"] >= bench.TARGET_PRECISION
    stored = json.loads(out.with_suffix(".json").read_text())
    assert stored["threshold"] == result["threshold"] and stored["machine"]["cores"]
    report = out.read_text()
    assert f"**Threshold {result['threshold']:.3f}**" in report and "| what was done |" in report
    assert Image.open(out.with_suffix(".png")).size[0] > 400
    # Vectors are cached: a second run embeds nothing.
    again = bench.study(TINY_VISNET, 160, 30, root=tmp_path / "cache", progress=False)
    assert again["threshold"] == result["threshold"] and again["seconds"]["ms_per_image"] == 0


# -- the product ----------------------------------------------------------------------------------------------


def catalog_png(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content)).convert("RGB")


def reencoded(content: bytes, quality: int = 85, scale: int = 4) -> bytes:
    """The same picture uploaded again: upscaled and saved as JPEG."""
    image = catalog_png(content)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def product_with(sku: str, *contents: bytes, category: str = "Shirt") -> Product:
    product = services.product_create(
        category_name=category, sku=sku, title=f"Product {sku}", price=Decimal("20.00"), in_stock=True
    )
    for position, content in enumerate(contents):
        services.product_image_create(product=product, content=content, position=position)
    return product


def ingest(*products: Product) -> None:
    ids = list(ProductImage.objects.filter(product__in=products).values_list("pk", flat=True))
    assert sorted(search_services.images_ingest(image_ids=ids).ready) == sorted(ids)


def user_with(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="catalog", codename__in=codenames))
    return User.objects.get(pk=user.pk)  # a fresh instance: no cached permissions


@pytest.fixture
def listed_twice(visnet_version, fashion_items):
    """A product, the same item listed again (re-encoded), and a different item (another class)."""
    first_content = fashion_items[0][0]
    other = next(content for content, label in fashion_items if label != fashion_items[0][1])
    original = product_with("original", first_content)
    again = product_with("again", reencoded(first_content))
    different = product_with("different", other)
    ingest(original, again, different)
    return original, again, different


@pytest.mark.django_db
def test_a_product_listed_twice_is_flagged_once_and_different_products_are_not(listed_twice, settings, capsys):
    original, again, different = listed_twice
    report = duplicates.near_duplicates_find()
    assert report.images_scanned == 3 and report.created == 1
    pair = DuplicatePair.objects.get()
    assert (pair.product_a, pair.product_b, pair.status) == (original, again, Status.OPEN)
    assert pair.similarity >= settings.NEAR_DUPLICATE_THRESHOLD
    assert pair.model_version == Product.objects.get(pk=original.pk).images.get().model_version
    assert list(duplicates.duplicate_pairs_open()) == [pair]

    # Re-running (the nightly task, the command, a run for one product) adds nothing.
    from webapp.catalog.tasks import find_near_duplicates

    assert find_near_duplicates.apply().get()["created"] == 0
    call_command("find_near_duplicates", "--product", str(different.pk))
    assert "0 new" in capsys.readouterr().out
    assert duplicates.near_duplicates_find(product_ids=[again.pk]).pairs_found == 1
    assert DuplicatePair.objects.count() == 1

    with pytest.raises(ValueError, match="threshold"):
        duplicates.near_duplicates_find(threshold=1.5)

    # A full run that no longer finds an open pair (here: a higher threshold) withdraws it.
    assert duplicates.near_duplicates_find(threshold=pair.similarity + 1e-4).withdrawn == 1
    assert not DuplicatePair.objects.exists()


@pytest.mark.django_db
def test_a_dismissed_pair_stays_dismissed(listed_twice):
    original, again, _ = listed_twice
    duplicates.near_duplicates_find()
    pair = DuplicatePair.objects.get()
    decider = user_with("decider", "view_duplicatepair", "change_duplicatepair")
    duplicates.duplicate_pair_dismiss(pair=pair, user=decider)
    report = duplicates.near_duplicates_find()
    assert report.pairs_found == 1 and report.already_decided == 1 and report.created == 0
    assert duplicates.near_duplicates_find(threshold=1.0).withdrawn == 0  # only open pairs are withdrawn
    pair.refresh_from_db()
    assert (pair.status, pair.decided_by, pair.decided_at is not None) == (Status.DISMISSED, decider, True)
    with pytest.raises(duplicates.DuplicatePairError, match="already dismissed"):
        duplicates.duplicate_pair_merge(pair=pair, keep=original, user=decider)


@pytest.mark.django_db
def test_merge_leaves_one_product_with_both_images_and_the_duplicates_vectors_gone(
    listed_twice, vector_store, fashion_items, monkeypatch, django_capture_on_commit_callbacks
):
    original, again, _ = listed_twice
    services.product_image_create(product=again, content=fashion_items[0][0], position=1)  # an exact copy too
    ingest(again)
    duplicates.near_duplicates_find()
    pair = DuplicatePair.objects.get(product_a=original, product_b=again)
    moved_image = again.images.get(position=0)
    copy_image = again.images.get(position=1)
    sent = []
    monkeypatch.setattr(dispatch.app, "send_task", lambda name, args=None, **kw: sent.append((name, args)))
    decider = user_with("decider", "view_duplicatepair", "change_duplicatepair")

    with django_capture_on_commit_callbacks(execute=True):
        kept = duplicates.duplicate_pair_merge(pair=pair, keep=original, user=decider)

    assert kept == original and not Product.objects.filter(pk=again.pk).exists()
    assert sorted(original.images.values_list("pk", flat=True)) == sorted(
        [original.images.get(position=0).pk, moved_image.pk]
    )
    assert not ProductImage.objects.filter(pk=copy_image.pk).exists()  # the copy of a kept image is dropped
    pair.refresh_from_db()
    assert (pair.status, pair.decided_by, pair.product_a_id, pair.product_b_id) == (
        Status.MERGED,
        decider,
        original.pk,
        None,
    )
    assert "again" in pair.removed_product and pair.decided_at is not None
    assert (dispatch.INGEST_IMAGES, [[moved_image.pk]]) in sent
    assert (dispatch.REMOVE_IMAGE_VECTORS, [[copy_image.pk]]) in sent

    # What the worker does with those messages: the real tasks, run here.
    from webapp.search import tasks

    worker_tasks = {
        dispatch.INGEST_IMAGES: tasks.ingest_image_batch,
        dispatch.REMOVE_IMAGE_VECTORS: tasks.remove_image_vectors,
    }
    for name, args in sent:
        if name in worker_tasks:
            worker_tasks[name].apply(args=args).get()
    vector_store.flush()
    assert vector_store.rows_for_product(again.pk, with_vectors=False) == []
    rows = vector_store.rows_for_product(original.pk, with_vectors=False)
    assert sorted(row["image_id"] for row in rows) == sorted(original.images.values_list("pk", flat=True))
    assert duplicates.near_duplicates_find().created == 0  # one product now: nothing left to pair


@pytest.mark.django_db
def test_merging_moves_the_duplicates_other_pairs_to_the_kept_product(django_capture_on_commit_callbacks):
    a, b, c, d = (product_with(sku) for sku in "abcd")
    decider = user_with("decider", "change_duplicatepair")
    merged = DuplicatePair.objects.create(product_a=a, product_b=b, similarity=0.99, model_version="v")
    to_move = DuplicatePair.objects.create(product_a=b, product_b=c, similarity=0.98, model_version="v")
    DuplicatePair.objects.create(product_a=a, product_b=d, similarity=0.985, model_version="v")
    redundant = DuplicatePair.objects.create(product_a=b, product_b=d, similarity=0.975, model_version="v")
    with django_capture_on_commit_callbacks():
        duplicates.duplicate_pair_merge(pair=merged, keep=a, user=decider)
    to_move.refresh_from_db()
    assert (to_move.product_a, to_move.product_b, to_move.status) == (a, c, Status.OPEN)
    assert not DuplicatePair.objects.filter(pk=redundant.pk).exists()  # a already had a pair with d
    assert set(DuplicatePair.objects.values_list("product_a", "product_b")) == {
        (a.pk, None),
        (a.pk, c.pk),
        (a.pk, d.pk),
    }

    # A later merge of a into c carries the record of the first merge along to c.
    with django_capture_on_commit_callbacks():
        duplicates.duplicate_pair_merge(pair=to_move, keep=c, user=decider)
    merged.refresh_from_db()
    assert (merged.product_a, merged.product_b, merged.status) == (c, None, Status.MERGED)


@pytest.mark.django_db
def test_a_user_who_may_only_view_pairs_cannot_merge_or_dismiss(client, django_capture_on_commit_callbacks):
    a, b = product_with("a"), product_with("b")
    pair = DuplicatePair.objects.create(product_a=a, product_b=b, similarity=0.99, model_version="v")
    viewer = user_with("viewer", "view_duplicatepair")
    with pytest.raises(PermissionDenied):
        duplicates.duplicate_pair_merge(pair=pair, keep=a, user=viewer)
    with pytest.raises(PermissionDenied):
        duplicates.duplicate_pair_dismiss(pair=pair, user=viewer)

    client.force_login(viewer)
    page = client.get("/admin/catalog/duplicatepair/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Product a" in html and "Product b" in html and "0.990" in html
    assert "merge_keeping_a" not in html and "/merge/a/" not in html
    assert client.post(f"/admin/catalog/duplicatepair/{pair.pk}/merge/a/").status_code == 403
    assert client.post(f"/admin/catalog/duplicatepair/{pair.pk}/dismiss/").status_code == 403
    client.post("/admin/catalog/duplicatepair/", {"action": "merge_keeping_a", "_selected_action": [pair.pk]})
    pair.refresh_from_db()
    assert pair.status == Status.OPEN and Product.objects.filter(pk__in=[a.pk, b.pk]).count() == 2


@pytest.mark.django_db
def test_a_merchandiser_merges_and_dismisses_from_the_admin(client, django_capture_on_commit_callbacks):
    a, b, c, d = (product_with(sku) for sku in "abcd")
    first = DuplicatePair.objects.create(product_a=a, product_b=b, similarity=0.99, model_version="v")
    second = DuplicatePair.objects.create(product_a=c, product_b=d, similarity=0.98, model_version="v")
    client.force_login(user_with("merchandiser", "view_duplicatepair", "change_duplicatepair"))
    html = client.get("/admin/catalog/duplicatepair/?status__exact=open").content.decode()
    assert f'formaction="/admin/catalog/duplicatepair/{first.pk}/merge/b/"' in html and "merge_keeping_b" in html
    assert client.get(f"/admin/catalog/duplicatepair/{first.pk}/merge/b/").status_code == 405  # POST only

    with django_capture_on_commit_callbacks():
        response = client.post(f"/admin/catalog/duplicatepair/{first.pk}/merge/b/")
    assert response.status_code == 302
    assert not Product.objects.filter(pk=a.pk).exists() and Product.objects.filter(pk=b.pk).exists()
    response = client.post(
        "/admin/catalog/duplicatepair/", {"action": "dismiss", "_selected_action": [first.pk, second.pk]}, follow=True
    )
    assert "Dismissed 1 pair(s)" in response.content.decode() and "already merged" in response.content.decode()
    assert dict(DuplicatePair.objects.values_list("pk", "status")) == {
        first.pk: Status.MERGED,
        second.pk: Status.DISMISSED,
    }
    detail = client.get(f"/admin/catalog/duplicatepair/{first.pk}/change/").content.decode()
    assert "#" + str(a.pk) in detail and "removed" in detail
