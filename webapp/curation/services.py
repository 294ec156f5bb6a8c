"""Triplet curation: import mined triplets (JSONL), review them, export them for training."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp.curation.models import Triplet

REF_PATTERN = re.compile(r"^(shop:[^\s]+|street:[^\s:]+:\d+)$")
SCORE_KEYS = ("positive_score", "negative_score", "negative_kind")


@dataclass
class TripletImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse_ref(ref: str) -> tuple[str, str]:
    """("shop", sku) or ("street", "<split>:<index>"); ValueError for anything else."""
    if not isinstance(ref, str) or not REF_PATTERN.match(ref) or len(ref) > 200:
        raise ValueError(f"bad image reference {ref!r} (expected shop:<sku> or street:<split>:<index>)")
    kind, _, rest = ref.partition(":")
    return kind, rest


def _clean_row(data) -> dict:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    missing = [name for name in ("anchor", "positive", "negative", "kind", "source") if not data.get(name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    refs = [data["anchor"], data["positive"], data["negative"]]
    for ref in refs:
        parse_ref(ref)
    if len(set(refs)) != 3:
        raise ValueError("anchor, positive and negative must be three different images")
    if data["kind"] not in Triplet.Kind.values:
        raise ValueError(f"kind {data['kind']!r} is not one of {', '.join(Triplet.Kind.values)}")
    source = str(data["source"])
    if len(source) > 120:
        raise ValueError("source is longer than 120 characters")
    scores = data.get("scores") or {}
    if not isinstance(scores, dict):
        raise ValueError("scores is not a JSON object")
    scores = {**scores, **{k: data[k] for k in SCORE_KEYS if data.get(k) is not None}}
    status = data.get("status") or Triplet.Status.PENDING
    if status not in Triplet.Status.values:
        raise ValueError(f"status {status!r} is not one of {', '.join(Triplet.Status.values)}")
    return {
        "anchor_ref": refs[0],
        "positive_ref": refs[1],
        "negative_ref": refs[2],
        "kind": data["kind"],
        "source": source,
        "scores": scores,
        "status": status,
    }


def triplets_import(*, lines: Iterable[str], progress=None) -> TripletImportReport:
    """Import JSONL rows (ml/triplets.py's format); idempotent on (anchor, positive, negative).

    A re-import refreshes kind, source and scores but never a reviewer's decision. Each bad row is
    reported with its line number and reason and never stops the others.
    """
    report = TripletImportReport()
    for number, line in enumerate(lines, start=1):
        if progress is not None:
            progress.update(1)
        if not line.strip():
            continue
        try:
            row = _clean_row(json.loads(line))
        except (ValueError, TypeError) as exc:
            report.errors.append((number, str(exc)))
            continue
        key = {k: row.pop(k) for k in ("anchor_ref", "positive_ref", "negative_ref")}
        status = row.pop("status")
        try:
            with transaction.atomic():
                triplet, created = Triplet.objects.get_or_create(**key, defaults={**row, "status": status})
                if created:
                    report.created += 1
                elif any(getattr(triplet, name) != value for name, value in row.items()):
                    for name, value in row.items():
                        setattr(triplet, name, value)
                    triplet.save(update_fields=list(row))
                    report.updated += 1
                else:
                    report.unchanged += 1
        except IntegrityError as exc:
            report.errors.append((number, f"database refused the row: {exc}"))
    return report


def triplet_record(triplet: Triplet) -> dict:
    """The JSONL record: ml/triplets.py's fields (scores flattened) plus the review status."""
    return {
        **(triplet.scores or {}),
        "anchor": triplet.anchor_ref,
        "positive": triplet.positive_ref,
        "negative": triplet.negative_ref,
        "kind": triplet.kind,
        "source": triplet.source,
        "status": triplet.status,
    }


def triplets_export(*, out: IO[str], approved_only: bool = False) -> int:
    """Write triplets as JSONL (consumed by `train_visnet --approved-triplets`); returns the row count."""
    queryset = Triplet.objects.order_by("id")
    if approved_only:
        queryset = queryset.filter(status=Triplet.Status.APPROVED)
    count = 0
    for triplet in queryset.iterator(chunk_size=2000):
        out.write(json.dumps(triplet_record(triplet), sort_keys=True) + "\n")
        count += 1
    return count


def triplets_review(*, triplet_ids: Iterable[int], status: str, reviewer) -> int:
    """Approve or reject triplets, recording who and when; returns how many changed."""
    if status not in (Triplet.Status.APPROVED, Triplet.Status.REJECTED, Triplet.Status.PENDING):
        raise ValueError(f"unknown status {status!r}")
    reviewed = status != Triplet.Status.PENDING
    return Triplet.objects.filter(pk__in=list(triplet_ids)).update(
        status=status, reviewed_by=reviewer if reviewed else None, reviewed_at=timezone.now() if reviewed else None
    )
