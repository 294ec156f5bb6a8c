"""Writes: build, update and drop the precomputed similar lists of a model version.

A product's list is what `webapp.search.selectors.similar_products` would answer for it, computed ahead: the
product's image vectors are searched in its version's collection, hits are merged per product (best score), the
product itself is dropped, and the best K (settings.SIMILAR_LIST_K, over-fetched for request-time filters) are
kept. Everything reads the version's own collection by name (`registry.version_store`), so a version that is not
active yet gets its lists built before the alias swap.

The build job goes through the catalog in product-id order, CHUNK products at a time: one batched primary-key
read of the chunk's image vectors (`vectors_by_image`), then ANN searches of SEARCH_BATCH query vectors each for the
whole chunk. The cursor (last product id written) is saved in the same transaction as the chunk's lists, so an
interrupted build resumes where it stopped and never writes a list twice; rows are keyed by (version, product).

Incremental updates (new, changed, deleted products) keep every list an exact prefix of its product's ranking,
up to the reverse lookup below:
- the updated products' own lists are recomputed by a search;
- a product A enters the list of B when B is among A's nearest (searched UPDATE_DEPTH_FACTOR x K deep) and A's
  score reaches the lowest score B's list holds (its floor: everything outside a list scores at most that). Cosine
  similarity is symmetric, so A's score in B's ranking is B's score in A's;
- a changed or deleted A leaves the lists that held it. Which lists hold A is not indexed (a reverse index is
  another K rows per product, 3 billion at 50M products, rewritten on every list change), so the candidates are
  A's previous stored list, its new neighbours, and for a deleted A whose vectors are still indexed, its nearest
  (the deletion flow should update the lists before it removes the vectors). A list that holds A while far down
  A's own ranking (A a "hub", near products that have nothing nearer) can be missed. There, a deleted product is
  dropped at read time (the selector joins every list to the live catalog rows) and a moved one keeps its old
  score; either way the next build rewrites the list and sweeps lists of deleted products;
- a list that shrinks below half of K is recomputed (the over-fetch for filters would otherwise wear out).

Where updates come from: an ingestion batch queues one `update_similar_lists` task for its products once it commits
(`similar_lists_after_ingest`; a serving version without lists yet gets its build started first); the vector
removal task updates the lists of the removed images' products BEFORE it deletes their vectors
(`similar_lists_before_image_removal`); a re-embed updates the products it caught up. Every list written, removed
or patched has its cached response bytes dropped (`webapp.recommendations.serving`); a price, category or stock
edit changes no list but drops the cached responses of the lists that hold the product
(`similar_lists_holding_invalidate`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from webapp.catalog.models import Product, ProductImage
from webapp.recommendations import dispatch, serving
from webapp.recommendations.models import SimilarList, SimilarListBuild, pack_neighbours, unpack_neighbours
from webapp.search import registry
from webapp.search.models import ModelVersion
from webapp.search.vector_store import (
    MAX_SEARCH_LIMIT,
    Hit,
    MilvusVectorStore,
    VectorStoreUnavailable,
    best_per_product,
)

logger = logging.getLogger(__name__)

TRANSIENT = (VectorStoreUnavailable, OperationalError, ConnectionError, TimeoutError)
SEARCH_BATCH = 1024  # query vectors per ANN call (Milvus Lite walks every row once per call, whatever nq is)
UPDATE_DEPTH_FACTOR = 4  # an updated product looks this many times K deep for the lists it enters or leaves
DROP_BATCH = 5000
# Lists are maintained for the versions that serve or are about to: a standby version's lists are rebuilt when
# it is activated again (rollback), as are its vectors' neighbours.
MAINTAINED_STATES = (ModelVersion.State.ACTIVE, ModelVersion.State.CANDIDATE, ModelVersion.State.EMBEDDING)

State = SimilarListBuild.State


class BuildFailed(RuntimeError):
    """The build could not complete; the job is marked failed with the reason."""


@dataclass(frozen=True)
class Neighbours:
    """A product's neighbours, best first; `exhaustive` when the search saw the whole collection and kept it all."""

    product_ids: list[int]
    scores: list[float]
    exhaustive: bool

    def truncated(self, depth: int) -> Neighbours:
        if len(self.product_ids) <= depth:
            return self
        return Neighbours(self.product_ids[:depth], self.scores[:depth], exhaustive=False)


