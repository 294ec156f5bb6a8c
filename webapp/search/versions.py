"""Model versions: register an artifact, activate it (re-embed the catalog, swap the alias), roll back.

Activating a version embeds every ready catalog image with that version's embedder into
a NEW collection (`<prefix>_<model_version>`) while the product keeps reading the active one, runs
catch-up passes for images ingested or edited meanwhile, then points the alias at the new collection
(one atomic alias swap: no downtime). The previous version becomes standby and its collection is kept,
so rolling back is another alias swap. Every step is idempotent: re-running resumes or does nothing.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from webapp.catalog.images import InvalidImage, open_normalised, validate_image_bytes
from webapp.catalog.models import ProductImage
from webapp.search import runtime
from webapp.search.models import ModelVersion
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

ARTIFACT_FILES = ("weights.pt", "config.json", "metrics.json", "data_hash")
REEMBED_BATCH_SIZE = 64
CATCH_UP_MARGIN = timedelta(seconds=5)  # overlapping windows: a commit racing a pass is never missed
MAX_CATCH_UP_PASSES = 3
# The re-embed covers ready images. A pending (or processing) image is embedded by its own ingest task with
# whichever version is active when it runs, and caught up if that is still the old one: embedding it
# here too would embed it twice and before its bytes are validated. Its vector is never pruned.
REEMBED_STATUSES = (ProductImage.Status.READY,)
KEEP_STATUSES = (ProductImage.Status.READY, ProductImage.Status.PENDING, ProductImage.Status.PROCESSING)

State = ModelVersion.State


class ArtifactInvalid(ValueError):
    """The artifact directory is missing a file, or its config does not parse."""


class ReembedFailed(RuntimeError):
    """The re-embed could not complete (the version is marked failed, the alias is untouched)."""


class VersionError(ValueError):
    """An activation or rollback that makes no sense in the current state."""


# Registering -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Artifact:
    artifact_dir: str
    model_version: str
    config: dict
    metrics: dict
    data_hash: str


def artifact_read(artifact_dir: str | Path) -> Artifact:
    """Validate a VisNet artifact directory (weights.pt, config.json, metrics.json, data_hash)."""
    path = Path(artifact_dir).resolve()
    if not path.is_dir():
        raise ArtifactInvalid(f"{path} is not a directory")
    missing = [name for name in ARTIFACT_FILES if not (path / name).is_file()]
    if missing:
        raise ArtifactInvalid(f"{path} lacks {', '.join(missing)}")
    documents = {}
    for name in ("config.json", "metrics.json"):
        try:
            documents[name] = json.loads((path / name).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactInvalid(f"{path / name} does not parse: {exc}") from exc
        if not isinstance(documents[name], dict):
            raise ArtifactInvalid(f"{path / name} is not a JSON object")
    config = documents["config.json"]
    model_version = str(config.get("model_version") or "").strip()
    if not model_version:
        raise ArtifactInvalid(f"{path / 'config.json'} has no model_version")
    if len(model_version) > 120:
        raise ArtifactInvalid(f"model_version {model_version!r} is longer than 120 characters")
    return Artifact(str(path), model_version, config, documents["metrics.json"], (path / "data_hash").read_text().strip())


def imagenet_version_name(backbone: str, image_size: int) -> str:
    return f"imagenet-{backbone}-{int(image_size)}"


def model_version_register(*, artifact_dir: str | Path | None = None, kind: str = ModelVersion.Kind.VISNET,
                           backbone: str | None = None, image_size: int | None = None) -> tuple[ModelVersion, bool]:
    """Register a VisNet artifact (kind visnet) or an ImageNet stand-in (kind imagenet); idempotent.

    Returns (version, created). A model_version already registered from a different artifact
    (other data hash or weights config) is refused: versions are immutable.
    """
    if kind == ModelVersion.Kind.IMAGENET:
        backbone = backbone or settings.EMBEDDER_BACKBONE
        image_size = int(image_size or settings.EMBEDDER_IMAGE_SIZE)
        name = imagenet_version_name(backbone, image_size)
        defaults = {"kind": kind, "config": {"backbone": backbone, "image_size": image_size}}
    elif kind == ModelVersion.Kind.VISNET:
        if artifact_dir is None:
            raise ArtifactInvalid("a VisNet version needs its artifact directory")
        artifact = artifact_read(artifact_dir)
        name = artifact.model_version
        defaults = {"kind": kind, "artifact_dir": artifact.artifact_dir, "config": artifact.config,
                    "metrics": artifact.metrics, "data_hash": artifact.data_hash}
        model_section = artifact.config.get("model") if isinstance(artifact.config.get("model"), dict) else {}
        dim = model_section.get("embedding_dim") or artifact.config.get("embedding_dim") or artifact.config.get("dim")
        if isinstance(dim, int):
            defaults["dim"] = dim
    else:
        raise ArtifactInvalid(f"unknown kind {kind!r}")
    try:
        with transaction.atomic():
            version, created = ModelVersion.objects.get_or_create(model_version=name, defaults=defaults)
    except IntegrityError:
        version, created = ModelVersion.objects.get(model_version=name), False
    if not created:
        if version.kind != kind or (kind == ModelVersion.Kind.VISNET and version.data_hash != defaults["data_hash"]):
            raise ArtifactInvalid(f"{name} is already registered from a different artifact "
                                  f"(kind {version.kind}, data hash {version.data_hash or '-'}); "
                                  "give the new model its own model_version")
        if kind == ModelVersion.Kind.VISNET and version.artifact_dir != defaults["artifact_dir"]:
            # The same artifact moved (e.g. a new checkout): follow it, keep everything else.
            version.artifact_dir = defaults["artifact_dir"]
            version.save(update_fields=["artifact_dir", "updated_at"])
    else:
        logger.info("registered model version %s (%s)", name, kind)
    return version, created


def ensure_default_version() -> ModelVersion:
    """The active version; on first use, register what the alias already serves (or the ImageNet stand-in).

    With the vector store unreachable nothing is registered: an unsaved stand-in is returned, so the
    caller proceeds and meets the outage where it always did.
    """
    active = ModelVersion.objects.filter(state=State.ACTIVE).order_by("-activated_at", "-id").first()
    if active is not None:
        return active
    backbone, image_size = settings.EMBEDDER_BACKBONE, int(settings.EMBEDDER_IMAGE_SIZE)
    try:
        current = runtime.get_vector_store().active_collection()
    except VectorStoreUnavailable:
        return ModelVersion(model_version=imagenet_version_name(backbone, image_size), kind=ModelVersion.Kind.IMAGENET,
                            config={"backbone": backbone, "image_size": image_size}, state=State.ACTIVE)
    version = None
    if current is not None:
        for candidate in ModelVersion.objects.all():
            if runtime.collection_name(candidate.model_version) == current:
                version = candidate
                break
        if version is None:
            match = re.search(r"imagenet_(efficientnet_lite\d)_(\d+)$", current)
            if match:
                backbone, image_size = match.group(1), int(match.group(2))
    if version is None:
        version, _ = model_version_register(kind=ModelVersion.Kind.IMAGENET, backbone=backbone, image_size=image_size)
    with transaction.atomic():
        if not ModelVersion.objects.select_for_update().filter(state=State.ACTIVE).exists():
            ModelVersion.objects.filter(pk=version.pk).update(state=State.ACTIVE, activated_at=timezone.now(), error="")
    return ModelVersion.objects.filter(state=State.ACTIVE).order_by("-activated_at", "-id").first()


# Activating ------------------------------------------------------------------------------------
def model_version_activate(*, version: ModelVersion, queue: bool = True) -> str:
    """Start re-embedding the catalog for `version` in the background; idempotent.

    Returns what happened: "active" (nothing to do), "queued" (started, or resumed when it was
    already embedding). The work runs in the `reembed_catalog` task; `queue=False` leaves it to the
    caller (catalog_reembed in-process).
    """
    runtime.active_version(fresh=True)  # registers the current stand-in first, so it becomes standby
    token = uuid.uuid4().hex
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state == State.ACTIVE:
            return "active"
        if locked.state != State.EMBEDDING:
            # A fresh start (registered, failed, or a standby version re-embedded from scratch).
            locked.embedded = locked.total = 0
            locked.reembed_cursor = 0
            locked.reembed_started_at = None
        locked.state = State.EMBEDDING
        locked.error = ""
        locked.task_token = token
        locked.save()
        if queue:
            transaction.on_commit(lambda: _queue_reembed(locked.pk, token))
    version.refresh_from_db()
    logger.info("activating model version %s", version.model_version)
    return "queued"


def _queue_reembed(version_id: int, token: str, countdown: int | None = None) -> None:
    from workers.tasks import reembed_catalog

    reembed_catalog.apply_async(args=[version_id, token], countdown=countdown)


def model_version_mark_failed(*, version_id: int, reason: str) -> None:
    ModelVersion.objects.filter(pk=version_id).exclude(state=State.ACTIVE).update(
        state=State.FAILED, error=reason[:4000], task_token="", updated_at=timezone.now())
    logger.error("model version %s failed: %s", version_id, reason)


def _eligible():
    return ProductImage.objects.filter(status__in=REEMBED_STATUSES)


def _load_picture(image: ProductImage):
    with image.image.open("rb") as handle:
        content = handle.read()
    validate_image_bytes(content)
    return open_normalised(content)


def _embed_into(embedder, version: ModelVersion, images: list[ProductImage], collection: str) -> list[int]:
    """Embed images with `embedder` and upsert them into `collection` by name; returns the ids written."""
    from webapp.search.services import vector_row

    loaded = []
    for image in images:
        try:
            loaded.append((image, _load_picture(image)))
        except (InvalidImage, FileNotFoundError, OSError) as exc:
            logger.warning("re-embed %s: skipping image %s (%s)", version.model_version, image.pk, exc)
    if not loaded:
        return []
    vectors = embedder.embed([picture for _, picture in loaded])
    rows = [vector_row(image, vector, version.model_version) for (image, _), vector in zip(loaded, vectors)]
    runtime.get_vector_store().upsert(rows, collection=collection, flush=False)
    return [image.pk for image, _ in loaded]


def catalog_reembed(*, version_id: int, token: str = "", time_budget: float | None = None,
                    batch_size: int = REEMBED_BATCH_SIZE) -> bool:
    """The body of the re-embed task. Returns True when finished, False when time ran out (call again).

    Progress (cursor, counts) is saved after every batch, so a re-run resumes. A non-transient error
    marks the version failed with the reason and raises ReembedFailed; the alias is untouched.
    Transient errors (VectorStoreUnavailable, database OperationalError) propagate for a retry.
    """
    from django.db import OperationalError

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        logger.warning("re-embed: model version %s no longer exists", version_id)
        return True
    if token and version.task_token != token:
        logger.info("re-embed of %s superseded by a newer request", version.model_version)
        return True
    if version.state == State.ACTIVE:
        _reconcile_active(version, batch_size)
        return True
    if version.state != State.EMBEDDING:
        if token:
            return True  # failed or rolled back meanwhile: a stale task does nothing
        model_version_activate(version=version, queue=False)
        version.refresh_from_db()
    try:
        return _reembed(version, time_budget, batch_size)
    except (VectorStoreUnavailable, OperationalError, ConnectionError, TimeoutError):
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        model_version_mark_failed(version_id=version.pk, reason=reason)
        raise ReembedFailed(reason) from exc


def _reembed(version: ModelVersion, time_budget: float | None, batch_size: int) -> bool:
    started = time.monotonic()
    embedder = runtime.embedder_for(version)
    store = runtime.get_vector_store()
    collection = store.create_collection(version.model_version, embedder.dim)
    if version.dim != embedder.dim:
        version.dim = embedder.dim
        version.save(update_fields=["dim", "updated_at"])
    if version.reembed_started_at is None:
        version.reembed_started_at = timezone.now()
        version.total = _eligible().count()
        version.embedded = 0
        version.reembed_cursor = 0
        version.save(update_fields=["reembed_started_at", "total", "embedded", "reembed_cursor", "updated_at"])
        logger.info("re-embed %s: %d images into %s", version.model_version, version.total, collection)

    # Main pass: every eligible image, in id order, from the saved cursor.
    while True:
        batch = list(_eligible().filter(pk__gt=version.reembed_cursor).select_related("product")
                     .order_by("pk")[:batch_size])
        if not batch:
            break
        written = _embed_into(embedder, version, batch, collection)
        version.reembed_cursor = batch[-1].pk
        version.embedded += len(written)
        version.total = max(version.total, version.embedded)
        ModelVersion.objects.filter(pk=version.pk).update(
            reembed_cursor=version.reembed_cursor, embedded=version.embedded, total=version.total,
            updated_at=timezone.now())
        logger.info("re-embed %s: %d/%d", version.model_version, version.embedded, version.total)
        if time_budget is not None and time.monotonic() - started > time_budget:
            return False

    # Catch-up: images created, re-ingested or edited since the re-embed started (until a pass finds none).
    since = version.reembed_started_at - CATCH_UP_MARGIN
    seen: dict[int, tuple] = {}
    for _ in range(MAX_CATCH_UP_PASSES):
        pass_started = timezone.now()
        count = _catch_up(embedder, version, collection, since, seen, batch_size)
        logger.info("re-embed %s: catch-up pass re-embedded %d images", version.model_version, count)
        since = pass_started - CATCH_UP_MARGIN
        if count == 0:
            break
    _prune(collection)
    store._call("flush", collection)

    # The swap: alias and states together; the previous version's collection is kept (standby).
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state != State.EMBEDDING or locked.task_token != version.task_token:
            logger.info("re-embed of %s superseded before the swap", version.model_version)
            return True
        previous = list(ModelVersion.objects.select_for_update().filter(state=State.ACTIVE).exclude(pk=version.pk))
        store.point_alias(collection)
        now = timezone.now()
        ModelVersion.objects.filter(pk__in=[v.pk for v in previous]).update(
            state=State.STANDBY, deactivated_at=now, updated_at=now)
        locked.state = State.ACTIVE
        locked.activated_at = now
        locked.error = ""
        locked.reembed_cursor = version.reembed_cursor
        locked.embedded = max(version.embedded, locked.embedded)
        locked.save()
    runtime.reset_active_version_cache()
    logger.info("model version %s is active (alias %s -> %s); standby: %s", version.model_version, store.alias,
                collection, ", ".join(v.model_version for v in previous) or "-")

    # Images the old version ingested while we swapped, then stamp every vector's version on its image.
    _catch_up(embedder, version, collection, since, seen, batch_size)
    store._call("flush", collection)
    ProductImage.objects.filter(status=ProductImage.Status.READY, embedded_at__lt=since).exclude(
        model_version=version.model_version).update(model_version=version.model_version)
    _stamp(list(seen), version.model_version)
    # A last look once in-flight ingest batches (started before the swap) have committed.
    token = version.task_token
    transaction.on_commit(lambda: _queue_reembed(version.pk, token, countdown=10))
    return True


def _catch_up(embedder, version: ModelVersion, collection: str, since, seen: dict, batch_size: int) -> int:
    """Re-embed the images created, re-ingested or edited since `since` that this run has not yet
    embedded in their current state (`seen`: image id -> its change marks when we embedded it)."""
    changed = _eligible().filter(Q(pk__gt=version.reembed_cursor) | Q(created_at__gte=since)
                                 | Q(embedded_at__gte=since) | Q(product__updated_at__gte=since))
    marks = {pk: (embedded_at, updated_at, status)
             for pk, embedded_at, updated_at, status in changed.values_list("pk", "embedded_at", "product__updated_at",
                                                                            "status")}
    todo = sorted(pk for pk, mark in marks.items() if seen.get(pk) != mark)
    count = 0
    for start in range(0, len(todo), batch_size):
        batch = list(ProductImage.objects.filter(pk__in=todo[start:start + batch_size]).select_related("product"))
        count += len(_embed_into(embedder, version, batch, collection))
    for pk in todo:
        seen[pk] = marks[pk]
    version.reembed_cursor = max([version.reembed_cursor, *todo])
    return count


def _reconcile_active(version: ModelVersion, batch_size: int) -> None:
    """Re-embed the ready images whose vector is not (known to be) from the active version; idempotent."""
    stale = ProductImage.objects.filter(status=ProductImage.Status.READY).exclude(model_version=version.model_version)
    ids = list(stale.values_list("pk", flat=True))
    if not ids:
        return
    embedder = runtime.embedder_for(version)
    collection = runtime.get_vector_store().create_collection(version.model_version, embedder.dim)
    written = []
    for start in range(0, len(ids), batch_size):
        batch = list(ProductImage.objects.filter(pk__in=ids[start:start + batch_size]).select_related("product"))
        written += _embed_into(embedder, version, batch, collection)
    runtime.get_vector_store()._call("flush", collection)
    _stamp(written, version.model_version)
    logger.info("model version %s: reconciled %d image(s)", version.model_version, len(written))


def _stamp(image_ids: list[int], model_version: str, chunk: int = 5000) -> None:
    """Record on ready images that their vector is now from `model_version` (chunked: SQLite limits)."""
    for start in range(0, len(image_ids), chunk):
        ProductImage.objects.filter(pk__in=image_ids[start:start + chunk], status=ProductImage.Status.READY).exclude(
            model_version=model_version).update(model_version=model_version)


def _prune(collection: str) -> None:
    """Remove from `collection` the vectors of images deleted (or failed) since they were embedded."""
    client = runtime.get_vector_store().client
    found: set[int] = set()
    iterator = client.query_iterator(collection_name=collection, batch_size=1000, filter="image_id >= 0",
                                     output_fields=["image_id"])
    try:
        while True:
            rows = iterator.next()
            if not rows:
                break
            found.update(int(row["image_id"]) for row in rows)
    finally:
        iterator.close()
    keep = set(ProductImage.objects.filter(status__in=KEEP_STATUSES).values_list("pk", flat=True).iterator())
    stale = sorted(found - keep)
    if stale:
        runtime.collection_store(collection).delete_images(stale)
        logger.info("re-embed: pruned %d vector(s) of deleted images from %s", len(stale), collection)


# Rolling back ----------------------------------------------------------------------------------
def model_version_rollback(*, version: ModelVersion | None = None) -> ModelVersion:
    """Point the alias back at a standby version's collection (by default the latest standby).

    Images ingested or edited while it was standby are re-ingested with it (queued), and every
    vector's version is recorded on its image.
    """
    current = runtime.active_version(fresh=True)
    if version is None:
        version = ModelVersion.objects.filter(state=State.STANDBY).order_by("-deactivated_at", "-id").first()
        if version is None:
            raise VersionError("there is no standby version to roll back to")
    version.refresh_from_db()
    if version.state == State.ACTIVE:
        raise VersionError(f"{version.model_version} is already active")
    if version.state != State.STANDBY:
        raise VersionError(f"{version.model_version} is {version.state}; only a standby version (its collection "
                           "kept) can be rolled back to — activate it instead to re-embed the catalog")
    store = runtime.get_vector_store()
    collection = runtime.collection_name(version.model_version)
    if not runtime.collection_store(collection).exists():
        raise VersionError(f"the collection {collection} of {version.model_version} no longer exists; activate it")
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state != State.STANDBY:
            raise VersionError(f"{version.model_version} is {locked.state}")
        others = list(ModelVersion.objects.select_for_update().filter(state__in=[State.ACTIVE, State.EMBEDDING])
                      .exclude(pk=version.pk))
        store.point_alias(collection)
        now = timezone.now()
        # Previously active -> standby; an unfinished re-embed is abandoned (its task sees the state).
        ModelVersion.objects.filter(pk__in=[v.pk for v in others if v.state == State.ACTIVE]).update(
            state=State.STANDBY, deactivated_at=now, updated_at=now)
        ModelVersion.objects.filter(pk__in=[v.pk for v in others if v.state == State.EMBEDDING]).update(
            state=State.REGISTERED, task_token="", updated_at=now)
        since = (locked.deactivated_at or now) - CATCH_UP_MARGIN
        locked.state = State.ACTIVE
        locked.activated_at = now
        locked.task_token = uuid.uuid4().hex
        locked.save()
        changed_since = Q(created_at__gte=since) | Q(embedded_at__gte=since) | Q(product__updated_at__gte=since)
        ready = ProductImage.objects.filter(status=ProductImage.Status.READY)
        changed = list(ready.filter(changed_since).values_list("pk", flat=True))
        ready.exclude(changed_since).exclude(model_version=locked.model_version).update(
            model_version=locked.model_version)
        if changed:
            from webapp.catalog.services import product_images_queue_ingest

            transaction.on_commit(lambda: product_images_queue_ingest(image_ids=changed))
    runtime.reset_active_version_cache()
    logger.info("rolled back to %s (was %s); %d changed image(s) queued", version.model_version,
                current.model_version, len(changed))
    version.refresh_from_db()
    return version


def kept_collections() -> list[str]:
    """Collections besides the alias that deletes must reach: versions embedding or on standby."""
    names = ModelVersion.objects.filter(state__in=[State.EMBEDDING, State.STANDBY]).values_list("model_version",
                                                                                               flat=True)
    return [runtime.collection_name(name) for name in names]
