"""Activating model versions: re-embed the catalog into the version's own collection, swap the alias, roll back.

Activating a version embeds every ready catalog image with that version's embedder into
a NEW collection (`<prefix>_<model_version>`) while the product keeps reading the active one, runs
catch-up passes for images ingested or edited meanwhile, builds the version's precomputed similar lists
(webapp.recommendations: chunked and resumable, its progress on the version's admin page), catches up once
more and updates the lists of what it caught up, then points the alias at the new collection (one atomic alias
swap: no downtime, and the product pages of the new version read stored lists from the first request). The
previous version becomes standby and its collection is kept, so rolling back is another alias swap (its lists are
rebuilt in the background). Every step is idempotent: re-running resumes or does nothing.

The list build is the re-embed task's second phase, run in the same task chain (each task a time budget, then it
queues the next): the phase has started when the version's build job carries the version's task token. Entering
it moves `reembed_started_at` to the start of the last catch-up pass, so the catch-up after the build covers only
what changed while it ran.

A/B candidates: `model_version_prepare_candidate` runs the same re-embed but, instead of swapping, leaves the
version CANDIDATE serving `ab_share` of shoppers (webapp.search.experiments). While it is prepared (state
embedding with `ab_share` > 0: the share it will serve) and while it is a candidate, ingestion writes its
collection too (webapp.search.services), so activating a candidate only runs a catch-up pass before the swap.

Old collections are dropped only when asked (`collections_prune`: `manage.py prune_collections`, the admin); the
active, candidate and embedding versions' collections and the most recent standby one are never dropped.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import OperationalError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from ml.detection.crops import embed_items
from webapp.catalog.images import InvalidImage, open_stored_image
from webapp.catalog.models import ProductImage
from webapp.recommendations import services as recommendations
from webapp.recommendations.models import SimilarListBuild
from webapp.search import dispatch, registry
from webapp.search.embedders import Embedder
from webapp.search.models import ModelVersion
from webapp.search.services import item_pictures, vector_row
from webapp.search.vector_store import VectorStoreUnavailable
from webapp.search.versions import default_version_ensure

logger = logging.getLogger(__name__)

REEMBED_BATCH_SIZE = 64
CATCH_UP_MARGIN = timedelta(seconds=5)  # overlapping windows: a commit racing a pass is never missed
MAX_CATCH_UP_PASSES = 3
# The re-embed covers ready images. A pending (or processing) image is embedded by its own ingest task with
# whichever version is active when it runs, and caught up if that is still the old one: embedding it
# here too would embed it twice and before its bytes are validated. Its vector is never pruned.
REEMBED_STATUSES = (ProductImage.Status.READY,)
KEEP_STATUSES = (ProductImage.Status.READY, ProductImage.Status.PENDING, ProductImage.Status.PROCESSING)
TRANSIENT = (VectorStoreUnavailable, OperationalError, ConnectionError, TimeoutError)
MAX_AB_SHARE = 0.5  # a candidate never serves most shoppers: activate it instead

State = ModelVersion.State


class ReembedFailed(RuntimeError):
    """The re-embed could not complete (the version is marked failed, the alias is untouched)."""


class VersionError(ValueError):
    """An activation or rollback that makes no sense in the current state."""


# Activating ------------------------------------------------------------------------------------
def model_version_activate(*, version: ModelVersion, queue: bool = True) -> str:
    """Start re-embedding the catalog for `version` in the background; idempotent.

    Returns what happened: "active" (nothing to do), "queued" (started, or resumed when it was
    already embedding). The work runs in the `reembed_catalog` task; `queue=False` leaves it to the
    caller (catalog_reembed in-process).
    """
    default_version_ensure()  # the current stand-in is registered first, so it becomes standby
    token = uuid.uuid4().hex
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state == State.ACTIVE:
            return "active"
        if locked.state == State.CANDIDATE:
            # Ingestion kept its collection current: the task only catches up from now on, then swaps.
            newest = _eligible().aggregate(newest=Max("pk"))["newest"] or 0
            locked.reembed_cursor = max(locked.reembed_cursor, newest)
            locked.reembed_started_at = timezone.now()
            locked.total = locked.embedded = max(locked.embedded, _eligible().count())
            # Its lists were built when it was prepared and kept current since: the build phase is done already.
            SimilarListBuild.objects.filter(version=locked, state=SimilarListBuild.State.DONE).update(task_token=token)
        elif locked.state != State.EMBEDDING:
            # A fresh start (registered, failed, or a standby version re-embedded from scratch).
            _reset_progress(locked)
        # activating: no longer an A/B candidate (or one being prepared)
        _start_embedding(locked, token=token, share=0.0, queue=queue)
    version.refresh_from_db()
    logger.info("activating model version %s", version.model_version)
    return "queued"


def _reset_progress(locked: ModelVersion) -> None:
    locked.embedded = locked.total = 0
    locked.reembed_cursor = 0
    locked.reembed_started_at = None


def _start_embedding(locked: ModelVersion, *, token: str, share: float, queue: bool) -> None:
    """Put a locked version into the embedding state under a new task token, and queue its re-embed on commit."""
    locked.state = State.EMBEDDING
    locked.ab_share = share
    locked.error = ""
    locked.task_token = token
    locked.save()
    if queue:
        dispatch.reembed_queue_on_commit(version_id=locked.pk, token=token)


def model_version_mark_failed(*, version_id: int, reason: str) -> None:
    ModelVersion.objects.filter(pk=version_id).exclude(state=State.ACTIVE).update(
        state=State.FAILED, error=reason[:4000], task_token="", ab_share=0.0, updated_at=timezone.now()
    )
    logger.error("model version %s failed: %s", version_id, reason)


def _eligible():
    return ProductImage.objects.filter(status__in=REEMBED_STATUSES)


def _embed_into(embedder: Embedder, version: ModelVersion, images: list[ProductImage], collection: str) -> list[int]:
    """Embed images with `embedder` and upsert them into `collection` by name; returns the ids written."""
    loaded = []
    for image in images:
        try:
            loaded.append((image, item_pictures(open_stored_image(image.image), image.item_box)))
        except (InvalidImage, FileNotFoundError, OSError) as exc:
            logger.warning("re-embed %s: skipping image %s (%s)", version.model_version, image.pk, exc)
    if not loaded:
        return []
    vectors = embed_items(embedder, [pictures for _, pictures in loaded])
    rows = [
        vector_row(image, vector, version.model_version) for (image, _), vector in zip(loaded, vectors, strict=True)
    ]
    registry.get_vector_store().upsert(rows, collection=collection, flush=False)
    return [image.pk for image, _ in loaded]


def catalog_reembed(
    *, version_id: int, token: str = "", time_budget: float | None = None, batch_size: int = REEMBED_BATCH_SIZE
) -> bool:
    """The body of the re-embed task. Returns True when finished, False when time ran out (call again).

    Progress (cursor, counts) is saved after every batch, so a re-run resumes. A non-transient error
    marks the version failed with the reason and raises ReembedFailed; the alias is untouched.
    Transient errors (VectorStoreUnavailable, database OperationalError) propagate for a retry.
    """
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
    except TRANSIENT:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        model_version_mark_failed(version_id=version.pk, reason=reason)
        raise ReembedFailed(reason) from exc


def _reembed(version: ModelVersion, time_budget: float | None, batch_size: int) -> bool:
    started = time.monotonic()
    embedder = registry.embedder_for(version)
    collection = _reembed_start(version, embedder)
    if not _building_lists(version):
        if not _main_pass(version, embedder, collection, batch_size, started, time_budget):
            return False
        since, _ = _catch_up_passes(version, embedder, collection, batch_size)
        _prune(collection)
        registry.get_vector_store().flush(collection)
        _lists_phase_start(version, since)
    if not _lists_built(version, started, time_budget):
        return False
    # What changed while the lists were built: embedded, and its lists (and its neighbours') updated.
    since, seen = _catch_up_passes(version, embedder, collection, batch_size)
    registry.get_vector_store().flush(collection)
    _lists_update(version, list(seen))
    if version.ab_share > 0:
        _become_candidate(version)
        return True
    if not _swap(version, collection):
        return True
    # Images the old version ingested while we swapped, then stamp every vector's version on its image.
    before_swap = dict(seen)
    _catch_up(embedder, version, collection, since, seen, batch_size)
    registry.get_vector_store().flush(collection)
    _lists_update(version, [pk for pk, mark in seen.items() if before_swap.get(pk) != mark])
    ProductImage.objects.filter(status=ProductImage.Status.READY, embedded_at__lt=since).exclude(
        model_version=version.model_version
    ).update(model_version=version.model_version)
    _stamp(list(seen), version.model_version)
    # A last look once in-flight ingest batches (started before the swap) have committed.
    dispatch.reembed_queue_on_commit(version_id=version.pk, token=version.task_token, countdown=10)
    return True


def _building_lists(version: ModelVersion) -> bool:
    """Whether this re-embed is past its embedding phase: its version's build job carries its task token."""
    return SimilarListBuild.objects.filter(version=version, task_token=version.task_token).exists()