@dataclass
class UpdateReport:
    versions: list[str] = field(default_factory=list)
    recomputed: int = 0  # own lists written for updated products
    removed: int = 0  # own lists removed (deleted products, or products without vectors)
    patched: int = 0  # other products' lists the updated products entered or left
    refilled: int = 0  # lists recomputed because they had worn below K/2
    seconds: float = 0.0
    changed: dict[int, set[int]] = field(default_factory=dict)  # version id -> products whose list changed

    def changed_lists(self, version: ModelVersion) -> set[int]:
        return self.changed.setdefault(version.pk, set())


def list_depth() -> int:
    return int(settings.SIMILAR_LIST_K)


# Computing lists ------------------------------------------------------------------------------
def _image_ids_by_product(product_ids: list[int]) -> dict[int, list[int]]:
    by_product: dict[int, list[int]] = defaultdict(list)
    rows = ProductImage.objects.filter(product_id__in=product_ids).order_by().values_list("product_id", "pk")
    for product_id, image_id in rows:
        by_product[product_id].append(image_id)
    return by_product


def _product_vectors(
    store: MilvusVectorStore, product_ids: list[int], leaving: frozenset[int] = frozenset()
) -> dict[int, np.ndarray]:
    """Each product's indexed image vectors (products without any are left out), from one batched primary-key read
    of all their images. `leaving`: images whose vectors are about to be deleted; they no longer count."""
    by_product = _image_ids_by_product(product_ids)
    found = store.vectors_by_image([i for ids in by_product.values() for i in ids if i not in leaving])
    vectors = {}
    for product_id, image_ids in by_product.items():
        rows = [found[i] for i in image_ids if i in found]
        if rows:
            vectors[product_id] = np.stack(rows)
    return vectors


def compute_neighbours(
    store: MilvusVectorStore,
    product_ids: list[int],
    depth: int,
    exclude: frozenset[int] = frozenset(),
    leaving: frozenset[int] = frozenset(),
) -> dict[int, Neighbours]:
    """The `depth` nearest products of each product (never one in `exclude`), from batched ANN searches over
    `store`'s collection; products without indexed vectors (not counting the `leaving` images) are left out."""
    return search_neighbours(store, _product_vectors(store, product_ids, leaving), depth, exclude)


def search_neighbours(
    store: MilvusVectorStore, vectors: dict[int, np.ndarray], depth: int, exclude: frozenset[int] = frozenset()
) -> dict[int, Neighbours]:
    """Neighbours of products given by their vectors: many query vectors per search call, hits merged per product.

    The search asks for as few hits as can do (the cost of a Milvus search grows with its limit): `depth` plus the
    product's own images. A product whose merged list may be missing someone (a product with several images fills
    hits with their duplicates) is searched again four times deeper, until nothing the search left out could rank
    in its list.
    """
    neighbours: dict[int, Neighbours] = {}
    pending = {pid: matrix for pid, matrix in vectors.items() if len(matrix)}
    limit = depth + 1 + max((len(matrix) for matrix in pending.values()), default=0)
    while pending:
        limit = min(limit, MAX_SEARCH_LIMIT)
        deeper = {}
        for product_id, hit_lists in _search(store, pending, limit).items():
            found = _merge(product_id, hit_lists, depth, limit, exclude, final=limit == MAX_SEARCH_LIMIT)
            if found is None:
                deeper[product_id] = pending[product_id]
            else:
                neighbours[product_id] = found
        pending, limit = deeper, limit * 4
    return neighbours


