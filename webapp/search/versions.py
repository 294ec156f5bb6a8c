"""Registering model versions: a trained VisNet artifact, or the ImageNet stand-in as the default.

Writes only; the read side is `webapp.search.registry`. Activation (re-embed, alias swap, rollback)
is in `webapp.search.activation`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ml.artifacts import ArtifactInvalid, imagenet_version_name, read_artifact
from webapp.search import registry
from webapp.search.models import ModelVersion

logger = logging.getLogger(__name__)

State = ModelVersion.State

__all__ = ["ArtifactInvalid", "default_version_ensure", "imagenet_version_name", "model_version_register"]


def _visnet_defaults(artifact_dir: str | Path) -> tuple[str, dict]:
    artifact = read_artifact(artifact_dir)
    defaults = {
        "kind": ModelVersion.Kind.VISNET,
        "artifact_dir": str(artifact.path),
        "config": artifact.config,
        "metrics": artifact.metrics,
        "data_hash": artifact.data_hash,
        "dim": artifact.embedding_dim,
    }
    return artifact.model_version, defaults


def model_version_register(
    *,
    artifact_dir: str | Path | None = None,
    kind: str = ModelVersion.Kind.VISNET,
    backbone: str | None = None,
    image_size: int | None = None,
) -> tuple[ModelVersion, bool]:
    """Register a VisNet artifact (kind visnet) or an ImageNet stand-in (kind imagenet); idempotent.

    Returns (version, created). A model_version already registered from a different artifact
    (other data hash) is refused: versions are immutable.
    """
    if kind == ModelVersion.Kind.IMAGENET:
        backbone = backbone or settings.EMBEDDER_BACKBONE
        image_size = int(image_size or settings.EMBEDDER_IMAGE_SIZE)
        name = imagenet_version_name(backbone, image_size)
        defaults: dict = {"kind": kind, "config": {"backbone": backbone, "image_size": image_size}}
    elif kind == ModelVersion.Kind.VISNET:
        if artifact_dir is None:
            raise ArtifactInvalid("a VisNet version needs its artifact directory")
        name, defaults = _visnet_defaults(artifact_dir)
    else:
        raise ArtifactInvalid(f"unknown kind {kind!r}")
    try:
        with transaction.atomic():
            version, created = ModelVersion.objects.get_or_create(model_version=name, defaults=defaults)
    except IntegrityError:
        version, created = ModelVersion.objects.get(model_version=name), False
    if created:
        logger.info("registered model version %s (%s)", name, kind)
        return version, created
    if version.kind != kind or (kind == ModelVersion.Kind.VISNET and version.data_hash != defaults["data_hash"]):
        raise ArtifactInvalid(
            f"{name} is already registered from a different artifact "
            f"(kind {version.kind}, data hash {version.data_hash or '-'}); "
            "give the new model its own model_version"
        )
    if kind == ModelVersion.Kind.VISNET and version.artifact_dir != defaults["artifact_dir"]:
        # The same artifact moved (e.g. a new checkout): follow it, keep everything else.
        version.artifact_dir = defaults["artifact_dir"]
        version.save(update_fields=["artifact_dir", "updated_at"])
    return version, created


def _version_served_by_alias(collection: str) -> ModelVersion | None:
    """The registered version whose collection the alias points at, or the ImageNet stand-in it names."""
    store = registry.get_vector_store()
    for candidate in ModelVersion.objects.all():
        if store.collection_name(candidate.model_version) == collection:
            return candidate
    match = re.search(r"imagenet_(efficientnet_lite\d)_(\d+)$", collection)
    if match:
        return model_version_register(
            kind=ModelVersion.Kind.IMAGENET, backbone=match.group(1), image_size=int(match.group(2))
        )[0]
    return None


def default_version_ensure() -> ModelVersion:
    """The active version; with none, register and activate what the alias serves (or the ImageNet stand-in).

    Run by `make run`'s setup (`manage.py ensure_default_model`) and by ingestion before its first vector.
    Raises VectorStoreUnavailable when the store cannot say what the alias serves.
    """
    active = ModelVersion.objects.filter(state=State.ACTIVE).order_by("-activated_at", "-id").first()
    if active is not None:
        return active
    current = registry.get_vector_store().active_collection()
    version = _version_served_by_alias(current) if current is not None else None
    if version is None:
        version, _ = model_version_register(kind=ModelVersion.Kind.IMAGENET)
    with transaction.atomic():
        if not ModelVersion.objects.select_for_update().filter(state=State.ACTIVE).exists():
            ModelVersion.objects.filter(pk=version.pk).update(state=State.ACTIVE, activated_at=timezone.now(), error="")
    active = ModelVersion.objects.filter(state=State.ACTIVE).order_by("-activated_at", "-id").first()
    assert active is not None
    return active
