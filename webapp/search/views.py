"""Visual search page: upload (or drop) a photo, get ranked look-alikes from the catalog."""

from __future__ import annotations

import logging

from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from webapp.catalog.images import InvalidImage
from webapp.search.forms import VisualSearchForm, preview_data_url
from webapp.search.selectors import search_by_image
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

RESULTS_PER_SEARCH = 24
UNAVAILABLE_MESSAGE = "Visual search is temporarily unavailable. Please try again in a minute."


@require_http_methods(["GET", "POST"])
def visual_search(request):
    if request.method == "GET":
        return render(request, "search/visual_search.html", {"form": VisualSearchForm()})

    form = VisualSearchForm(request.POST, request.FILES)
    context = {"form": form, "results": None, "service_error": None, "preview": None}
    if not form.is_valid():
        return render(request, "search/visual_search.html", context, status=400)

    content = form.cleaned_data["image"]
    try:
        context["results"] = search_by_image(content=content, k=RESULTS_PER_SEARCH, filters=form.filters())
    except InvalidImage as exc:
        form.add_error("image", str(exc))
        return render(request, "search/visual_search.html", context, status=400)
    except VectorStoreUnavailable:
        logger.exception("visual search failed: vector store unavailable")
        context["service_error"] = UNAVAILABLE_MESSAGE
        return render(request, "search/visual_search.html", context, status=503)
    context["preview"] = preview_data_url(content)
    return render(request, "search/visual_search.html", context)