def _search(store: MilvusVectorStore, vectors: dict[int, np.ndarray], limit: int) -> dict[int, list[list[Hit]]]:
    owners = [pid for pid, matrix in vectors.items() for _ in range(len(matrix))]
    queries = np.concatenate(list(vectors.values()))
    hit_lists: dict[int, list[list[Hit]]] = defaultdict(list)
    for start in range(0, len(queries), SEARCH_BATCH):
        results = store.search(queries[start : start + SEARCH_BATCH], limit)
        for owner, hits in zip(owners[start : start + SEARCH_BATCH], results, strict=True):
            hit_lists[owner].append(hits)
    return hit_lists


def _merge(
    product_id: int, hit_lists: list[list[Hit]], depth: int, limit: int, exclude: frozenset[int], final: bool
) -> Neighbours | None:
    """The product's best `depth` neighbours from its images' hits, or None when a deeper search could change them.

    A product missing from every hit list scores at most the lowest score of a full list (one that stopped at
    `limit`): when the depth-th product found scores at least that, nothing missing can outrank it.
    """
    full = [hits for hits in hit_lists if len(hits) >= limit]
    unwanted = exclude | {product_id}
    kept = [[hit for hit in hits if hit.product_id not in unwanted] for hits in hit_lists]
    best = best_per_product(kept, depth + 1)
    if full and not final:
        bound = max(hits[-1].score for hits in full)
        if len(best) < depth or best[depth - 1].score < bound:
            return None
    found = Neighbours([hit.product_id for hit in best], [hit.score for hit in best], exhaustive=not full)
    return found.truncated(depth)


def _list_row(version: ModelVersion, product_id: int, neighbours: Neighbours, now) -> SimilarList:
    return SimilarList(
        version=version,
        product_id=product_id,
        neighbours=pack_neighbours(neighbours.product_ids, neighbours.scores),
        size=len(neighbours.product_ids),
        exhaustive=neighbours.exhaustive,
        computed_at=now,
    )


def _write_lists(version: ModelVersion, lists: dict[int, Neighbours]) -> None:
    now = timezone.now()
    _upsert([_list_row(version, product_id, neighbours, now) for product_id, neighbours in lists.items()])


def _upsert(rows: list[SimilarList]) -> None:
    """Write lists keyed by (version, product) in one statement (an INSERT ... ON CONFLICT DO UPDATE): far cheaper
    than a save per row or Django's bulk_update, whose CASE expressions cost more to build than the rows to write."""
    now = timezone.now()
    SimilarList.objects.bulk_create(
        [
            SimilarList(
                version_id=row.version_id,
                product_id=row.product_id,
                neighbours=row.neighbours,
                size=row.size,
                exhaustive=row.exhaustive,
                computed_at=row.computed_at if row.pk is None else now,
            )
            for row in rows
        ],
        update_conflicts=True,
        unique_fields=["version", "product_id"],
        update_fields=["neighbours", "size", "exhaustive", "computed_at"],
    )


# The batch job ----------------------------------------------------------------------------------
def similar_lists_build_start(*, version: ModelVersion, queue: bool = True, token: str = "") -> SimilarListBuild:
    """(Re)start building every product's list for `version` from the first product; a queued or running build of
    the same version is superseded. `queue=False` leaves the work to the caller (`similar_lists_build`); `token`
    (default: a new one) lets a caller recognise its own build (a re-embed uses its version's task token)."""
    token = token or uuid.uuid4().hex
    with transaction.atomic():
        job, _ = SimilarListBuild.objects.select_for_update().get_or_create(version=version)
        job.state = State.QUEUED
        job.cursor = job.done = job.total = 0
        job.task_token = token
        job.error = ""
        job.started_at = job.finished_at = None
        job.save()
        if queue:
            dispatch.build_queue_on_commit(version_id=version.pk, token=token)
    logger.info("similar lists of %s: build queued", version.model_version)
    return job


def similar_lists_mark_failed(*, version_id: int, reason: str) -> None:
    SimilarListBuild.objects.filter(version_id=version_id).update(
        state=State.FAILED, error=reason[:4000], finished_at=timezone.now(), updated_at=timezone.now()
    )
    logger.error("similar lists of version %s failed: %s", version_id, reason)


