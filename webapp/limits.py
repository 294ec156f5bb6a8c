"""Abuse limits: per-client request rates and the request body cap.

Rates (settings.REQUEST_THROTTLE_RATES, from the environment) are counted per signed-in user, else per client
address, in the default cache: Redis when CACHE_URL is set, so every web process and machine counts together;
per process otherwise. Behind a reverse proxy set TRUSTED_PROXY_COUNT so the address is the client's, not the
proxy's (and a client cannot pick its own through X-Forwarded-For).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from types import SimpleNamespace

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from rest_framework.throttling import ScopedRateThrottle


class ScopedCacheThrottle(ScopedRateThrottle):
    """DRF's ScopedRateThrottle with its rate read from settings.REQUEST_THROTTLE_RATES on each request (DRF reads
    its own DEFAULT_THROTTLE_RATES once, at import), so a deploy or a test can change it. No rate: no limit."""

    def get_rate(self) -> str | None:
        return settings.REQUEST_THROTTLE_RATES.get(self.scope) if self.scope else None


def throttle_posts(scope: str) -> Callable:
    """Limit a page view's POSTs with the API's throttle for `scope`: the page and the API share one budget per
    client. Over it, the page answers 429 with Retry-After and says how long to wait."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method == "POST":
                throttle = ScopedCacheThrottle()
                # DRF's throttle reads only .user and .META of the request and .throttle_scope of the view.
                page = SimpleNamespace(throttle_scope=scope)
                if not throttle.allow_request(request, page):  # type: ignore[arg-type]
                    wait = max(1, math.ceil(throttle.wait() or 1))
                    response = render(request, "429.html", {"wait": wait}, status=429)
                    response["Retry-After"] = str(wait)
                    return response
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class RequestBodyLimitMiddleware:
    """Answer 413 to a request that declares a body over settings.REQUEST_MAX_BYTES, before anything reads it.

    gunicorn does not cap bodies, and Django's DATA_UPLOAD_MAX_MEMORY_SIZE leaves file uploads out (they spill to
    temporary files), so without this a client could stream gigabytes to disk. A body without Content-Length
    (chunked) is not read by Django at all.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _refuse(request, "The Content-Length header is not a number.", 400)
        limit = settings.REQUEST_MAX_BYTES
        if length > limit:
            most = filesizeformat(limit).replace("\xa0", " ")
            return _refuse(request, f"The request is larger than the {most} limit ({length:,} bytes).", 413)
        return self.get_response(request)


def _refuse(request: HttpRequest, message: str, status: int) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": message}, status=status)
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
