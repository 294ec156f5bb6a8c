"""A dependency that is down answers a clean 503 with Retry-After, never an unhandled 500 (with DEBUG, a traceback).

The database restarting (its connections cut, or refused while it starts) and a media folder that cannot take a
file (disk full, read-only) are outages the client can do nothing about but retry; the request wrote nothing.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape

from webapp.catalog.services import ImageNotStored

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DATABASE_MESSAGE = "The service is briefly unavailable (its database is not answering); please retry shortly."


class DependencyErrorsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, (OperationalError, InterfaceError)):
            logger.warning("database unavailable for %s %s: %s", request.method, request.path, exception)
            return unavailable(request, DATABASE_MESSAGE)
        if isinstance(exception, ImageNotStored):
            return unavailable(request, str(exception))
        return None


def unavailable(request: HttpRequest, message: str) -> HttpResponse:
    wants_json = request.path.startswith("/api/") or "json" in request.headers.get("Accept", "")
    if wants_json:
        response: HttpResponse = JsonResponse({"detail": message}, status=503)
    else:
        response = HttpResponse(
            "<!doctype html><title>Temporarily unavailable</title><h1>Temporarily unavailable</h1>"
            f"<p>{escape(message)}</p>",
            status=503,
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
