"""Triplet curation: import mined JSONL, review in the admin, export for training."""

import json
from decimal import Decimal

import pytest
from django.core.management import call_command

from tests.conftest import image_bytes
from webapp.catalog import services
from webapp.curation.models import Triplet

ROWS = [
    {
        "anchor": "shop:sku-a",
        "positive": "shop:sku-b",
        "negative": "shop:sku-c",
        "kind": "catalog",
        "source": "biss-ensemble",
        "positive_score": 0.91,
        "negative_score": 0.12,
        "negative_kind": "in_class",
        "status": "pending",
    },
    {
        "anchor": "street:test:17",
        "positive": "shop:sku-a",
        "negative": "shop:sku-c",
        "kind": "street",
        "source": "exact-match",
        "scores": {"positive_score": 1.0},
    },
    {
        "anchor": "shop:sku-b",
        "positive": "shop:sku-a",
        "negative": "street:train:3",
        "kind": "catalog",
        "source": "rule",
    },
]


def write_jsonl(path, rows, extra_lines=()):
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")
    return path


@pytest.mark.django_db
def test_import_is_idempotent_and_reports_bad_rows(tmp_path, capsys):
    bad = [
        "{not json",
        json.dumps({**ROWS[0], "anchor": "catalog:1"}),
        json.dumps({**ROWS[0], "anchor": "shop:x", "kind": "other"}),
        json.dumps({k: v for k, v in ROWS[0].items() if k != "negative"}),
        json.dumps({**ROWS[0], "negative": ROWS[0]["anchor"]}),
    ]
    path = write_jsonl(tmp_path / "t.jsonl", ROWS, bad)
    call_command("import_triplets", str(path))
    out = capsys.readouterr().out
    assert "3 created, 0 updated, 0 unchanged, 5 row(s) with errors" in out
    for number in range(4, 9):
        assert f"line {number}:" in out
    assert "bad image reference 'catalog:1'" in out and "missing negative" in out
    triplet = Triplet.objects.get(anchor_ref="shop:sku-a")
    assert triplet.scores == {"positive_score": 0.91, "negative_score": 0.12, "negative_kind": "in_class"}
    assert Triplet.objects.get(kind="street").scores == {"positive_score": 1.0}

    Triplet.objects.filter(pk=triplet.pk).update(status="rejected")
    call_command("import_triplets", str(path))  # a re-import never duplicates nor undoes a review
    assert "0 created, 0 updated, 3 unchanged" in capsys.readouterr().out
    assert Triplet.objects.count() == 3 and Triplet.objects.get(pk=triplet.pk).status == "rejected"


@pytest.mark.django_db
def test_admin_bulk_approve_then_export_round_trip(admin_client, admin_user, tmp_path, capsys, settings):
    category = services.category_get_or_create(name="Shirt")
    product, _ = services.product_upsert(sku="sku-a", title="Red shirt", price=Decimal("10"), category=category)
    services.product_image_create(product=product, content=image_bytes())
    call_command("import_triplets", str(write_jsonl(tmp_path / "in.jsonl", ROWS)))

    page = admin_client.get("/admin/curation/triplet/?status__exact=pending")
    assert page.status_code == 200
    body = page.content.decode()
    assert f'href="{product.get_absolute_url()}"' in body and '<img src="/media/products/' in body
    assert "street:test:17" in body and "shop:sku-b (unknown SKU)" in body
    assert admin_client.get("/admin/curation/triplet/?kind__exact=street&source__exact=exact-match").status_code == 200

    chosen = list(Triplet.objects.filter(kind="catalog").values_list("pk", flat=True))
    response = admin_client.post("/admin/curation/triplet/", {"action": "approve_triplets", "_selected_action": chosen})
    assert response.status_code == 302
    approved = Triplet.objects.filter(status="approved")
    assert sorted(approved.values_list("pk", flat=True)) == sorted(chosen)
    assert all(t.reviewed_by == admin_user and t.reviewed_at for t in approved)
    street = Triplet.objects.get(kind="street")
    admin_client.post("/admin/curation/triplet/", {"action": "reject_triplets", "_selected_action": [street.pk]})
    street.refresh_from_db()
    assert street.status == "rejected" and street.reviewed_by == admin_user

    out = tmp_path / "approved.jsonl"
    call_command("export_triplets", str(out), "--approved-only")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["anchor"], r["positive"], r["negative"]) for r in records) == sorted(
        (r["anchor"], r["positive"], r["negative"]) for r in ROWS if r["kind"] == "catalog"
    )
    assert {r["status"] for r in records} == {"approved"}
    assert records[0]["positive_score"] == 0.91 and records[0]["source"] == "biss-ensemble"

    everything = tmp_path / "all.jsonl"
    call_command("export_triplets", str(everything))
    assert len(everything.read_text().splitlines()) == 3

    # The training command reads the export (ml/triplets.py, plain Python, no Django).
    from ml.triplets import load_triplets

    loaded = load_triplets(everything, approved_only=True)
    assert sorted(t.anchor for t in loaded) == ["shop:sku-a", "shop:sku-b"]
    assert all(t.status == "approved" for t in loaded)

    # Importing the export elsewhere keeps the review decisions.
    Triplet.objects.all().delete()
    call_command("import_triplets", str(everything))
    assert dict(Triplet.objects.values_list("kind", "status").order_by("kind", "status").distinct()) == {
        "catalog": "approved",
        "street": "rejected",
    }


