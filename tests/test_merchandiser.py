"""The merchandiser role: exactly its permissions, kept by migrate and `ensure_roles`; a merchandiser reviews triplets
and reads the catalog but cannot change products, prices, categories or users; shoppers and anonymous visitors reach
no curation page or endpoint."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command

from tests.test_curation import add_products, make_user, shop_triplets
from webapp.catalog.models import Category, Product
from webapp.curation.models import Triplet
from webapp.curation.roles import MERCHANDISER_GROUP, MERCHANDISER_PERMISSIONS, merchandiser_group_ensure


def group_permissions() -> set[str]:
    group = Group.objects.get(name=MERCHANDISER_GROUP)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def existing(names) -> set[str]:
    found = set()
    for name in names:
        app_label, codename = name.split(".")
        if Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists():
            found.add(name)
    return found


@pytest.mark.django_db
def test_migrate_leaves_the_group_with_exactly_its_permissions_and_ensure_roles_repairs_it(capsys):
    # The test database was migrated: post_migrate created the group.
    assert group_permissions() == existing(MERCHANDISER_PERMISSIONS)
    assert {"curation.change_triplet", "search.activate_modelversion", "search.add_trainingrun"} <= group_permissions()
    assert not group_permissions() & {"catalog.change_product", "catalog.add_product", "auth.change_user"}

    group = Group.objects.get(name=MERCHANDISER_GROUP)
    group.permissions.add(Permission.objects.get(codename="change_product"))
    group.permissions.remove(Permission.objects.get(codename="change_triplet"))
    call_command("ensure_roles")
    assert group_permissions() == existing(MERCHANDISER_PERMISSIONS)
    assert f"group '{MERCHANDISER_GROUP}'" in capsys.readouterr().out

    Group.objects.filter(name=MERCHANDISER_GROUP).delete()
    from django.core.management.sql import emit_post_migrate_signal

    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    assert group_permissions() == existing(MERCHANDISER_PERMISSIONS)


@pytest.mark.django_db
def test_a_permission_that_does_not_exist_yet_is_skipped_with_a_warning_and_added_once_it_exists(caplog):
    permission = Permission.objects.get(content_type__app_label="search", codename="view_shopperevent")
    content_type, name = permission.content_type, permission.name
    permission.delete()
    with caplog.at_level(logging.WARNING, logger="webapp.curation.roles"):
        _, missing = merchandiser_group_ensure()
    assert "search.view_shopperevent" in missing and "search.view_shopperevent" not in group_permissions()
    assert "permission search.view_shopperevent does not exist yet" in caplog.text

    Permission.objects.create(content_type=content_type, codename="view_shopperevent", name=name)
    _, missing = merchandiser_group_ensure()
    assert "search.view_shopperevent" not in missing and "search.view_shopperevent" in group_permissions()


@pytest.mark.django_db
def test_ensure_admin_creates_the_demo_merchandiser_once(monkeypatch, settings, tmp_path, capsys):
    from django.contrib.auth import get_user_model

    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("ADMIN_PASSWORD", "admin-pass-123")
    monkeypatch.setenv("MERCHANDISER_PASSWORD", "merch-pass-123")
    call_command("ensure_admin")
    merch = get_user_model().objects.get(username="merch")
    assert merch.is_staff and not merch.is_superuser and merch.check_password("merch-pass-123")
    assert list(merch.groups.values_list("name", flat=True)) == [MERCHANDISER_GROUP]
    assert merch.has_perm("curation.change_triplet") and not merch.has_perm("catalog.change_product")
    assert (tmp_path / "merchandiser-credentials.txt").read_text() == "merch\nmerch-pass-123\n"
    assert "merchandiser user 'merch' created" in capsys.readouterr().out

    monkeypatch.setenv("MERCHANDISER_PASSWORD", "changed-later")
    call_command("ensure_admin")  # idempotent: nothing printed, the password kept
    assert capsys.readouterr().out == "" and get_user_model().objects.get(username="merch").check_password(
        "merch-pass-123"
    )


@pytest.fixture
def merch_client(client, db):
    merchandiser_group_ensure()
    make_user("merch", staff=True, group=MERCHANDISER_GROUP)
    assert client.login(username="merch", password="pw-12345678")
    return client


@pytest.fixture
def catalog(db, fashion_items):
    products = add_products([(f"sku-{i}", png, "Shirt") for i, (png, _) in enumerate(fashion_items[:4])])
    return products, shop_triplets([p.sku for p in products], 5)


def test_a_merchandiser_reviews_triplets_and_reads_the_catalog_and_model_versions(merch_client, catalog):
    products, triplets = catalog
    assert merch_client.get("/curation/review/").status_code == 200
    assert len(merch_client.get("/curation/review/triplets/").json()["triplets"]) == 5
    answer = merch_client.post(
        f"/curation/review/triplets/{triplets[0].pk}/decision/",
        json.dumps({"action": "approve"}),
        content_type="application/json",
    )
    assert answer.status_code == 200 and answer.json()["decision"]["reviewer"] == "merch"
    assert merch_client.get("/curation/refs/shop:sku-1.png").status_code == 200

    assert merch_client.get("/admin/curation/triplet/").status_code == 200
    response = merch_client.post(
        "/admin/curation/triplet/", {"action": "reject_triplets", "_selected_action": [triplets[1].pk]}
    )
    assert response.status_code == 302 and Triplet.objects.get(pk=triplets[1].pk).status == "rejected"
    assert merch_client.get(f"/admin/curation/triplet/{triplets[1].pk}/change/").status_code == 200
    assert merch_client.get(f"/admin/curation/triplet/{triplets[1].pk}/delete/").status_code == 403

    for url in (
        "/admin/catalog/product/",
        f"/admin/catalog/product/{products[0].pk}/change/",
        "/admin/search/modelversion/",
    ):
        assert merch_client.get(url).status_code == 200, url


def test_a_merchandiser_cannot_change_products_prices_categories_or_users(merch_client, catalog):
    products, _ = catalog
    product = products[0]
    category = product.category
    assert merch_client.get("/admin/catalog/product/add/").status_code == 403
    assert merch_client.get(f"/admin/catalog/product/{product.pk}/delete/").status_code == 403
    assert merch_client.post(f"/admin/catalog/product/{product.pk}/delete/", {"post": "yes"}).status_code == 403
    change = merch_client.post(
        f"/admin/catalog/product/{product.pk}/change/",
        {"sku": product.sku, "title": "Cheap now", "price": "0.01", "currency": "USD", "category": category.pk},
    )
    assert change.status_code == 403
    product.refresh_from_db()
    assert (product.price, product.title) == (Decimal("10.00"), "Item sku-0")

    assert merch_client.get("/admin/catalog/category/add/").status_code == 403
    assert (
        merch_client.post(f"/admin/catalog/category/{category.pk}/change/", {"name": "X", "slug": "x"}).status_code
        == 403
    )
    assert Category.objects.get(pk=category.pk).name == "Shirt"
    assert merch_client.get("/admin/catalog/productimage/add/").status_code == 403

    from django.contrib.auth import get_user_model

    merch = get_user_model().objects.get(username="merch")
    for url in (
        "/admin/auth/user/",
        f"/admin/auth/user/{merch.pk}/change/",
        "/admin/auth/user/add/",
        "/admin/auth/group/",
    ):
        assert merch_client.get(url).status_code == 403, url
    assert merch_client.post(f"/admin/auth/user/{merch.pk}/change/", {"is_superuser": "on"}).status_code == 403
    merch.refresh_from_db()
    assert not merch.is_superuser and not merch.has_perm("catalog.change_product")


def test_a_merchandiser_cannot_write_through_the_api(merch_client, catalog):
    products, _ = catalog
    created = merch_client.post(
        "/api/products/",
        json.dumps({"sku": "new", "title": "New", "price": "1.00", "category": "Shirt"}),
        content_type="application/json",
    )
    deleted = merch_client.delete(f"/api/products/{products[0].pk}/")
    assert created.status_code == 403 and deleted.status_code == 403
    assert not Product.objects.filter(sku="new").exists() and Product.objects.filter(pk=products[0].pk).exists()


CURATION_PAGES = ("/curation/review/", "/curation/refs/shop:sku-1.png", "/admin/curation/triplet/")


def curation_json_calls(triplet_id: int):
    return (
        ("get", "/curation/review/triplets/", {}),
        ("post", f"/curation/review/triplets/{triplet_id}/decision/", {"action": "approve"}),
        ("post", "/curation/review/decisions/1/undo/", {}),
    )


def test_anonymous_visitors_reach_no_curation_page_or_endpoint(client, catalog):
    _, triplets = catalog
    for url in CURATION_PAGES:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    for method, url, data in curation_json_calls(triplets[0].pk):
        assert getattr(client, method)(url, data).status_code == 403, url
    assert Triplet.objects.get(pk=triplets[0].pk).status == "pending"


def test_a_shopper_reaches_no_curation_page_or_endpoint(client, catalog):
    _, triplets = catalog
    make_user("shopper")
    assert client.login(username="shopper", password="pw-12345678")
    assert client.get("/curation/review/").status_code == 403
    assert client.get("/curation/refs/shop:sku-1.png").status_code == 403
    admin_page = client.get("/admin/curation/triplet/")  # the admin sends non-staff users to its login
    assert admin_page.status_code == 302 and admin_page["Location"].startswith("/admin/login/")
    for method, url, data in curation_json_calls(triplets[0].pk):
        response = getattr(client, method)(url, data)
        assert response.status_code == 403 and "permission" in response.json()["detail"], url
    assert Triplet.objects.get(pk=triplets[0].pk).status == "pending"

    # Staff without the curation permissions: refused too.
    make_user("clerk", staff=True)
    client.login(username="clerk", password="pw-12345678")
    assert client.get("/curation/review/").status_code == 403
    assert client.get("/admin/curation/triplet/").status_code == 403
