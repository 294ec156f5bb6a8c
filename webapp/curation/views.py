"""Triplet review for merchandisers: the keyboard-driven page, its JSON endpoints and the reference pictures.

Every view needs a logged-in user with the curation permission it names: an anonymous visitor of a page is sent to
the admin login, a JSON client gets 403 with the reason; a shopper (no permission) gets 403 everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotModified, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from webapp.curation import refs, selectors, services
from webapp.curation.models import Triplet, TripletDecision

BATCH_SIZE = 30


def _allowed(request: HttpRequest, permission: str, staff: bool) -> bool:
    user = request.user
    return bool(user.is_active and (user.is_staff or not staff) and user.has_perm(permission))


def page_permission(permission: str, staff: bool = False) -> Callable:
    """Anonymous: to the admin login and back; logged in without the permission: 403."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path(), reverse("admin:login"))
            if not _allowed(request, permission, staff):
                raise PermissionDenied(f"needs the {permission} permission")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def json_permission(permission: str) -> Callable:
    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return JsonResponse({"detail": "Log in as a merchandiser first."}, status=403)
            if not _allowed(request, permission, staff=False):
                return JsonResponse({"detail": f"You need the {permission} permission."}, status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _picture(ref: str) -> dict:
    """How the page shows a reference: the main picture (the item) and, for an item in a photo, the photo."""
    url = reverse("curation:ref-image", args=[ref])
    if refs.ref_has_context(ref):
        return {"ref": ref, "url": f"{url}?mode=crop", "context_url": f"{url}?mode=photo"}
    return {"ref": ref, "url": url, "context_url": None}


def _decision_json(decision: TripletDecision) -> dict:
    return {
        "id": decision.pk,
        "action": decision.action,
        "label": decision.get_action_display(),
        "reviewer": decision.reviewer.get_username() if decision.reviewer else None,
        "at": decision.decided_at.isoformat(),
    }


def _triplet_json(triplet: Triplet, history: list[TripletDecision] | None = None) -> dict:
    if history is None:
        history = getattr(triplet, "history", None)
    if history is None:
        history = selectors.triplet_history(triplet=triplet)
    return {
        "id": triplet.pk,
        "kind": triplet.kind,
        "kind_label": triplet.get_kind_display(),
        "source": triplet.source,
        "category": triplet.category,
        "status": triplet.status,
        "scores": triplet.scores or {},
        "reviewed_by": triplet.reviewed_by.get_username() if triplet.reviewed_by else None,
        "reviewed_at": triplet.reviewed_at.isoformat() if triplet.reviewed_at else None,
        "anchor": _picture(triplet.anchor_ref),
        "positive": _picture(triplet.positive_ref),
        "negative": _picture(triplet.negative_ref),
        "history": [_decision_json(d) for d in history],
        "admin_url": reverse("admin:curation_triplet_change", args=[triplet.pk]),
    }


@require_GET
@page_permission("curation.change_triplet")
def review(request: HttpRequest) -> HttpResponse:
    try:
        filters = selectors.ReviewFilters.from_query(request.GET)
        error = ""
    except ValueError as exc:
        filters, error = selectors.ReviewFilters(), str(exc)
    context = {
        "filters": filters,
        "choices": selectors.review_filter_choices(),
        "filter_error": error,
        "total": selectors.triplet_count(filters=filters),
        "batch_url": reverse("curation:review-batch") + "?" + urlencode(filters.as_query()),
        "batch_size": BATCH_SIZE,
    }
    return render(request, "curation/review.html", context)


@require_GET
@json_permission("curation.change_triplet")
def review_batch(request: HttpRequest) -> JsonResponse:
    """The next pending (or filtered) triplets after `after`, with their picture URLs, for the page to prefetch."""
    try:
        filters = selectors.ReviewFilters.from_query(request.GET)
        after = int(request.GET.get("after") or 0)
        limit = int(request.GET.get("limit") or BATCH_SIZE)
    except ValueError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    triplets = selectors.triplets_for_review(filters=filters, after_id=after, limit=limit)
    last = triplets[-1].pk if triplets else after
    return JsonResponse(
        {
            "triplets": [_triplet_json(t) for t in triplets],
            "after": last,
            "remaining": selectors.triplet_count(filters=filters, after_id=last),
        }
    )


def _json_body(request: HttpRequest) -> dict:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        return data
    return request.POST.dict()


@require_POST
@json_permission("curation.change_triplet")
def review_decide(request: HttpRequest, pk: int) -> JsonResponse:
    try:
        action = _json_body(request).get("action", "")
        decision = services.triplet_decide(triplet=pk, action=action, reviewer=request.user)
    except Triplet.DoesNotExist:
        return JsonResponse({"detail": f"triplet {pk} does not exist"}, status=404)
    except services.DecisionError as exc:
        status = 409 if isinstance(exc, services.DecisionConflict) else 400
        return JsonResponse({"detail": str(exc)}, status=status)
    except ValueError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    triplet = Triplet.objects.select_related("reviewed_by").get(pk=pk)
    return JsonResponse({"decision": _decision_json(decision), "triplet": _triplet_json(triplet)})


@require_POST
@json_permission("curation.change_triplet")
def review_undo(request: HttpRequest, pk: int) -> JsonResponse:
    try:
        decision = services.triplet_decision_undo(decision=pk, reviewer=request.user)
    except services.DecisionError as exc:
        status = 409 if isinstance(exc, services.DecisionConflict) else 404
        return JsonResponse({"detail": str(exc)}, status=status)
    triplet = Triplet.objects.select_related("reviewed_by").get(pk=decision.triplet_id)
    return JsonResponse({"decision": _decision_json(decision), "triplet": _triplet_json(triplet)})


@require_GET
@page_permission("curation.view_triplet", staff=True)
def ref_image(request: HttpRequest, ref: str) -> HttpResponse:
    """A reference as a PNG: `?mode=photo` (the item's box drawn on its photo) or `?mode=crop`."""
    rendered = refs.ref_render(ref=ref, mode=request.GET.get("mode", "photo"))
    etag = f'"{rendered.etag}"' if rendered.etag else ""
    if etag and etag in request.headers.get("If-None-Match", ""):
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(rendered.content, content_type="image/png", status=rendered.status)
    if etag:
        response["ETag"] = etag
        response["Cache-Control"] = f"private, max-age={rendered.max_age}"
    else:
        response["Cache-Control"] = "no-store"
    return response