def _lists_phase_start(version: ModelVersion, since: datetime) -> None:
    """The collection is current as of `since` (the last catch-up pass): record that, and start the list build."""
    version.reembed_started_at = since + CATCH_UP_MARGIN
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk, task_token=version.task_token).update(
            reembed_started_at=version.reembed_started_at,
            reembed_cursor=version.reembed_cursor,
            updated_at=timezone.now(),
        )
        recommendations.similar_lists_build_start(version=version, queue=False, token=version.task_token)
    logger.info("re-embed %s: embedded; building its similar lists", version.model_version)


def _lists_built(version: ModelVersion, started: float, time_budget: float | None) -> bool:
    """Run the version's list build for what is left of the time budget; True once it is done.

    A build restarted meanwhile under another token (the admin's rebuild) is taken back under this re-embed's.
    A build that fails raises BuildFailed: the re-embed fails with the reason and the alias does not move."""
    while True:
        left = None if time_budget is None else max(0.0, time_budget - (time.monotonic() - started))
        if not recommendations.similar_lists_build(version=version, token=version.task_token, time_budget=left):
            return False
        job = SimilarListBuild.objects.filter(version=version).first()
        if job is not None and job.task_token == version.task_token and job.state == SimilarListBuild.State.DONE:
            return True
        logger.info("re-embed %s: its list build was restarted elsewhere; building again", version.model_version)
        recommendations.similar_lists_build_start(version=version, queue=False, token=version.task_token)


