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
