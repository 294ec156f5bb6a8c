"""Triplet curation: import mined triplets (JSONL), review them (every decision logged), export them for training."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp.curation.models import Triplet, TripletDecision

REF_PATTERN = re.compile(r"^(shop:[^\s]+|street:[^\s:]+:\d+|query:\d+)$")
SCORE_KEYS = ("positive_score", "negative_score", "negative_kind")
# What a reviewer may ask for, by verb or by the logged action's own name.
ACTIONS = {
    "approve": TripletDecision.Action.APPROVED,
    "reject": TripletDecision.Action.REJECTED,
    "swap": TripletDecision.Action.SWAPPED,
    "reset": TripletDecision.Action.RESET,
    **{action.value: action for action in TripletDecision.Action},
}
STATUS_OF_ACTION = {
    TripletDecision.Action.APPROVED: Triplet.Status.APPROVED,
    TripletDecision.Action.REJECTED: Triplet.Status.REJECTED,
    TripletDecision.Action.RESET: Triplet.Status.PENDING,
    TripletDecision.Action.SWAPPED: Triplet.Status.PENDING,  # a swapped triplet is a new question
}
ACTION_OF_STATUS = {
    Triplet.Status.APPROVED: TripletDecision.Action.APPROVED,
    Triplet.Status.REJECTED: TripletDecision.Action.REJECTED,
    Triplet.Status.PENDING: TripletDecision.Action.RESET,
}


class DecisionError(ValueError):
    """A review decision that cannot be applied (unknown action, a swap onto an existing triplet, a stale undo)."""


class DecisionConflict(DecisionError):
    """The decision clashes with the data as it is now: the swapped triplet exists, or a later decision does."""


@dataclass
class TripletImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse_ref(ref: str) -> tuple[str, str]:
    """("shop", sku), ("street", "<split>:<index>") or ("query", "<id>"); ValueError for anything else."""
    if not isinstance(ref, str) or not REF_PATTERN.match(ref) or len(ref) > 200:
        raise ValueError(f"bad image reference {ref!r} (expected shop:<sku>, street:<split>:<index> or query:<id>)")
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
    row = {
        "anchor_ref": refs[0],
        "positive_ref": refs[1],
        "negative_ref": refs[2],
        "kind": data["kind"],
        "source": source,
        "scores": scores,
        "status": status,
    }
    if data.get("category"):  # absent in older files: a re-import then keeps the category already stored
        category = str(data["category"])
        if len(category) > 120:
            raise ValueError("category is longer than 120 characters")
        row["category"] = category
    return row


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
        "category": triplet.category,
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


def _action(action: str) -> TripletDecision.Action:
    try:
        return ACTIONS[action]
    except (KeyError, TypeError):
        raise DecisionError(f"unknown action {action!r} (expected approve, reject, swap or reset)") from None


def _apply(triplet: Triplet, action: TripletDecision.Action, reviewer, now) -> list[str]:
    """Change the triplet in memory for one decision; returns the fields to save."""
    fields = ["status", "reviewed_by", "reviewed_at"]
    if action == TripletDecision.Action.SWAPPED:
        triplet.positive_ref, triplet.negative_ref = triplet.negative_ref, triplet.positive_ref
        scores = dict(triplet.scores or {})
        if "positive_score" in scores or "negative_score" in scores:
            scores["positive_score"], scores["negative_score"] = (
                scores.get("negative_score"),
                scores.get("positive_score"),
            )
        triplet.scores = scores
        fields += ["positive_ref", "negative_ref", "scores"]
    triplet.status = STATUS_OF_ACTION[action]
    reviewed = triplet.status != Triplet.Status.PENDING
    triplet.reviewed_by = reviewer if reviewed else None
    triplet.reviewed_at = now if reviewed else None
    return fields


def _swap_conflict(triplet: Triplet) -> Triplet | None:
    """The other triplet that already holds this one's swapped references, if any."""
    return (
        Triplet.objects.filter(
            anchor_ref=triplet.anchor_ref, positive_ref=triplet.negative_ref, negative_ref=triplet.positive_ref
        )
        .exclude(pk=triplet.pk)
        .first()
    )


def _decide_locked(triplet: Triplet, action: TripletDecision.Action, reviewer) -> TripletDecision:
    now = timezone.now()
    if action == TripletDecision.Action.SWAPPED and (other := _swap_conflict(triplet)) is not None:
        raise DecisionConflict(
            f"cannot swap triplet {triplet.pk}: its swapped version already exists as triplet {other.pk} "
            f"(status {other.status}); review that one instead"
        )
    fields = _apply(triplet, action, reviewer, now)
    try:
        with transaction.atomic():
            triplet.save(update_fields=fields)
    except IntegrityError as exc:  # a concurrent swap or import created the same references meanwhile
        raise DecisionConflict(f"cannot swap triplet {triplet.pk}: the swapped triplet already exists ({exc})") from exc
    return TripletDecision.objects.create(triplet=triplet, action=action, reviewer=reviewer)