def _lists_update(version: ModelVersion, image_ids: list[int]) -> None:
    """Update the version's lists for the products of images just (re-)embedded into its collection."""
    product_ids: set[int] = set()
    for start in range(0, len(image_ids), 5000):
        chunk = image_ids[start : start + 5000]
        product_ids.update(ProductImage.objects.filter(pk__in=chunk).values_list("product_id", flat=True))
    if product_ids:
        report = recommendations.similar_lists_update(product_ids=sorted(product_ids), version=version)
        logger.info(
            "re-embed %s: lists of %d caught-up product(s) updated, %d other lists patched",
            version.model_version,
            len(product_ids),
            report.patched,
        )


def _reembed_start(version: ModelVersion, embedder: Embedder) -> str:
    """Create the version's collection and, on a fresh start, record what the main pass has to cover."""
    collection = registry.get_vector_store().create_collection(version.model_version, embedder.dim)
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
    return collection


def _main_pass(
    version: ModelVersion,
    embedder: Embedder,
    collection: str,
    batch_size: int,
    started: float,
    time_budget: float | None,
) -> bool:
    """Every eligible image, in id order, from the saved cursor; False when the time budget ran out first."""
    while True:
        batch = list(
            _eligible().filter(pk__gt=version.reembed_cursor).select_related("product").order_by("pk")[:batch_size]
        )
        if not batch:
            return True
        written = _embed_into(embedder, version, batch, collection)
        version.reembed_cursor = batch[-1].pk
        version.embedded += len(written)
        version.total = max(version.total, version.embedded)
        ModelVersion.objects.filter(pk=version.pk).update(
            reembed_cursor=version.reembed_cursor,
            embedded=version.embedded,
            total=version.total,
            updated_at=timezone.now(),
        )
        logger.info("re-embed %s: %d/%d", version.model_version, version.embedded, version.total)
        if time_budget is not None and time.monotonic() - started > time_budget:
            return False


def _catch_up_passes(
    version: ModelVersion, embedder: Embedder, collection: str, batch_size: int
) -> tuple[datetime, dict[int, tuple]]:
    """Images created, re-ingested or edited since the re-embed started, until a pass finds none."""
    assert version.reembed_started_at is not None
    since = version.reembed_started_at - CATCH_UP_MARGIN
    seen: dict[int, tuple] = {}
    for _ in range(MAX_CATCH_UP_PASSES):
        pass_started = timezone.now()
        count = _catch_up(embedder, version, collection, since, seen, batch_size)
        logger.info("re-embed %s: catch-up pass re-embedded %d images", version.model_version, count)
        since = pass_started - CATCH_UP_MARGIN
        if count == 0:
            break
    return since, seen