# Helpers shared by the curation tests (tests/test_review.py, test_merchandiser.py, test_mining_demo.py, ...) -------
def add_products(items) -> list:
    """Catalog products with one image each, from (sku, png bytes, category name); nothing queued for ingestion."""
    from django.core.files.base import ContentFile

    from webapp.catalog.images import validate_image_bytes
    from webapp.catalog.models import Product, ProductImage

    products = []
    for sku, png, category_name in items:
        category = services.category_get_or_create(name=category_name)
        product = Product.objects.create(sku=sku, title=f"Item {sku}", price=Decimal("10.00"), category=category)
        validated = validate_image_bytes(png)
        image = ProductImage(
            product=product, checksum=validated.checksum, width=validated.width, height=validated.height
        )
        image.image.save(f"{validated.checksum[:16]}.png", ContentFile(validated.content), save=True)
        products.append(product)
    return products


def shop_triplets(skus: list[str], count: int, kind: str = "catalog", category: str = "Shirt") -> list[Triplet]:
    """`count` distinct pending triplets over the given SKUs, none the swap of another (positive before negative)."""
    import itertools

    combos = [(a, p, n) for a, p, n in itertools.permutations(range(len(skus)), 3) if p < n]
    assert len(combos) >= count, f"{len(skus)} SKUs make only {len(combos)} triplets"
    triplets = [
        Triplet(
            anchor_ref=f"shop:{skus[a]}",
            positive_ref=f"shop:{skus[p]}",
            negative_ref=f"shop:{skus[n]}",
            kind=kind,
            source="test",
            category=category,
            scores={"positive_score": 0.9, "negative_score": 0.2},
        )
        for a, p, n in combos[:count]
    ]
    return Triplet.objects.bulk_create(triplets)


def make_user(username: str, *, staff: bool = False, group: str | None = None, superuser: bool = False):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user_model = get_user_model()
    if superuser:
        return user_model.objects.create_superuser(username, password="pw-12345678")
    user = user_model.objects.create_user(username, password="pw-12345678", is_staff=staff)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


# Review decisions (services) -------------------------------------------------------------------------------
@pytest.mark.django_db
def test_each_decision_is_logged_with_who_and_when_and_swap_respects_the_unique_constraint():
    from django.utils import timezone

    from webapp.curation import services as curation
    from webapp.curation.models import TripletDecision

    reviewer, other = make_user("rita", staff=True), make_user("otto", staff=True)
    first, second = shop_triplets(["a", "b", "c", "d"], 2)
    before = timezone.now()
    decision = curation.triplet_decide(triplet=first, action="approve", reviewer=reviewer)
    assert (first.status, first.reviewed_by, decision.action, decision.reviewer) == (
        "approved",
        reviewer,
        "approved",
        reviewer,
    )
    assert before <= decision.decided_at <= timezone.now() and first.reviewed_at == first.reviewed_at

    swap = curation.triplet_decide(triplet=first.pk, action="swap", reviewer=other)
    first.refresh_from_db()
    assert (first.positive_ref, first.negative_ref, first.status, first.reviewed_by) == (
        "shop:c",
        "shop:b",
        "pending",
        None,
    )
    assert first.scores == {"positive_score": 0.2, "negative_score": 0.9} and swap.action == "swapped"
    curation.triplet_decide(triplet=first, action="rejected", reviewer=other)  # the logged action's name works too
    assert [(d.action, d.reviewer.username) for d in first.decisions.order_by("decided_at", "id")] == [
        ("approved", "rita"),
        ("swapped", "otto"),
        ("rejected", "otto"),
    ]

    # Swapping onto a triplet that already exists is refused with the reason, and nothing changes.
    clash = Triplet.objects.create(
        anchor_ref="shop:x", positive_ref="shop:y", negative_ref="shop:z", kind="catalog", source="t"
    )
    Triplet.objects.create(
        anchor_ref="shop:x", positive_ref="shop:z", negative_ref="shop:y", kind="catalog", source="t"
    )
    with pytest.raises(curation.DecisionConflict, match="already exists as triplet"):
        curation.triplet_decide(triplet=clash, action="swap", reviewer=reviewer)
    clash.refresh_from_db()
    assert clash.positive_ref == "shop:y" and not clash.decisions.exists()
    with pytest.raises(curation.DecisionError, match="unknown action 'maybe'"):
        curation.triplet_decide(triplet=second, action="maybe", reviewer=reviewer)
    assert TripletDecision.objects.filter(triplet=second).count() == 0


