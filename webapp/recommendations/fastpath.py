"""The WSGI fast path: `GET /api/products/<id>/similar/` answered from cached bytes before Django runs.

webapp/wsgi.py wraps Django's application in `SimilarFastPath`. A request is answered here only when the answer
is the one Django would give, byte for byte in the body and header for header (tests/test_serving.py compares
both); anything else goes to Django, whose view fills the cache. Exactly, the fast path answers when ALL hold:

- settings.SIMILAR_FAST_PATH is on, settings.MIDDLEWARE is the stack this module was written for (KNOWN_MIDDLEWARE:
  any other middleware could change the response), settings.DISALLOWED_USER_AGENTS and PREPEND_WWW are unset,
  and `api:product-similar` still reverses to /api/products/<id>/similar/ with SCRIPT_NAME empty;
- the method is GET, PATH_INFO is exactly /api/products/<id>/similar/ with <id> in digits without a leading zero;
- the request carries no body (no Content-Length above 0, no Transfer-Encoding), no Authorization header (Basic
  authentication could answer 401, or name a user whose A/B arm differs), no session cookie (the session
  middleware could answer a Set-Cookie, and a signed-in user's arm follows the user), no CSRF cookie (a malformed
  one is replaced with a Set-Cookie), no If-Match, If-Unmodified-Since or Range header;
- Accept is absent or one of ACCEPTED (so DRF would choose its JSON renderer, unindented);
- the query parameters are simple (`serving.similar_variant`: only k, category, max_price, in_stock, each at most
  once, in the canonical forms it lists);
- the host is one Django accepts (`request.get_host()`, ALLOWED_HOSTS) and SECURE_SSL_REDIRECT would not redirect;
- a version is active; when an A/B candidate serves a share, the client's arm is computed with the same function
  Django uses (`client_key_for` on a request with no user and no session: the X-Client-Id header, else the
  address), and the response is `private`;
- the serving version's bytes for this product and variant are in this process's memory (SIMILAR_LRU_SECONDS) or
  in the shared cache (then copied to memory);
- nothing above raised (a database or cache error falls through to Django, which answers as it does).

It then answers 200 (or 304 for a matching If-None-Match, or without one an If-Modified-Since at or after
Last-Modified) with the headers Django's stack would add for this response: X-Request-ID (the client's when sane),
Allow and `Vary: Accept, Cookie` (DRF and the session middleware), Content-Length (common middleware),
X-Content-Type-Options, Referrer-Policy, Cross-Origin-Opener-Policy and Strict-Transport-Security on HTTPS (security
middleware, as configured), X-Frame-Options (clickjacking middleware), ETag, Last-Modified and Cache-Control.
The served list is counted for the A/B rates (`served_record`) and the request logged on `webapp.requests` as the
request-id middleware does.

What the fast path does not see: a product deleted, or a category renamed, since its bytes were cached is still
answered until the entry expires or is invalidated (`similar_bytes_invalidate`), as a cached view would.
"""

from __future__ import annotations

import io
import logging
import re
import time

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse, QueryDict
from django.http.cookie import parse_cookie
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import NoReverseMatch, reverse
from django.utils.cache import get_conditional_response
from django.utils.http import http_date

from webapp.ops.request_ids import HEADER as REQUEST_ID_HEADER
from webapp.ops.request_ids import SANE_ID, current_request_id, new_request_id
from webapp.recommendations.serving import (
    SURFACE,
    SimilarBody,
    similar_cache_control,
    similar_cached,
    similar_variant,
)
from webapp.search import registry
from webapp.search.experiments import client_key_for, served_record, serving_version_for
from webapp.search.models import ModelVersion

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("webapp.requests")