def similar_lists_build(
    *, version: ModelVersion, chunk: int | None = None, time_budget: float | None = None, token: str = ""
) -> bool:
    """Build (or resume building) every product's list for `version`. True when finished, False when
    `time_budget` seconds ran out first (call again: it resumes from the saved cursor).

    A task whose `token` is no longer the job's (a newer build was started) does nothing. Transient errors
    propagate for a retry; any other marks the job failed and raises BuildFailed.
    """
    job, _ = SimilarListBuild.objects.get_or_create(version=version)
    if token and job.task_token != token:
        logger.info("similar lists of %s: superseded by a newer build", version.model_version)
        return True
    if job.state == State.DONE:
        return True
    try:
        return _build(version, job, chunk or int(settings.SIMILAR_LIST_BUILD_CHUNK), time_budget)
    except TRANSIENT:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        similar_lists_mark_failed(version_id=version.pk, reason=reason)
        raise BuildFailed(reason) from exc


def _build(version: ModelVersion, job: SimilarListBuild, chunk: int, time_budget: float | None) -> bool:
    started = time.monotonic()
    store = registry.version_store(version)
    if not store.exists():
        raise BuildFailed(f"the collection {store.target} of {version.model_version} does not exist: embed first")
    depth = list_depth()
    if job.started_at is None:
        job.started_at = timezone.now()
        job.total = Product.objects.count()
        job.cursor = job.done = 0
    job.state = State.RUNNING
    job.save(update_fields=["started_at", "total", "cursor", "done", "state", "updated_at"])
    while True:
        product_ids = list(
            Product.objects.filter(pk__gt=job.cursor).order_by("pk").values_list("pk", flat=True)[:chunk]
        )
        if not product_ids:
            break
        lists = compute_neighbours(store, product_ids, depth)
        with transaction.atomic():
            _write_lists(version, lists)
            # A product without vectors (not ingested, or all its images failed) has no list.
            SimilarList.objects.filter(version=version, product_id__in=set(product_ids) - set(lists)).delete()
            job.cursor = product_ids[-1]
            job.done += len(product_ids)
            job.total = max(job.total, job.done)
            job.save(update_fields=["cursor", "done", "total", "updated_at"])
        serving.similar_bytes_invalidate(version_id=version.pk, product_ids=product_ids)
        logger.info("similar lists of %s: %s", version.model_version, job.progress)
        if len(product_ids) < chunk:
            break  # the last chunk: finish now rather than in one more call
        if time_budget is not None and time.monotonic() - started > time_budget:
            return False
    # Lists this build did not rewrite belong to products deleted since an earlier build.
    assert job.started_at is not None
    swept, _ = SimilarList.objects.filter(version=version, computed_at__lt=job.started_at).delete()
    job.state = State.DONE
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "finished_at", "updated_at"])
    logger.info("similar lists of %s built: %d products, %d stale lists swept", version.model_version, job.done, swept)
    return True


# Incremental updates ------------------------------------------------------------------------------
def _maintained_versions() -> list[ModelVersion]:
    return list(ModelVersion.objects.filter(state__in=MAINTAINED_STATES, similar_build__isnull=False))


def similar_lists_update(*, product_ids: list[int], version: ModelVersion | None = None) -> UpdateReport:
    """Bring the lists up to date after these products were created, re-embedded or edited, or deleted: their own
    lists, and the lists of other products they enter or leave. `version` None: every version whose lists are
    maintained (active, candidate, being embedded, with a build started). Idempotent.

    The report's `changed` names every list written, removed or patched, per version; their cached response bytes
    are dropped here."""
    started = time.monotonic()
    report = UpdateReport()
    wanted = sorted({int(pid) for pid in product_ids})
    for target in [version] if version is not None else _maintained_versions():
        store = registry.version_store(target)
        if not store.exists():
            continue
        report.versions.append(target.model_version)
        _update_version(target, store, wanted, report)
    report.seconds = round(time.monotonic() - started, 4)
    return report