def _swap(version: ModelVersion, collection: str) -> bool:
    """Point the alias at the new collection and switch the states together; the previous collection is kept."""
    store = registry.get_vector_store()
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state != State.EMBEDDING or locked.task_token != version.task_token:
            logger.info("re-embed of %s superseded before the swap", version.model_version)
            return False
        previous = list(ModelVersion.objects.select_for_update().filter(state=State.ACTIVE).exclude(pk=version.pk))
        store.point_alias(collection)
        now = timezone.now()
        ModelVersion.objects.filter(pk__in=[v.pk for v in previous]).update(
            state=State.STANDBY, deactivated_at=now, updated_at=now
        )
        locked.state = State.ACTIVE
        locked.activated_at = now
        locked.error = ""
        locked.reembed_cursor = version.reembed_cursor
        locked.embedded = max(version.embedded, locked.embedded)
        locked.save()
    registry.reset_active_version_cache()
    logger.info(
        "model version %s is active (alias %s -> %s); standby: %s",
        version.model_version,
        store.alias,
        collection,
        ", ".join(v.model_version for v in previous) or "-",
    )
    return True


def _become_candidate(version: ModelVersion) -> bool:
    """The re-embed of a candidate is done: it serves its A/B share from now on; the alias does not move."""
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state != State.EMBEDDING or locked.task_token != version.task_token or locked.ab_share <= 0:
            logger.info("preparation of candidate %s superseded", version.model_version)
            return False
        locked.state = State.CANDIDATE
        locked.error = ""
        locked.embedded = max(version.embedded, locked.embedded)
        locked.reembed_cursor = version.reembed_cursor
        locked.save()
    registry.reset_active_version_cache()
    logger.info("model version %s is an A/B candidate serving %.0f%%", version.model_version, 100 * locked.ab_share)
    return True


def _catch_up(embedder: Embedder, version: ModelVersion, collection: str, since, seen: dict, batch_size: int) -> int:
    """Re-embed the images created, re-ingested or edited since `since` that this run has not yet
    embedded in their current state (`seen`: image id -> its change marks when we embedded it)."""
    changed = _eligible().filter(
        Q(pk__gt=version.reembed_cursor)
        | Q(created_at__gte=since)
        | Q(embedded_at__gte=since)
        | Q(product__updated_at__gte=since)
    )
    marks = {
        pk: (embedded_at, updated_at, status)
        for pk, embedded_at, updated_at, status in changed.values_list(
            "pk", "embedded_at", "product__updated_at", "status"
        )
    }
    todo = sorted(pk for pk, mark in marks.items() if seen.get(pk) != mark)
    count = 0
    for start in range(0, len(todo), batch_size):
        batch = list(ProductImage.objects.filter(pk__in=todo[start : start + batch_size]).select_related("product"))
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
    embedder = registry.embedder_for(version)
    collection = registry.get_vector_store().create_collection(version.model_version, embedder.dim)
    written = []
    for start in range(0, len(ids), batch_size):
        batch = list(ProductImage.objects.filter(pk__in=ids[start : start + batch_size]).select_related("product"))
        written += _embed_into(embedder, version, batch, collection)
    registry.get_vector_store().flush(collection)
    _stamp(written, version.model_version)
    _lists_update(version, written)
    logger.info("model version %s: reconciled %d image(s)", version.model_version, len(written))


def _stamp(image_ids: list[int], model_version: str, chunk: int = 5000) -> None:
    """Record on ready images that their vector is now from `model_version` (chunked: SQLite limits)."""
    for start in range(0, len(image_ids), chunk):
        ProductImage.objects.filter(pk__in=image_ids[start : start + chunk], status=ProductImage.Status.READY).exclude(
            model_version=model_version
        ).update(model_version=model_version)


def _prune(collection: str) -> None:
    """Remove from `collection` the vectors of images deleted (or failed) since they were embedded."""
    view = registry.get_vector_store().collection(collection)
    found = set(view.iter_image_ids())
    keep = set(ProductImage.objects.filter(status__in=KEEP_STATUSES).values_list("pk", flat=True).iterator())
    stale = sorted(found - keep)
    if stale:
        view.delete_images(stale)
        logger.info("re-embed: pruned %d vector(s) of deleted images from %s", len(stale), collection)


