"""The model-version admin: per-version buttons (activate, A/B start and end, roll back, prune) guarded by
search.activate_modelversion, and pruning that only drops what it listed and never what serves or rolls back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.utils import timezone

from webapp.search import activation
from webapp.search.models import ModelVersion
from webapp.search.registry import reset_active_version_cache
from webapp.search.versions import model_version_register

State = ModelVersion.State


def staff_user(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="search", codename__in=codenames))
    return user


def imagenet_version(size: int, state: str = State.REGISTERED, **fields) -> ModelVersion:
    version, _ = model_version_register(kind="imagenet", image_size=size)
    ModelVersion.objects.filter(pk=version.pk).update(state=state, **fields)
    return ModelVersion.objects.get(pk=version.pk)


def page(client, version: ModelVersion) -> str:
    response = client.get(f"/admin/search/modelversion/{version.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def post(client, version: ModelVersion, action: str, **data):
    return client.post(f"/admin/search/modelversion/{version.pk}/{action}/", data)


@pytest.mark.django_db
def test_a_merchandiser_with_the_permission_activates_and_runs_an_ab_test_one_without_cannot(client, serving_version):
    candidate = imagenet_version(160)
    other = imagenet_version(192)

    viewer = staff_user("viewer", "view_modelversion")
    client.force_login(viewer)
    body = page(client, candidate)
    assert 'value="Activate"' not in body and "Can activate, A/B test and roll back" in body
    for action, data in (("activate", {}), ("ab-start", {"percent": "10"}), ("ab-end", {}), ("rollback", {})):
        assert post(client, candidate, action, **data).status_code == 403, action
    assert client.get("/admin/search/modelversion/prune/").status_code == 403
    assert ModelVersion.objects.get(pk=candidate.pk).state == State.REGISTERED

    merchandiser = staff_user("merch", "view_modelversion", "activate_modelversion")
    client.force_login(merchandiser)
    body = page(client, candidate)
    assert 'value="Activate"' in body and 'value="Start A/B"' in body and 'value="Roll back to this"' not in body
    assert 'value="End A/B"' not in body and "Prune old collections" in body
    assert client.get(f"/admin/search/modelversion/{candidate.pk}/activate/").status_code == 403  # POST only

    # Start an A/B test at 10%: the catalog is embedded into the candidate's collection first (alias untouched).
    response = post(client, candidate, "ab-start", percent="10")
    assert response.status_code == 302 and response["Location"].endswith(f"/modelversion/{candidate.pk}/change/")
    candidate.refresh_from_db()
    assert (candidate.state, candidate.ab_share) == (State.EMBEDDING, 0.1)
    body = page(client, candidate)
    assert 'id="reembed-progress"' in body and 'http-equiv="refresh"' in body and 'value="End A/B"' in body
    # One A/B test at a time, and never most of the shoppers.
    post(client, other, "ab-start", percent="10")
    assert ModelVersion.objects.get(pk=other.pk).state == State.REGISTERED
    post(client, candidate, "ab-start", percent="80")
    assert ModelVersion.objects.get(pk=candidate.pk).ab_share == 0.1
    post(client, candidate, "ab-start", percent="25")  # while it is being prepared: the share changes
    assert ModelVersion.objects.get(pk=candidate.pk).ab_share == 0.25
    post(client, candidate, "ab-end")
    candidate.refresh_from_db()
    assert (candidate.state, candidate.ab_share, candidate.task_token) == (State.REGISTERED, 0.0, "")

    # Activate: re-embed in the background, then the swap.
    response = post(client, other, "activate")
    assert response.status_code == 302
    other.refresh_from_db()
    assert other.state == State.EMBEDDING and other.ab_share == 0 and other.task_token
    assert ModelVersion.objects.get(pk=serving_version.pk).state == State.ACTIVE  # until the worker swaps

    # The changelist action is guarded by the same permission.
    client.force_login(viewer)
    changelist = client.get("/admin/search/modelversion/").content.decode()
    assert "activate_versions" not in changelist and "Prune old collections" not in changelist
    client.force_login(merchandiser)
    assert "activate_versions" in client.get("/admin/search/modelversion/").content.decode()


@pytest.fixture
def versions_with_collections(db, vector_store):
    """An active version behind the alias, three standby ones (newest first), a candidate, one being embedded, a
    registered one with a leftover collection, and a collection no version claims - each with a real collection."""
    now = timezone.now()
    store = vector_store
    made = {
        "active": imagenet_version(96, State.ACTIVE, activated_at=now),
        "standby_new": imagenet_version(112, State.STANDBY, deactivated_at=now, activated_at=now - timedelta(days=3)),
        "standby_mid": imagenet_version(128, State.STANDBY, deactivated_at=now - timedelta(days=1)),
        "standby_old": imagenet_version(144, State.STANDBY, deactivated_at=now - timedelta(days=2)),
        "candidate": imagenet_version(160, State.CANDIDATE, ab_share=0.1),
        "embedding": imagenet_version(176, State.EMBEDDING),
        "registered": imagenet_version(192, State.REGISTERED),
    }
    names = {key: store.create_collection(version.model_version, 8) for key, version in made.items()}
    names["orphan"] = store.create_collection("left-behind", 8)
    store.point_alias(names["active"])
    reset_active_version_cache()
    yield made, names
    reset_active_version_cache()


def test_prune_drops_only_what_it_listed_and_never_the_serving_or_latest_standby_collections(
    versions_with_collections, vector_store, client
):
    made, names = versions_with_collections
    store = vector_store
    protected = [names[key] for key in ("active", "standby_new", "candidate", "embedding")]

    plan = activation.collections_prune_plan(keep=1)
    assert sorted(plan.drop_names) == sorted(names[k] for k in ("standby_mid", "standby_old", "registered", "orphan"))
    assert sorted(name for name, _ in plan.keep) == sorted(protected)
    assert activation.collections_prune_plan(keep=0).drop_names == plan.drop_names  # the latest standby stays

    # The command lists without --yes and drops nothing.
    call_command("prune_collections", "--keep", "1")
    assert all(store.has_collection(name) for name in names.values())

    # The admin's confirmation page lists what goes; the POST drops only what the person confirmed.
    merchandiser = staff_user("merch", "view_modelversion", "activate_modelversion")
    client.force_login(merchandiser)
    body = client.get("/admin/search/modelversion/prune/?keep=2").content.decode()
    for key in ("standby_old", "registered", "orphan"):
        assert names[key] in body.split('id="prune-drop"')[1].split("</ul>")[0], key
    assert names["standby_mid"] not in body.split('id="prune-drop"')[1].split("</ul>")[0]
    response = client.post(
        "/admin/search/modelversion/prune/",
        {"keep": "2", "collection": [names["standby_old"], names["orphan"], names["active"], names["candidate"]]},
    )
    assert response.status_code == 302
    assert not store.has_collection(names["standby_old"]) and not store.has_collection(names["orphan"])
    assert store.has_collection(names["registered"])  # listed but not confirmed: kept
    assert all(store.has_collection(name) for name in protected)  # posted, but never prunable
    assert ModelVersion.objects.get(pk=made["standby_old"].pk).state == State.REGISTERED  # no rollback target now

    call_command("prune_collections", "--keep", "1", "--yes")
    assert not store.has_collection(names["standby_mid"]) and not store.has_collection(names["registered"])
    assert all(store.has_collection(name) for name in protected)
    assert store.active_collection() == names["active"]
    assert "Nothing to prune" in client.get("/admin/search/modelversion/prune/?keep=1").content.decode()

    # Roll back from the version's page: the alias points at the kept collection at once.
    body = page(client, made["standby_new"])
    assert 'value="Roll back to this"' in body
    assert post(client, made["standby_new"], "rollback").status_code == 302
    assert store.active_collection() == names["standby_new"]
    assert ModelVersion.objects.get(pk=made["standby_new"].pk).state == State.ACTIVE
    assert ModelVersion.objects.get(pk=made["active"].pk).state == State.STANDBY
    assert ModelVersion.objects.get(pk=made["candidate"].pk).state == State.CANDIDATE  # the A/B test goes on
    assert ModelVersion.objects.get(pk=made["embedding"].pk).state == State.REGISTERED  # abandoned, as before

    viewer = staff_user("viewer", "view_modelversion")
    client.force_login(viewer)
    assert (
        client.post("/admin/search/modelversion/prune/", {"keep": "1", "collection": [names["active"]]}).status_code
        == 403
    )