def similar_lists_before_image_removal(*, image_ids: list[int]) -> UpdateReport:
    """Update the lists of these images' products in every maintained version BEFORE their vectors are deleted
    (the vector removal task calls this, then deletes): a deleted product's vectors are what finds the lists that
    hold it. The removed images no longer count for their products (a product keeps its other images' vectors).
    The products are read from each version's collection (the image rows are usually gone already)."""
    started = time.monotonic()
    report = UpdateReport()
    leaving = frozenset(int(i) for i in image_ids)
    for target in _maintained_versions():
        store = registry.version_store(target)
        if not store.exists():
            continue
        owners = store.products_of_images(sorted(leaving))
        if not owners:
            continue
        report.versions.append(target.model_version)
        _update_version(target, store, sorted(set(owners.values())), report, leaving=leaving)
    report.seconds = round(time.monotonic() - started, 4)
    return report


def similar_lists_after_ingest(*, product_ids: list[int], version: ModelVersion) -> None:
    """An ingestion batch upserted these products' vectors into `version`'s collection (and the A/B candidates'):
    once it commits, queue ONE incremental update of their lists in every maintained version. A serving version
    with no lists at all (a fresh install's first ingestion, or lists dropped) gets its build started first; the
    build then covers whatever is ingested before it reaches each product, the updates the rest."""
    ids = sorted({int(pid) for pid in product_ids})
    if not ids:
        return

    def queue() -> None:
        if not SimilarListBuild.objects.filter(version=version).exists():
            similar_lists_build_start(version=version)
        dispatch.update_queue(product_ids=ids)

    transaction.on_commit(queue)


def similar_lists_holding_invalidate(*, product_ids: list[int]) -> dict[int, set[int]]:
    """A product's price, category or stock changed: no list changes (filters apply at read time), but the cached
    responses of the lists that hold it show its old fields. Drop those (and its own), per maintained version;
    returns the product ids dropped per version id. The holders are found as in an update (its nearest, searched
    UPDATE_DEPTH_FACTOR x K deep, whose stored list holds it)."""
    wanted = frozenset(int(pid) for pid in product_ids)
    dropped: dict[int, set[int]] = {}
    for target in _maintained_versions():
        store = registry.version_store(target)
        if not store.exists():
            continue
        nearest = compute_neighbours(store, sorted(wanted), list_depth() * UPDATE_DEPTH_FACTOR)
        candidates = {pid for neighbours in nearest.values() for pid in neighbours.product_ids}
        rows = SimilarList.objects.filter(version=target, product_id__in=candidates).values_list(
            "product_id", "neighbours"
        )
        holders = {pid for pid, packed in rows if wanted.intersection(unpack_neighbours(packed)[0].tolist())}
        dropped[target.pk] = holders | wanted
        serving.similar_bytes_invalidate(version_id=target.pk, product_ids=sorted(dropped[target.pk]))
    return dropped


