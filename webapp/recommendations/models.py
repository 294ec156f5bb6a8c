"""Precomputed "visually similar" lists: every product's top-K neighbours per model version, and the batch job.

Why a database table and not Redis:
- Durable: a cache restart or eviction would silently send every product page to the live vector query (at
  50M products, a rebuild takes hours); table rows survive restarts and are backed up with the catalog.
- Versioned: lists are keyed by model version, so a candidate version's lists are built beside the active
  ones before the alias swap, a rollback finds the standby version's lists still there, and dropping a version
  drops its lists (cascade) in one place.
- Transactional with the catalog: an incremental update rewrites a product's list and patches its neighbours'
  lists in one transaction (row locks, no lost update between two concurrent updates), in the same database as
  the product rows the read-time filters join to.
- Compact: a list is one row with a packed binary field (int64 ids then float32 scores, 12 bytes a neighbour:
  720 bytes at K=60), about 40 GB for 50M products; one primary-key read serves a product page.
Serving puts a bytes cache (Redis or locmem, `computed_at` as the ETag) in front of this table for hot pages;
the cache can be flushed at any time without losing anything.
"""

from __future__ import annotations

import numpy as np
from django.db import models

ID_DTYPE = np.dtype("<i8")
SCORE_DTYPE = np.dtype("<f4")
NEIGHBOUR_BYTES = ID_DTYPE.itemsize + SCORE_DTYPE.itemsize


def pack_neighbours(product_ids, scores) -> bytes:
    """(ids, scores), best first, as bytes: the ids as little-endian int64, then the scores as float32."""
    return np.asarray(product_ids, dtype=ID_DTYPE).tobytes() + np.asarray(scores, dtype=SCORE_DTYPE).tobytes()


def unpack_neighbours(packed: bytes | memoryview) -> tuple[np.ndarray, np.ndarray]:
    data = bytes(packed)
    if len(data) % NEIGHBOUR_BYTES:
        raise ValueError(f"a packed neighbour list of {len(data)} bytes is not a multiple of {NEIGHBOUR_BYTES}")
    size = len(data) // NEIGHBOUR_BYTES
    ids = np.frombuffer(data, dtype=ID_DTYPE, count=size)
    scores = np.frombuffer(data, dtype=SCORE_DTYPE, count=size, offset=size * ID_DTYPE.itemsize)
    return ids, scores


class SimilarList(models.Model):
    """One product's visually similar products under one model version, best first, over-fetched (K of them)
    so that request-time filters (category, price, stock) can still fill a page.

    `product_id` is deliberately not a foreign key: when a product is deleted its list must outlive it until the
    incremental update has read it (it tells which lists held the product) and removed it.
    """

    version = models.ForeignKey("search.ModelVersion", on_delete=models.CASCADE, related_name="similar_lists")
    product_id = models.BigIntegerField()
    neighbours = models.BinaryField(help_text="Packed: int64 product ids, then float32 cosine scores, best first.")
    size = models.PositiveSmallIntegerField(default=0)
    exhaustive = models.BooleanField(
        default=False,
        help_text="The list holds every other product of the collection (a catalog smaller than K): a filtered "
        "read that finds fewer than asked is then complete, not a reason to query the vector store.",
    )
    computed_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "product_id"], name="one_similar_list_per_product_version")
        ]

    def __str__(self):
        return f"similar to product {self.product_id} ({self.size}, version {self.version_id})"

    def unpacked(self) -> tuple[np.ndarray, np.ndarray]:
        return unpack_neighbours(self.neighbours)


class SimilarListBuild(models.Model):
    """The batch job that computes every product's list for one model version: chunked, resumable from `cursor`.

    Only the task carrying the latest `task_token` runs, so a restarted build supersedes one still queued.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    version = models.OneToOneField("search.ModelVersion", on_delete=models.CASCADE, related_name="similar_build")
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED, db_index=True)
    cursor = models.BigIntegerField(default=0, help_text="Last product id whose list this build has written.")
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    task_token = models.CharField(max_length=32, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self):
        return f"similar lists of {self.version_id} ({self.state})"

    @property
    def progress(self) -> str:
        if not self.total:
            return "-"
        return f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