def triplet_decide(*, triplet: Triplet | int, action: str, reviewer) -> TripletDecision:
    """One review decision: approve, reject, swap (positive <-> negative, back to pending) or reset to pending.

    The triplet and its TripletDecision row are written in one transaction. Raises DecisionError for an unknown
    action or a swap whose result already exists as another triplet (the unique constraint), Triplet.DoesNotExist
    for a triplet that is gone.
    """
    chosen = _action(action)
    pk = triplet if isinstance(triplet, int) else triplet.pk
    with transaction.atomic():
        locked = Triplet.objects.select_for_update().get(pk=pk)
        decision = _decide_locked(locked, chosen, reviewer)
    if isinstance(triplet, Triplet):
        triplet.refresh_from_db()
    return decision


def triplet_decision_undo(*, decision: TripletDecision | int, reviewer) -> TripletDecision:
    """Undo a triplet's latest decision, logged as a new decision by `reviewer`.

    An approval or rejection gives back the status the triplet had before it (as the log tells); a swap is
    swapped back (the triplet stays pending). Only the latest decision on a triplet can be undone: undoing an
    older one would silently overrule the later one, so that is refused with a DecisionError.
    """
    decision_id = decision if isinstance(decision, int) else decision.pk
    with transaction.atomic():
        try:
            undone = TripletDecision.objects.select_related("reviewer").get(pk=decision_id)
        except TripletDecision.DoesNotExist:
            raise DecisionError(f"decision {decision_id} does not exist") from None
        triplet = Triplet.objects.select_for_update().get(pk=undone.triplet_id)
        history = list(triplet.decisions.select_related("reviewer").order_by("-decided_at", "-id"))
        if history[0].pk != undone.pk:
            later = history[0]
            who = later.reviewer.get_username() if later.reviewer else "someone"
            raise DecisionConflict(
                f"decision {undone.pk} is not the latest on triplet {triplet.pk}: {who} {later.action} it "
                f"afterwards; undo that one first"
            )
        if undone.action == TripletDecision.Action.SWAPPED:
            return _decide_locked(triplet, TripletDecision.Action.SWAPPED, reviewer)
        earlier = history[1] if len(history) > 1 else None  # a swap before it had left the triplet pending
        previous = (
            Triplet.Status.PENDING if earlier is None else STATUS_OF_ACTION[TripletDecision.Action(earlier.action)]
        )
        restored = _decide_locked(triplet, ACTION_OF_STATUS[previous], reviewer)
        if earlier is not None and previous != Triplet.Status.PENDING:
            # The earlier verdict stands again, with its own reviewer and time.
            Triplet.objects.filter(pk=triplet.pk).update(reviewed_by=earlier.reviewer, reviewed_at=earlier.decided_at)
        return restored


def triplets_review(*, triplet_ids: Iterable[int], status: str, reviewer) -> int:
    """Approve, reject or reset triplets in bulk, logging one decision per triplet; returns how many changed."""
    if status not in (Triplet.Status.APPROVED, Triplet.Status.REJECTED, Triplet.Status.PENDING):
        raise ValueError(f"unknown status {status!r}")
    reviewed = status != Triplet.Status.PENDING
    action = ACTION_OF_STATUS[Triplet.Status(status)]
    with transaction.atomic():
        ids = list(Triplet.objects.select_for_update().filter(pk__in=list(triplet_ids)).values_list("pk", flat=True))
        count = Triplet.objects.filter(pk__in=ids).update(
            status=status, reviewed_by=reviewer if reviewed else None, reviewed_at=timezone.now() if reviewed else None
        )
        TripletDecision.objects.bulk_create(
            [TripletDecision(triplet_id=pk, action=action, reviewer=reviewer) for pk in ids]
        )
    return count


@dataclass
class SwapReport:
    swapped: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)


def triplets_swap(*, triplet_ids: Iterable[int], reviewer) -> SwapReport:
    """Swap positive and negative of each triplet (each logged); one whose swap already exists is refused."""
    report = SwapReport()
    for pk in sorted(set(triplet_ids)):
        try:
            triplet_decide(triplet=pk, action="swap", reviewer=reviewer)
        except DecisionError as exc:
            report.refused.append((pk, str(exc)))
        except Triplet.DoesNotExist:
            report.refused.append((pk, f"triplet {pk} does not exist"))
        else:
            report.swapped.append(pk)
    return report