@pytest.mark.django_db
def test_undo_gives_back_the_previous_state_and_only_the_latest_decision_can_be_undone():
    from webapp.curation import services as curation

    rita, otto = make_user("rita", staff=True), make_user("otto", staff=True)
    (triplet,) = shop_triplets(["a", "b", "c"], 1)
    rejected = curation.triplet_decide(triplet=triplet, action="reject", reviewer=rita)
    approved = curation.triplet_decide(triplet=triplet, action="approve", reviewer=otto)
    with pytest.raises(curation.DecisionConflict, match="not the latest"):
        curation.triplet_decision_undo(decision=rejected, reviewer=rita)

    undo = curation.triplet_decision_undo(decision=approved, reviewer=otto)
    triplet.refresh_from_db()
    # Rita's rejection stands again, with her name and time; the undo itself is logged as Otto's.
    assert (triplet.status, triplet.reviewed_by, triplet.reviewed_at) == ("rejected", rita, rejected.decided_at)
    assert (undo.action, undo.reviewer) == ("rejected", otto)

    swap = curation.triplet_decide(triplet=triplet, action="swap", reviewer=otto)
    curation.triplet_decision_undo(decision=swap, reviewer=otto)
    triplet.refresh_from_db()
    assert (triplet.positive_ref, triplet.negative_ref, triplet.status) == ("shop:b", "shop:c", "pending")
    last = curation.triplet_decide(triplet=triplet, action="approve", reviewer=rita)
    curation.triplet_decision_undo(decision=last, reviewer=rita)
    triplet.refresh_from_db()
    assert triplet.status == "pending" and triplet.reviewed_by is None  # a swap left it pending
    assert triplet.decisions.count() == 7
    with pytest.raises(curation.DecisionError, match="does not exist"):
        curation.triplet_decision_undo(decision=10**9, reviewer=rita)


@pytest.mark.django_db
def test_bulk_review_logs_one_decision_per_triplet_and_import_keeps_category_and_query_refs(tmp_path, capsys):
    from webapp.curation import services as curation

    rita = make_user("rita", staff=True)
    triplets = shop_triplets(["a", "b", "c", "d"], 3)
    assert curation.triplets_review(triplet_ids=[t.pk for t in triplets], status="approved", reviewer=rita) == 3
    assert curation.triplets_review(triplet_ids=[triplets[0].pk], status="pending", reviewer=rita) == 1
    assert sorted(Triplet.objects.get(pk=triplets[0].pk).decisions.values_list("action", flat=True)) == [
        "approved",
        "reset",
    ]
    report = curation.triplets_swap(triplet_ids=[triplets[1].pk, 10**9], reviewer=rita)
    assert report.swapped == [triplets[1].pk] and report.refused == [(10**9, f"triplet {10**9} does not exist")]

    rows = [
        {
            "anchor": "query:7",
            "positive": "shop:a",
            "negative": "shop:b",
            "kind": "feedback",
            "source": "shopper",
            "category": "Shirt",
        },
        {"anchor": "query:x", "positive": "shop:a", "negative": "shop:b", "kind": "feedback", "source": "shopper"},
    ]
    call_command("import_triplets", str(write_jsonl(tmp_path / "q.jsonl", rows)))
    out = capsys.readouterr().out
    assert "1 created" in out and "line 2: bad image reference 'query:x'" in out
    assert Triplet.objects.get(anchor_ref="query:7").category == "Shirt"