# Rolling back ----------------------------------------------------------------------------------
def model_version_rollback(*, version: ModelVersion | None = None) -> ModelVersion:
    """Point the alias back at a standby version's collection (by default the latest standby).

    Images ingested or edited while it was standby are re-ingested with it (queued), and every
    vector's version is recorded on its image.
    """
    current = registry.active_version(fresh=True)
    previous_name = current.model_version if current is not None else "-"
    if version is None:
        version = ModelVersion.objects.filter(state=State.STANDBY).order_by("-deactivated_at", "-id").first()
        if version is None:
            raise VersionError("there is no standby version to roll back to")
    version.refresh_from_db()
    if version.state == State.ACTIVE:
        raise VersionError(f"{version.model_version} is already active")
    if version.state != State.STANDBY:
        raise VersionError(
            f"{version.model_version} is {version.state}; only a standby version (its collection "
            "kept) can be rolled back to — activate it instead to re-embed the catalog"
        )
    store = registry.get_vector_store()
    collection = store.collection_name(version.model_version)
    if not store.has_collection(collection):
        raise VersionError(f"the collection {collection} of {version.model_version} no longer exists; activate it")
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state != State.STANDBY:
            raise VersionError(f"{version.model_version} is {locked.state}")
        others = list(
            ModelVersion.objects.select_for_update()
            .filter(Q(state=State.ACTIVE) | Q(state=State.EMBEDDING, ab_share__lte=0))  # a candidate stays
            .exclude(pk=version.pk)
        )
        store.point_alias(collection)
        now = timezone.now()
        # Previously active -> standby; an unfinished re-embed is abandoned (its task sees the state).
        ModelVersion.objects.filter(pk__in=[v.pk for v in others if v.state == State.ACTIVE]).update(
            state=State.STANDBY, deactivated_at=now, updated_at=now
        )
        ModelVersion.objects.filter(pk__in=[v.pk for v in others if v.state == State.EMBEDDING]).update(
            state=State.REGISTERED, task_token="", updated_at=now
        )
        since = (locked.deactivated_at or now) - CATCH_UP_MARGIN
        locked.state = State.ACTIVE
        locked.activated_at = now
        locked.task_token = uuid.uuid4().hex
        locked.save()
        changed_since = Q(created_at__gte=since) | Q(embedded_at__gte=since) | Q(product__updated_at__gte=since)
        ready = ProductImage.objects.filter(status=ProductImage.Status.READY)
        changed = list(ready.filter(changed_since).values_list("pk", flat=True))
        ready.exclude(changed_since).exclude(model_version=locked.model_version).update(
            model_version=locked.model_version
        )
        if changed:
            dispatch.ingest_queue_on_commit(image_ids=changed)
        # Its lists stopped being maintained when it went standby: they serve (reads drop deleted products) while
        # the build rewrites them.
        recommendations.similar_lists_build_start(version=locked)
    registry.reset_active_version_cache()
    logger.info(
        "rolled back to %s (was %s); %d changed image(s) queued", version.model_version, previous_name, len(changed)
    )
    version.refresh_from_db()
    return version


# A/B candidates --------------------------------------------------------------------------------
def _in_ab_test():
    return Q(state=State.CANDIDATE) | Q(state=State.EMBEDDING, ab_share__gt=0)


def model_version_prepare_candidate(*, version: ModelVersion, share: float, queue: bool = True) -> str:
    """Re-embed the catalog into `version`'s own collection in the background WITHOUT moving the alias; when done
    the version is a candidate serving `share` (0 < share <= MAX_AB_SHARE) of shoppers.

    Returns "queued" (preparation started), "preparing" (already being prepared: share updated) or "updated"
    (already a candidate: share changed at once). One A/B test at a time: VersionError while another version is
    in one, and for the active version or one being activated.
    """
    share = float(share)
    if not 0 < share <= MAX_AB_SHARE:
        raise VersionError(f"the A/B share must be more than 0% and at most {MAX_AB_SHARE:.0%}, not {share:.0%}")
    default_version_ensure()
    token = uuid.uuid4().hex
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if locked.state == State.CANDIDATE or (locked.state == State.EMBEDDING and locked.ab_share > 0):
            outcome = "updated" if locked.state == State.CANDIDATE else "preparing"
            locked.ab_share = share
            locked.save(update_fields=["ab_share", "updated_at"])
            registry.reset_active_version_cache()
            version.refresh_from_db()
            return outcome
        if locked.state == State.ACTIVE:
            raise VersionError(f"{locked.model_version} is the active version; an A/B test needs another version")
        if locked.state == State.EMBEDDING:
            raise VersionError(f"{locked.model_version} is being activated; wait, or roll back first")
        other = ModelVersion.objects.select_for_update().filter(_in_ab_test()).exclude(pk=locked.pk).first()
        if other is not None:
            raise VersionError(f"{other.model_version} is already in an A/B test; end it first")
        _reset_progress(locked)
        _start_embedding(locked, token=token, share=share, queue=queue)
    version.refresh_from_db()
    logger.info("preparing %s as an A/B candidate (%.0f%%)", version.model_version, 100 * share)
    return "queued"