def _update_version(
    version: ModelVersion,
    store: MilvusVectorStore,
    wanted: list[int],
    report: UpdateReport,
    leaving: frozenset[int] = frozenset(),
) -> None:
    depth = list_depth()
    holder_depth = depth * UPDATE_DEPTH_FACTOR
    changed = report.changed_lists(version)
    previous = {
        row.product_id: row.unpacked()[0].tolist()
        for row in SimilarList.objects.filter(version=version, product_id__in=wanted)
    }
    present = list(Product.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    deleted = frozenset(wanted) - frozenset(present)
    deep = compute_neighbours(store, present, holder_depth, exclude=deleted, leaving=leaving)
    gone = set(wanted) - set(deep)  # deleted, or left without indexed vectors
    # Who may hold or now enter an updated product's place: its old neighbours and its new ones, and for a product
    # that is gone, while its vectors are still indexed (its vectors are removed after this update), its nearest.
    entering: dict[int, dict[int, float]] = defaultdict(dict)  # holder -> {updated product: score}
    for product_id, neighbours in deep.items():
        for neighbour, score in zip(neighbours.product_ids, neighbours.scores, strict=True):
            entering[neighbour][product_id] = score
    lingering = {pid: _indexed_vectors(store, pid) for pid in gone}
    left = search_neighbours(store, {pid: v for pid, v in lingering.items() if len(v)}, holder_depth, deleted)
    candidates = (
        set(entering)
        | {pid for ids in previous.values() for pid in ids}
        | {pid for neighbours in left.values() for pid in neighbours.product_ids}
    ) - set(wanted)
    with transaction.atomic():
        _write_lists(version, {pid: neighbours.truncated(depth) for pid, neighbours in deep.items()})
        report.recomputed += len(deep)
        changed.update(deep)
        removed = SimilarList.objects.filter(version=version, product_id__in=gone)
        changed.update(removed.values_list("product_id", flat=True))
        report.removed += removed.delete()[0]
        rows = SimilarList.objects.select_for_update().filter(version=version, product_id__in=candidates)
        updated = frozenset(wanted)
        patched = [row for row in rows if _patch(row, updated, entering.get(row.product_id, {}), depth)]
        _upsert(patched)
        report.patched += len(patched)
        changed.update(row.product_id for row in patched)
        worn = [row.product_id for row in patched if row.size < depth // 2 and not row.exhaustive]
    if worn:
        refreshed = compute_neighbours(store, worn, depth, exclude=deleted, leaving=leaving)
        with transaction.atomic():
            _write_lists(version, refreshed)
        report.refilled += len(refreshed)
    if changed:
        serving.similar_bytes_invalidate(version_id=version.pk, product_ids=sorted(changed))


def _indexed_vectors(store: MilvusVectorStore, product_id: int) -> np.ndarray:
    """The vectors still indexed for a product whose image rows may be gone (a filter on product id, not a key)."""
    rows = store.rows_for_product(product_id)
    return np.asarray([row["vector"] for row in rows], dtype=np.float32)


def _patch(row: SimilarList, updated: frozenset[int], entering: dict[int, float], depth: int) -> bool:
    """Take the updated products out of a stored list and put back those that rank in it; True when it changed.

    Most candidate lists neither hold an updated product nor let one in: those are told apart first, cheaply."""
    ids, scores = row.unpacked()
    # Everything outside a list scores at most its lowest score; an exhaustive list holds everything.
    floor = -np.inf if row.exhaustive or len(scores) == 0 else float(scores[-1])
    arriving = [(pid, score) for pid, score in entering.items() if score >= floor]
    held = ids.tolist()
    if not arriving and updated.isdisjoint(held):
        return False
    kept = [(pid, score) for pid, score in zip(held, scores.tolist(), strict=True) if pid not in updated]
    merged = kept + arriving
    merged.sort(key=lambda item: item[1], reverse=True)
    exhaustive = row.exhaustive and len(merged) <= depth
    merged = merged[:depth]
    if [pid for pid, _ in merged] == ids.tolist() and exhaustive == row.exhaustive:
        return False
    row.neighbours = pack_neighbours([pid for pid, _ in merged], [score for _, score in merged])
    row.size = len(merged)
    row.exhaustive = exhaustive
    return True


# Dropping -----------------------------------------------------------------------------------------
def similar_lists_drop(*, model_version: ModelVersion) -> int:
    """Delete a version's lists and its build job (in batches: a version can hold millions); returns lists
    deleted. A build task still queued for it then finds no job of its token and does nothing."""
    deleted = 0
    SimilarListBuild.objects.filter(version=model_version).delete()
    while True:
        batch = list(
            SimilarList.objects.filter(version=model_version).values_list("pk", flat=True).order_by("pk")[:DROP_BATCH]
        )
        if not batch:
            break
        deleted += SimilarList.objects.filter(pk__in=batch).delete()[0]
    logger.info("similar lists of %s dropped: %d", model_version.model_version, deleted)
    return deleted