PATH = re.compile(r"/api/products/([1-9][0-9]{0,17})/similar/")
ACCEPTED = frozenset({"", "*/*", "application/json", "application/json, */*", "application/json, text/plain, */*"})
KNOWN_MIDDLEWARE = (
    "webapp.ops.request_ids.RequestIdMiddleware",
    "webapp.limits.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.ops.database_errors.DependencyErrorsMiddleware",
)
REFUSING_HEADERS = ("HTTP_AUTHORIZATION", "HTTP_IF_MATCH", "HTTP_IF_UNMODIFIED_SINCE", "HTTP_RANGE")
# DRF adds Allow and Vary: Accept to every APIView response; the session middleware adds Cookie (authentication
# reads the session on every API request).
VIEW_HEADERS = [("Allow", "GET, HEAD, OPTIONS"), ("Vary", "Accept, Cookie")]


def _middleware_headers(secure: bool) -> list[tuple[str, str]]:
    """The headers the security and clickjacking middlewares add to a response over HTTPS or not, found by running
    them (they read their settings when created, as Django's own instances did when the application loaded)."""
    request = WSGIRequest(
        {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "443" if secure else "80",
            "wsgi.url_scheme": "https" if secure else "http",
            "wsgi.input": io.BytesIO(b""),
        }
    )
    request.is_secure = lambda: secure  # type: ignore[method-assign]  # as SECURE_PROXY_SSL_HEADER decided
    response = HttpResponse()
    del response["Content-Type"]
    response = SecurityMiddleware(lambda r: response).process_response(request, response)
    response = XFrameOptionsMiddleware(lambda r: response).process_response(request, response)
    return list(response.items())


_route_checked: dict[str, bool] = {}


def _enabled(environ) -> bool:
    if not settings.SIMILAR_FAST_PATH:
        return False
    if settings.DISALLOWED_USER_AGENTS or settings.PREPEND_WWW or environ.get("SCRIPT_NAME"):
        return False
    routed = _route_checked.get(settings.ROOT_URLCONF)
    if routed is None:
        try:
            routed = reverse("api:product-similar", args=[1]) == "/api/products/1/similar/"
        except NoReverseMatch:
            routed = False
        _route_checked[settings.ROOT_URLCONF] = routed
    return routed


def _plain_request(environ) -> bool:
    if environ.get("HTTP_TRANSFER_ENCODING") or environ.get("CONTENT_LENGTH", "0") not in ("", "0"):
        return False
    if any(environ.get(name) for name in REFUSING_HEADERS):
        return False
    if environ.get("HTTP_ACCEPT", "").strip() not in ACCEPTED:
        return False
    cookies = environ.get("HTTP_COOKIE")
    if cookies:
        names = parse_cookie(cookies)
        return settings.SESSION_COOKIE_NAME not in names and settings.CSRF_COOKIE_NAME not in names
    return True


def _not_modified(environ, found: SimilarBody) -> bool:
    """Whether Django's conditional GET handling (If-None-Match, else If-Modified-Since) answers 304."""
    if "HTTP_IF_NONE_MATCH" not in environ and "HTTP_IF_MODIFIED_SINCE" not in environ:
        return False
    answer = get_conditional_response(WSGIRequest(environ), etag=found.etag, last_modified=found.last_modified)
    return answer is not None and answer.status_code == 304


MEMO_SIZE = 1024