def model_version_end_candidate(*, version: ModelVersion) -> ModelVersion:
    """End an A/B test (or its preparation): the version serves nobody, its share is 0.

    It goes back to standby when it had been active before (its collection, kept, is a rollback target), else to
    registered; its collection is kept either way until `collections_prune` is asked to drop it.
    """
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if not (locked.state == State.CANDIDATE or (locked.state == State.EMBEDDING and locked.ab_share > 0)):
            raise VersionError(f"{locked.model_version} is not in an A/B test (it is {locked.state})")
        locked.state = State.STANDBY if locked.activated_at else State.REGISTERED
        locked.ab_share = 0.0
        locked.task_token = ""  # a preparation still running stops at its next check
        locked.save()
    registry.reset_active_version_cache()
    logger.info("A/B test of %s ended; it is %s", locked.model_version, locked.state)
    version.refresh_from_db()
    return version


# Pruning old collections -------------------------------------------------------------------------
@dataclass
class PrunePlan:
    """Which collections of the store's prefix would be dropped, and which are kept, each with the reason."""

    keep_standby: int
    drop: list[tuple[str, str]] = field(default_factory=list)
    keep: list[tuple[str, str]] = field(default_factory=list)

    @property
    def drop_names(self) -> list[str]:
        return [name for name, _ in self.drop]


def collections_prune_plan(*, keep: int) -> PrunePlan:
    """What `collections_prune(keep=N)` would drop. Never dropped: the alias target, the collections of the active,
    candidate and embedding versions, and of the N most recent standby versions (N >= 1: the latest one always)."""
    keep = max(1, int(keep))
    store = registry.get_vector_store()
    plan = PrunePlan(keep_standby=keep)
    by_collection = {store.collection_name(v.model_version): v for v in ModelVersion.objects.all()}
    standby = ModelVersion.objects.filter(state=State.STANDBY).order_by(
        F("deactivated_at").desc(nulls_last=True), "-id"
    )
    kept_standby = {v.pk for v in standby[:keep]}
    alias_target = store.active_collection()
    for name in sorted(store.list_collections()):
        version = by_collection.get(name)
        if name == alias_target:
            plan.keep.append((name, "the alias points at it"))
        elif version is None:
            plan.drop.append((name, "no registered version uses it"))
        elif version.state in (State.ACTIVE, State.CANDIDATE, State.EMBEDDING):
            plan.keep.append((name, f"{version.model_version} is {version.get_state_display().lower()}"))
        elif version.pk in kept_standby:
            plan.keep.append((name, f"{version.model_version}: one of the {keep} most recent standby versions"))
        elif version.state == State.STANDBY:
            plan.drop.append((name, f"{version.model_version}: an older standby version (it can then be re-activated)"))
        else:
            plan.drop.append((name, f"{version.model_version} is {version.get_state_display().lower()}"))
    return plan


def collections_prune(*, keep: int, only: list[str] | None = None) -> list[str]:
    """Drop the collections `collections_prune_plan(keep=N)` lists (of them, only those in `only` when given: what a
    person confirmed); returns the names dropped. Each version is re-checked under its row lock just before its
    collection goes; a pruned standby version becomes registered (activating it re-embeds the catalog)."""
    plan = collections_prune_plan(keep=keep)
    store = registry.get_vector_store()
    dropped = []
    for name in plan.drop_names:
        if only is not None and name not in only:
            continue
        with transaction.atomic():
            versions = [
                v for v in ModelVersion.objects.select_for_update() if store.collection_name(v.model_version) == name
            ]
            if any(v.state in (State.ACTIVE, State.CANDIDATE, State.EMBEDDING) for v in versions):
                continue  # it changed since the plan was made
            if name == store.active_collection():
                continue
            store.drop_collection(name)
            ModelVersion.objects.filter(pk__in=[v.pk for v in versions if v.state == State.STANDBY]).update(
                state=State.REGISTERED, updated_at=timezone.now()
            )
        dropped.append(name)
        logger.info("pruned collection %s", name)
    return dropped
