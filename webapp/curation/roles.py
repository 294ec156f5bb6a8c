"""The merchandiser role: a Django group with only what reviewing triplets and running the model loop needs."""

from __future__ import annotations

import logging

from django.contrib.auth.models import Group, Permission

logger = logging.getLogger(__name__)

MERCHANDISER_GROUP = "Merchandisers"
# Review triplets, look at the catalog and its near-duplicates, start a retrain, activate and roll back versions.
# Nothing that changes products, prices, categories, images or users.
MERCHANDISER_PERMISSIONS = (
    "curation.view_triplet",
    "curation.change_triplet",
    "curation.view_tripletdecision",
    "curation.view_queryphoto",
    "catalog.view_product",
    "catalog.view_category",
    "catalog.view_productimage",
    "catalog.view_duplicatepair",
    "catalog.change_duplicatepair",
    "search.view_modelversion",
    "search.activate_modelversion",
    "search.view_trainingrun",
    "search.add_trainingrun",
    "search.view_shopperevent",
)


def merchandiser_group_ensure(*, using: str = "default") -> tuple[Group, list[str]]:
    """Create or update the group so it holds exactly MERCHANDISER_PERMISSIONS; returns it and the missing ones.

    A permission whose model is not migrated yet is skipped with a warning (the next migrate adds it).
    """
    group, _ = Group.objects.using(using).get_or_create(name=MERCHANDISER_GROUP)
    wanted = {tuple(name.split(".", 1)) for name in MERCHANDISER_PERMISSIONS}
    found = list(
        Permission.objects.using(using)
        .filter(codename__in={codename for _, codename in wanted})
        .select_related("content_type")
    )
    permissions = [p for p in found if (p.content_type.app_label, p.codename) in wanted]
    present = {f"{p.content_type.app_label}.{p.codename}" for p in permissions}
    missing = [name for name in MERCHANDISER_PERMISSIONS if name not in present]
    for name in missing:
        logger.warning("merchandiser role: permission %s does not exist yet; skipped until it is migrated", name)
    group.permissions.set(permissions)
    return group, missing


def ensure_roles_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    """post_migrate receiver: runs once per migrate, after the last app's permissions were created."""
    from django.apps import apps

    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if app_config is None or app_config is not with_models[-1]:  # migrate signals only apps that have models
        return
    merchandiser_group_ensure(using=using)