class SimilarFastPath:
    """WSGI middleware: answers cached similar-products GETs (conditions in the module docstring), else Django."""

    def __init__(self, application):
        self.application = application
        # Read once, as Django's handler reads its middleware stack and the middlewares their settings.
        self.known_stack = tuple(settings.MIDDLEWARE) == KNOWN_MIDDLEWARE
        self.ssl_redirect = settings.SECURE_SSL_REDIRECT
        self.middleware_headers = {secure: _middleware_headers(secure) for secure in (False, True)}
        proxy_header = settings.SECURE_PROXY_SSL_HEADER
        self.proxy_ssl_header = proxy_header[0] if proxy_header else None
        # What Django makes of a request's host headers and of its query string, memoised: a site sees few of each.
        self._hosts: dict[tuple, tuple[str, bool] | None] = {}
        self._variants: dict[tuple[str, str], str | None] = {}

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET":
            match = PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                answer = self.answer(environ, int(match.group(1)))
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.application(environ, start_response)

    def _scheme_host(self, environ) -> tuple[str, bool] | None:
        """("scheme://host", secure) as Django's request sees them, None for a host Django refuses."""
        key = (
            environ.get("HTTP_HOST"),
            environ.get("HTTP_X_FORWARDED_HOST"),
            environ.get(self.proxy_ssl_header) if self.proxy_ssl_header else None,
            environ.get("wsgi.url_scheme"),
            environ.get("SERVER_NAME"),
            environ.get("SERVER_PORT"),
        )
        if key in self._hosts:
            return self._hosts[key]
        request = WSGIRequest(environ)
        try:
            found: tuple[str, bool] | None = (f"{request.scheme}://{request.get_host()}", request.is_secure())
        except DisallowedHost:
            found = None
        if len(self._hosts) >= MEMO_SIZE:
            self._hosts.clear()
        self._hosts[key] = found
        return found

    def _variant(self, query_string: str, scheme_host: str) -> str | None:
        key = (query_string, scheme_host)
        if key in self._variants:
            return self._variants[key]
        found = similar_variant(params=QueryDict(query_string), scheme_host=scheme_host)
        if len(self._variants) >= MEMO_SIZE:
            self._variants.clear()
        self._variants[key] = found
        return found

    def answer(self, environ, product_id: int) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """(status line, headers, body) when the fast path may answer, else None (Django answers).

        Django's request_started/finished signals are not sent: their receivers close database connections past
        their age and reset the DEBUG query log, and the only queries here are the version lookups (at most one
        per ACTIVE_VERSION_TTL_SECONDS) and the served counts' flush; the next request Django handles in this
        thread closes what needs closing, and a failed query falls through to Django.
        """
        started = time.perf_counter()
        if not (self.known_stack and _plain_request(environ) and _enabled(environ)):
            return None
        try:
            host = self._scheme_host(environ)
            if host is None:
                return None
            scheme_host, secure = host
            if self.ssl_redirect and not secure:
                return None
            variant = self._variant(environ.get("QUERY_STRING", ""), scheme_host)
            if variant is None:
                return None
            active = registry.active_version()
            if active is None:
                return None
            candidate = registry.candidate_version()
            private = candidate is not None and candidate.pk != active.pk
            version: ModelVersion | None = active
            if private:
                version = serving_version_for(client_key=client_key_for(WSGIRequest(environ)))
            found = similar_cached(version=version, product_id=product_id, variant=variant, local=True, environ=environ)
            if found is None:
                return None
        except Exception:  # whatever failed here, Django answers (and reports it as it does)
            logger.debug("similar fast path fell through", exc_info=True)
            return None

        offered = environ.get(REQUEST_ID_HEADER, "")
        request_id = offered if SANE_ID.match(offered) else new_request_id()
        token = current_request_id.set(request_id)
        try:
            if found.counted:
                served_record(version=version, surface=SURFACE)
            headers = [
                ("Content-Type", "application/json"),
                ("Cache-Control", similar_cache_control(private=private)),
                ("ETag", found.etag),
                ("Last-Modified", http_date(found.last_modified)),
                *VIEW_HEADERS,
            ]
            if _not_modified(environ, found):
                status, body = "304 Not Modified", b""
                headers.pop(0)
            else:
                status, body = "200 OK", found.body
            headers.append(("Content-Length", str(len(body))))
            headers.extend(self.middleware_headers[secure])
            headers.append(("X-Request-ID", request_id))
            code = int(status[:3])
            request_logger.info(
                "%s %s %s",
                "GET",
                environ["PATH_INFO"],
                code,
                extra={
                    "request_id": request_id,
                    "status": code,
                    "duration_ms": round(1000 * (time.perf_counter() - started), 1),
                },
            )
        finally:
            current_request_id.reset(token)
        return status, headers, body
