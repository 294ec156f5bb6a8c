"""Reads for triplet review: the queue a reviewer works through, its filters and a triplet's decision history."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from webapp.curation.models import Triplet, TripletDecision


@dataclass(frozen=True)
class ReviewFilters:
    """What the review page and its JSON endpoint filter on; empty strings mean "any"."""

    kind: str = ""
    category: str = ""
    status: str = Triplet.Status.PENDING
    reviewer: str = ""  # a username: the triplets whose current verdict is theirs

    @classmethod
    def from_query(cls, query) -> ReviewFilters:
        """From request.GET; raises ValueError naming the first value that is not a choice."""
        kind = (query.get("kind") or "").strip()
        if kind and kind not in Triplet.Kind.values:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(Triplet.Kind.values)}")
        status = query.get("status")
        status = Triplet.Status.PENDING if status is None else status.strip()
        if status and status not in Triplet.Status.values:
            raise ValueError(f"status {status!r} is not one of {', '.join(Triplet.Status.values)}")
        category = (query.get("category") or "").strip()[:120]
        reviewer = (query.get("reviewer") or "").strip()[:150]
        return cls(kind=kind, category=category, status=status, reviewer=reviewer)

    def as_query(self) -> dict[str, str]:
        return {"kind": self.kind, "category": self.category, "status": self.status, "reviewer": self.reviewer}


def triplet_queryset(*, filters: ReviewFilters) -> QuerySet[Triplet]:
    queryset = Triplet.objects.select_related("reviewed_by").order_by("id")
    if filters.kind:
        queryset = queryset.filter(kind=filters.kind)
    if filters.category:
        queryset = queryset.filter(category=filters.category)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.reviewer:
        queryset = queryset.filter(reviewed_by__username=filters.reviewer)
    return queryset


def triplets_for_review(*, filters: ReviewFilters, after_id: int = 0, limit: int = 30) -> list[Triplet]:
    """The next `limit` triplets after `after_id` in id order, each with its decision history prefetched."""
    queryset = triplet_queryset(filters=filters).filter(pk__gt=after_id)
    triplets = list(queryset[: max(1, min(limit, 200))])
    decisions: dict[int, list[TripletDecision]] = {t.pk: [] for t in triplets}
    for decision in TripletDecision.objects.filter(triplet_id__in=decisions).select_related("reviewer"):
        decisions[decision.triplet_id].append(decision)
    for triplet in triplets:
        triplet.history = decisions[triplet.pk]  # type: ignore[attr-defined]
    return triplets


def triplet_count(*, filters: ReviewFilters, after_id: int = 0) -> int:
    return triplet_queryset(filters=filters).filter(pk__gt=after_id).count()


@dataclass(frozen=True)
class FilterChoices:
    kinds: list[tuple[str, str]]
    categories: list[str]
    statuses: list[tuple[str, str]]
    reviewers: list[str]


def review_filter_choices() -> FilterChoices:
    categories = Triplet.objects.exclude(category="").values_list("category", flat=True).distinct().order_by("category")
    reviewers = (
        get_user_model()
        .objects.filter(reviewed_triplets__isnull=False)
        .values_list("username", flat=True)
        .distinct()
        .order_by("username")
    )
    return FilterChoices(
        kinds=list(Triplet.Kind.choices),
        categories=list(categories),
        statuses=list(Triplet.Status.choices),
        reviewers=list(reviewers),
    )


def triplet_history(*, triplet: Triplet) -> list[TripletDecision]:
    return list(triplet.decisions.select_related("reviewer").order_by("-decided_at", "-id"))
