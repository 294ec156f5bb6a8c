"""Near-duplicate products: the same item listed twice, found by its image vectors; merchandisers merge or dismiss.

Services (writes): `near_duplicates_find`, `duplicate_pair_merge`, `duplicate_pair_dismiss`.
Selectors (reads): `duplicate_pairs_open`, `duplicate_pairs_of_product`.

The threshold (settings.NEAR_DUPLICATE_THRESHOLD) was chosen on a benchmark for precision >= 0.99 with the shipped
VisNet: docs/near_duplicates.md (`python -m ml.evaluation.near_duplicates`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from webapp.catalog import services
from webapp.catalog.models import DuplicatePair, Product
from webapp.search import dispatch

logger = logging.getLogger(__name__)

NEIGHBOURS = 10  # nearest images asked per image; a product listed more than this many times still links up in pairs
QUERY_BATCH = 256
CHANGE_PERMISSION = "catalog.change_duplicatepair"


class DuplicatePairError(ValueError):
    """A decision that cannot be made on this pair (already decided, or a product that is not in it)."""


@dataclass
class FindReport:
    threshold: float
    model_version: str
    images_scanned: int = 0
    pairs_found: int = 0
    created: int = 0
    updated: int = 0
    already_decided: int = 0
    withdrawn: int = 0
    stale_removed: int = 0


# -- reads -----------------------------------------------------------------------------------------------------


def duplicate_pairs_open() -> QuerySet[DuplicatePair]:
    """Open pairs of two existing products, most similar first."""
    return (
        DuplicatePair.objects.filter(status=DuplicatePair.Status.OPEN, product_a__isnull=False, product_b__isnull=False)
        .select_related("product_a", "product_b")
        .order_by("-similarity", "id")
    )


def duplicate_pairs_of_product(*, product: Product) -> QuerySet[DuplicatePair]:
    return DuplicatePair.objects.filter(Q(product_a=product) | Q(product_b=product))


# -- finding pairs ---------------------------------------------------------------------------------------------


def _rows(store, product_ids: Iterable[int] | None) -> Iterator[dict]:
    fields = ("image_id", "product_id", "model_version", "vector")
    if product_ids is None:
        yield from store.iter_rows(fields, batch_size=QUERY_BATCH)
        return
    for product_id in sorted(set(product_ids)):
        yield from store.rows_for_product(int(product_id))


def _batches(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def near_duplicates_find(
    *, threshold: float | None = None, product_ids: Iterable[int] | None = None, neighbours: int = NEIGHBOURS
) -> FindReport:
    """Flag every pair of products with an image of one scoring at least `threshold` (cosine) against an image of the
    other, in the active collection: each image's vector (all of them, or those of `product_ids`) queries its
    `neighbours` nearest images (batched ANN queries).

    Idempotent: a pair found again keeps its row (an open one takes the new similarity and model version); a
    dismissed or merged pair is never opened again. After a run over every vector, open pairs no longer found (a
    higher threshold, another model version, an image replaced) are withdrawn. Open or dismissed pairs whose
    product is gone are removed.
    """
    from webapp.search import registry  # search imports the catalog's models: import it where it is used

    threshold = float(settings.NEAR_DUPLICATE_THRESHOLD if threshold is None else threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    store = registry.get_vector_store()
    best: dict[tuple[int, int], float] = {}
    versions: set[str] = set()
    scanned = 0
    for batch in _batches(_rows(store, product_ids), QUERY_BATCH):
        vectors = np.asarray([row["vector"] for row in batch], dtype=np.float32)
        versions.update(str(row.get("model_version", "")) for row in batch)
        scanned += len(batch)
        for row, hits in zip(batch, store.search(vectors, limit=neighbours + 1), strict=True):
            for hit in hits:
                if hit.score < threshold or hit.product_id == int(row["product_id"]):
                    continue
                key = (min(hit.product_id, int(row["product_id"])), max(hit.product_id, int(row["product_id"])))
                best[key] = max(best.get(key, -1.0), hit.score)
    model_version = ", ".join(sorted(v for v in versions if v))
    report = FindReport(threshold=threshold, model_version=model_version, images_scanned=scanned)
    report.stale_removed = _remove_stale_pairs()
    candidates = sorted({p for pair in best for p in pair})
    existing_products: set[int] = set()
    for start in range(0, len(candidates), 500):  # vectors of a product deleted a moment ago may still be indexed
        chunk = candidates[start : start + 500]
        existing_products.update(Product.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    found = {pair: score for pair, score in best.items() if set(pair) <= existing_products}
    report.pairs_found = len(found)
    _save_pairs(found, model_version, report)
    if product_ids is None and scanned:  # nothing scanned (no collection yet) proves nothing about old pairs
        report.withdrawn = _withdraw_open_pairs_not_in(found)
    logger.info("near-duplicates: %s", report)
    return report


def _remove_stale_pairs() -> int:
    """Undecided or dismissed pairs that lost a product (deleted since) say nothing any more."""
    deleted, _ = (
        DuplicatePair.objects.filter(Q(product_a__isnull=True) | Q(product_b__isnull=True))
        .exclude(status=DuplicatePair.Status.MERGED)
        .delete()
    )
    return deleted


def _withdraw_open_pairs_not_in(found: dict[tuple[int, int], float]) -> int:
    gone = [
        pk
        for pk, a, b in DuplicatePair.objects.filter(status=DuplicatePair.Status.OPEN).values_list(
            "pk", "product_a_id", "product_b_id"
        )
        if (a, b) not in found
    ]
    for start in range(0, len(gone), 500):
        DuplicatePair.objects.filter(pk__in=gone[start : start + 500], status=DuplicatePair.Status.OPEN).delete()
    return len(gone)


def _save_pairs(found: dict[tuple[int, int], float], model_version: str, report: FindReport) -> None:
    keys = sorted(found)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        with transaction.atomic():
            existing = {
                (pair.product_a_id, pair.product_b_id): pair
                for pair in DuplicatePair.objects.select_for_update().filter(
                    product_a_id__in={a for a, _ in chunk}, product_b_id__in={b for _, b in chunk}
                )
            }
            new = []
            for key in chunk:
                pair = existing.get(key)
                similarity = round(found[key], 6)
                if pair is None:
                    new.append(
                        DuplicatePair(
                            product_a_id=key[0], product_b_id=key[1], similarity=similarity, model_version=model_version
                        )
                    )
                elif pair.status != DuplicatePair.Status.OPEN:
                    report.already_decided += 1
                elif (pair.similarity, pair.model_version) != (similarity, model_version):
                    pair.similarity, pair.model_version = similarity, model_version
                    pair.save(update_fields=["similarity", "model_version"])
                    report.updated += 1
            # ignore_conflicts: a concurrent run that inserted the same pair first wins, nothing is duplicated
            DuplicatePair.objects.bulk_create(new, ignore_conflicts=True)
            report.created += len(new)


# -- decisions -------------------------------------------------------------------------------------------------


Decider = AbstractBaseUser | AnonymousUser | None


def _check_can_decide(user: Decider) -> AbstractBaseUser:
    """The user when allowed to merge and dismiss pairs (change_duplicatepair permission), else PermissionDenied."""
    if not isinstance(user, AbstractBaseUser) or not getattr(user, "has_perm", lambda _: False)(CHANGE_PERMISSION):
        raise PermissionDenied("Deciding on near-duplicate pairs needs the change_duplicatepair permission.")
    return user


def _locked_open_pair(pair: DuplicatePair) -> DuplicatePair:
    locked = DuplicatePair.objects.select_for_update().get(pk=pair.pk)  # no join: FOR UPDATE refuses outer joins
    if locked.status != DuplicatePair.Status.OPEN:
        raise DuplicatePairError(f"This pair was already {locked.get_status_display().lower()}.")
    if locked.product_a is None or locked.product_b is None:
        raise DuplicatePairError("One of the products of this pair no longer exists.")
    return locked


def duplicate_pair_dismiss(*, pair: DuplicatePair, user: Decider) -> DuplicatePair:
    """The two products are different items: the pair stays dismissed (later runs never open it again)."""
    decider = _check_can_decide(user)
    with transaction.atomic():
        locked = _locked_open_pair(pair)
        locked.status = DuplicatePair.Status.DISMISSED
        locked.decided_by = decider  # type: ignore[assignment]
        locked.decided_at = timezone.now()
        locked.save(update_fields=["status", "decided_by", "decided_at"])
    return locked


def duplicate_pair_merge(*, pair: DuplicatePair, keep: Product, user: Decider) -> Product:
    """Keep one product of the pair: the other's images move to it (an image it already has is dropped), their
    vectors are re-made for the kept product (re-ingested once the transaction commits), the other product is
    deleted, the pair is marked merged by `user`, and the deleted product's other pairs move to the kept product
    (or go, where the kept product already has a pair with that product). All or nothing."""
    decider = _check_can_decide(user)
    with transaction.atomic():
        locked = _locked_open_pair(pair)
        assert locked.product_a is not None and locked.product_b is not None  # checked by _locked_open_pair
        if keep.pk not in (locked.product_a_id, locked.product_b_id):
            raise DuplicatePairError(f"Product {keep.pk} is not one of this pair's products.")
        kept = locked.product_a if keep.pk == locked.product_a_id else locked.product_b
        duplicate = locked.product_b if kept.pk == locked.product_a_id else locked.product_a
        moved = _move_images(source=duplicate, target=kept)
        _move_other_pairs(source=duplicate, target=kept, merged=locked)
        locked.status = DuplicatePair.Status.MERGED
        locked.decided_by = decider  # type: ignore[assignment]
        locked.decided_at = timezone.now()
        locked.removed_product = f"#{duplicate.pk} {duplicate.sku}: {duplicate.title}"[:500]
        locked.save(update_fields=["status", "decided_by", "decided_at", "removed_product"])
        services.product_delete(product=duplicate)
        if moved:
            dispatch.ingest_queue_on_commit(image_ids=moved)
    return kept


def _move_images(*, source: Product, target: Product) -> list[int]:
    """Move `source`'s images after `target`'s; an image whose bytes `target` already has is deleted instead."""
    have = set(target.images.values_list("checksum", flat=True))
    position = (target.images.aggregate(last=Max("position"))["last"] or 0) + 1
    moved = []
    for image in source.images.order_by("position", "id"):
        if image.checksum and image.checksum in have:
            image.delete()  # its file and vectors go on commit (catalog.signals)
            continue
        have.add(image.checksum)
        image.product = target
        image.position = position
        image.save(update_fields=["product", "position"])
        position += 1
        moved.append(image.pk)
    return moved


def _move_other_pairs(*, source: Product, target: Product, merged: DuplicatePair) -> None:
    """`source` is about to go: each of its other pairs becomes the same pair with `target`, unless `target` already
    has one with that product (then that one stands and this one goes). The record of an earlier merge into
    `source` now names `target`, where those images went."""
    for pair in duplicate_pairs_of_product(product=source).exclude(pk=merged.pk).select_for_update():
        if pair.status == DuplicatePair.Status.MERGED:
            side = "product_a" if pair.product_a_id == source.pk else "product_b"
            setattr(pair, side, target)
            pair.save(update_fields=[side])
            continue
        other_id = pair.product_b_id if pair.product_a_id == source.pk else pair.product_a_id
        if other_id is None or other_id == target.pk:
            pair.delete()
            continue
        a, b = min(other_id, target.pk), max(other_id, target.pk)
        if DuplicatePair.objects.filter(product_a_id=a, product_b_id=b).exists():
            pair.delete()
            continue
        pair.product_a_id, pair.product_b_id = a, b
        pair.save(update_fields=["product_a", "product_b"])
