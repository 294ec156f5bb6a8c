"""Visual search page: upload (or drop) a photo, get ranked look-alikes from the catalog.

With JavaScript the page talks to POST /api/search/ (static/js/visual_search.js): every detected item is boxed
on the photo and any of them can be searched without a reload. This view is the form POST without JavaScript:
it searches the most confident item (or the whole photo when asked, or when nothing was found) and renders the
photo with its boxes and the results on the server.

Both paths serve the shopper's A/B arm (`webapp.search.experiments`): the page starts a session, so the script's
API calls are the same client. "Not similar" buttons come with the script's results only: a mark on a photo search
sends the photo again, which the script still holds and a page rendered without JavaScript does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from webapp.catalog.images import InvalidImage
from webapp.limits import throttle_posts
from webapp.search.experiments import client_key_for, serving_version_for
from webapp.search.forms import VisualSearchForm, preview_data_url
from webapp.search.localization import ItemBox, LocalizationUnavailable
from webapp.search.models import ModelVersion
from webapp.search.selectors import (
    WHOLE_PHOTO,
    InvalidBox,
    PhotoQuery,
    RankedProduct,
    search_by_image,
    search_by_photo,
)
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

RESULTS_PER_SEARCH = 24
UNAVAILABLE_MESSAGE = "Visual search is temporarily unavailable. Please try again in a minute."
NO_DETECTION_NOTE = "Item detection is unavailable right now, so the whole photo was searched."


@dataclass(frozen=True)
class ShownBox:
    """A detected item as the page draws it: percentages of the photo, so it sits on any size of preview."""

    index: int
    label: str
    score: float
    left: float
    top: float
    width: float
    height: float
    searched: bool


@dataclass
class PageSearch:
    query: PhotoQuery
    results: list[RankedProduct]
    boxes: list[ShownBox] = field(default_factory=list)


def _shown_boxes(boxes: list[ItemBox], width: int, height: int, query: PhotoQuery) -> list[ShownBox]:
    return [
        ShownBox(
            index=item.index,
            label=item.label,
            score=item.score,
            left=100 * item.box[0] / width,
            top=100 * item.box[1] / height,
            width=100 * (item.box[2] - item.box[0]) / width,
            height=100 * (item.box[3] - item.box[1]) / height,
            searched=query.index == item.index,
        )
        for item in boxes
    ]


def _search(content: bytes, form: VisualSearchForm, version: ModelVersion | None) -> PageSearch:
    """The best detected item (or the whole photo when asked); the whole photo when detection is down."""
    filters, whole_photo = form.filters(), bool(form.cleaned_data.get("whole_photo"))
    try:
        found = search_by_photo(
            content=content, k=RESULTS_PER_SEARCH, filters=filters, whole_photo=whole_photo, version=version
        )
    except LocalizationUnavailable as exc:
        logger.warning("visual search page: localization unavailable, searching the whole photo: %s", exc)
        results = search_by_image(content=content, k=RESULTS_PER_SEARCH, filters=filters, version=version)
        return PageSearch(query=PhotoQuery(WHOLE_PHOTO, note=NO_DETECTION_NOTE), results=results)
    boxes = _shown_boxes(found.boxes, found.width, found.height, found.query) if found.width and found.height else []
    return PageSearch(query=found.query, results=found.results, boxes=boxes)


@require_http_methods(["GET", "POST"])
@throttle_posts("search")
def visual_search(request):
    client_key = client_key_for(request, create_session=True)
    if request.method == "GET":
        return render(request, "search/visual_search.html", {"form": VisualSearchForm()})

    form = VisualSearchForm(request.POST, request.FILES)
    context = {"form": form, "results": None, "service_error": None, "preview": None, "search": None}
    if not form.is_valid():
        return render(request, "search/visual_search.html", context, status=400)

    content = form.cleaned_data["image"]
    version = serving_version_for(client_key=client_key)
    try:
        found = _search(content, form, version)
    except (InvalidImage, InvalidBox) as exc:
        form.add_error("image", str(exc))
        return render(request, "search/visual_search.html", context, status=400)
    except VectorStoreUnavailable:
        logger.exception("visual search failed: vector store unavailable")
        context["service_error"] = UNAVAILABLE_MESSAGE
        return render(request, "search/visual_search.html", context, status=503)
    # Not counted as served for the A/B rates: without the script these results cannot be clicked through a beacon
    # or marked, so counting them would dilute the rates of whichever arm no-JS shoppers land in.
    context.update(
        search=found,
        results=found.results,
        preview=preview_data_url(content),
        model_version=version.model_version if version is not None else "",
    )
    return render(request, "search/visual_search.html", context)
