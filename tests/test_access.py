"""Abuse and access: per-client rate limits in the shared cache, request size limits, CSRF on every form and every
POST, API writes for staff only, `check --deploy` clean under the production settings, every service on loopback
by default, and the dependency audit's offline tolerance."""

from __future__ import annotations

import http.server
import io
import ipaddress
import json
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest
import yaml
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.checks import run_checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from PIL import Image
from rest_framework.test import APIClient

from tests.conftest import ROOT, VENV_BIN, make_catalog_manager, require_service
from webapp.catalog import services as catalog_services
from webapp.catalog.models import Product, ProductImage
from webapp.limits import ScopedCacheThrottle
from webapp.ports import free_port, wait_for_port

SEARCH_URL, API_SEARCH_URL = "/search/", "/api/search/"


def png(color=(200, 30, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(content: bytes | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile("photo.png", content if content is not None else b"not an image", "image/png")


@pytest.fixture
def product(db):
    category = catalog_services.category_get_or_create(name="Shirt")
    return catalog_services.product_upsert(sku="sku-1", title="Shirt", price=10, category=category)[0]


@pytest.fixture
def staff(db):
    return make_catalog_manager("catalog-manager")


@pytest.fixture
def rates(settings):
    """Turn the search and upload limits on (tests/conftest.py turns them off), on an empty cache."""
    cache.clear()
    settings.REQUEST_THROTTLE_RATES = {"search": "3/minute", "upload": "2/minute"}
    yield settings.REQUEST_THROTTLE_RATES
    cache.clear()


# Rate limits -----------------------------------------------------------------------------------------------
def test_the_n_plus_first_search_in_the_window_is_429_with_retry_after_per_client(db, rates, monkeypatch):
    client = APIClient()
    # Answers do not matter: a refused photo counts as a search too (the work of reading it was done).
    assert [client.post(API_SEARCH_URL, {"image": photo()}).status_code for _ in range(3)] == [400, 400, 400]
    throttled = client.post(API_SEARCH_URL, {"image": photo()})
    assert throttled.status_code == 429
    assert 1 <= int(throttled["Retry-After"]) <= 60 and "throttled" in throttled.json()["detail"]

    # The budget is the client's: the page's form counts against it too, and a forged X-Forwarded-For is ignored.
    page = Client().post(SEARCH_URL, {"image": photo()})
    assert page.status_code == 429 and 1 <= int(page["Retry-After"]) <= 60
    assert "Too many requests" in page.content.decode() and 'id="rate-limited"' in page.content.decode()
    spoofed = client.post(API_SEARCH_URL, {"image": photo()}, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert spoofed.status_code == 429

    # Another client is not affected; the counts live in the shared cache, keyed by client.
    other = APIClient(REMOTE_ADDR="198.51.100.7")
    assert other.post(API_SEARCH_URL, {"image": photo()}).status_code == 400
    assert len(cache.get("throttle_search_127.0.0.1")) == 3 and len(cache.get("throttle_search_198.51.100.7")) == 1

    # When the window has passed, the client may search again.
    later = time.time() + 61
    monkeypatch.setattr(ScopedCacheThrottle, "timer", lambda self: later)
    assert client.post(API_SEARCH_URL, {"image": photo()}).status_code == 400


def test_uploads_are_limited_per_user_and_an_empty_rate_switches_a_limit_off(rates, settings, product, staff):
    uploader = APIClient()
    uploader.force_authenticate(staff)
    url = f"/api/products/{product.pk}/images/"
    codes = [uploader.post(url, {"image": photo(png((i, 0, 0)))}).status_code for i in range(3)]
    assert codes == [201, 201, 429]
    assert ProductImage.objects.count() == 2

    settings.REQUEST_THROTTLE_RATES = {**rates, "upload": None}
    assert uploader.post(url, {"image": photo(png((9, 9, 9)))}).status_code == 201


def test_rates_are_counted_in_the_configured_cache(settings):
    """Redis (shared by every web process) when CACHE_URL names it, per-process memory otherwise."""
    backend = settings.CACHES["default"]["BACKEND"]
    if os.environ.get("CACHE_URL", "").startswith("redis"):
        assert backend == "webapp.cache.ReusingRedisCache"
    else:
        assert backend == "django.core.cache.backends.locmem.LocMemCache"
    assert ScopedCacheThrottle.cache is cache


@pytest.mark.integration
def test_with_redis_the_count_is_shared_by_every_process(db, rates, settings):
    """With the Redis cache (CACHE_URL=redis://..., as in production and CI) the count lives in Redis, where every
    web process reads and writes it: here a second connection sees what the request wrote."""
    import redis

    url = os.environ.get("CACHE_URL", "")
    url = url if url.startswith("redis") else os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        require_service(f"Redis at {url} unreachable ({exc}); set TEST_REDIS_URL")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    backend = "webapp.cache.ReusingRedisCache"  # what settings.py picks for CACHE_URL=redis://...
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": url, "KEY_PREFIX": prefix}}
    client = APIClient()
    assert [client.post(API_SEARCH_URL, {"image": photo()}).status_code for _ in range(4)] == [400, 400, 400, 429]
    raw = redis.Redis.from_url(url)
    keys = list(raw.scan_iter(match=f"{prefix}:*throttle_search_127.0.0.1"))
    assert len(keys) == 1 and 0 < raw.ttl(keys[0]) <= 60
    raw.delete(*keys)


# Request size limits ---------------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_before_it_is_read(db, settings):
    settings.REQUEST_MAX_BYTES = 4096
    big = SimpleUploadedFile("big.png", png(size=(64, 64)) + b"\0" * 8192, "image/png")
    response = APIClient().post(API_SEARCH_URL, {"image": big})
    assert response.status_code == 413 and "larger than the 4.0 KB limit" in response.json()["detail"]
    # A declared size of 10 GB over a 10-byte body: answered at once, so nothing tried to read 10 GB.
    page = Client().generic("POST", SEARCH_URL, b"0123456789", "image/png", CONTENT_LENGTH=str(10 * 1024**3))
    assert page.status_code == 413 and "(10,737,418,240 bytes)" in page.content.decode()
    assert Client().generic("POST", SEARCH_URL, b"", CONTENT_LENGTH="lots").status_code == 400


def test_gunicorn_config_limits_the_request_line_and_headers_and_binds_loopback(monkeypatch):
    monkeypatch.delenv("GUNICORN_BIND", raising=False)
    config = runpy.run_path(str(ROOT / "docker" / "gunicorn.conf.py"))
    assert config["bind"] == "127.0.0.1:8000"
    assert config["limit_request_line"] <= 8190 and config["limit_request_fields"] <= 100
    assert config["limit_request_field_size"] <= 8190
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "-c /app/docker/gunicorn.conf.py" in entrypoint
    assert "-c docker/gunicorn.conf.py" in (ROOT / "scripts" / "run.sh").read_text()


@pytest.mark.integration
def test_gunicorn_enforces_the_limits_and_listens_on_loopback_only(tmp_path):
    """The real server with docker/gunicorn.conf.py: too many headers and too long a line are refused by gunicorn,
    an oversized body by Django before it is read; and the socket is bound to 127.0.0.1 only."""
    port = free_port()
    env = dict(os.environ, GUNICORN_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY="1", WEB_THREADS="1",
               VAR_DIR=str(tmp_path), GUNICORN_ACCESS_LOG="")  # fmt: skip
    with open(tmp_path / "gunicorn.log", "w") as log:
        server = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "webapp.wsgi:application", "-c", "docker/gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 90, process=server)

        def raw(request: bytes) -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:  # the worker boots first
                sock.sendall(request)
                chunks = [sock.recv(65536)]
                while chunks[-1]:  # gunicorn closes the connection after these answers
                    chunks.append(sock.recv(65536))
                return b"".join(chunks).decode("latin-1")

        many = b"".join(b"X-H%d: v\r\n" % i for i in range(60))
        assert raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n").split()[1] in ("400", "431")
        assert raw(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n").split()[1] in ("400", "414")
        declared = b"POST /api/search/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
        answer = raw(declared + b"Content-Length: 1073741824\r\nConnection: close\r\n\r\n0123456789")
        assert answer.split()[1] == "413" and "larger than the" in answer
        listening = {c.laddr for p in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
                     for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}  # fmt: skip
        assert listening and all(loopback(address.ip) for address in listening), listening
    finally:
        server.terminate()
        server.wait(timeout=30)


def loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (a dual-stack socket bound to 127.0.0.1)."""
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


# CSRF --------------------------------------------------------------------------------------------------------
class _Forms(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._open = {"method": attrs.get("method", "get").lower(), "action": attrs.get("action", ""), "inputs": []}
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None:
            self._open["inputs"].append(attrs.get("name", ""))

    def handle_endtag(self, tag):
        if tag == "form":
            self._open = None


def forms_on(response) -> list[dict]:
    parser = _Forms()
    parser.feed(response.content.decode())
    return parser.forms


def html_pages(product) -> list[str]:
    pages = ["/", SEARCH_URL, f"/products/{product.pk}/", "/admin/", "/admin/password_change/"]
    for model in admin.site._registry:
        meta = model._meta
        pages += [f"/admin/{meta.app_label}/{meta.model_name}/", f"/admin/{meta.app_label}/{meta.model_name}/add/"]
    for extra in ("/curation/review/", "/admin/operations/"):
        try:
            get_resolver().resolve(extra)
            pages.append(extra)
        except Exception:  # that page is not part of this build
            continue
    return pages


def test_every_post_form_carries_a_csrf_token(product, staff, settings):
    staff.is_superuser = True
    staff.save()
    browser = Client(enforce_csrf_checks=True, raise_request_exception=False)
    pages_with_forms, post_forms = set(), []
    login = browser.get("/admin/login/")
    post_forms += [(f, "/admin/login/") for f in forms_on(login) if f["method"] == "post"]
    browser.force_login(staff)
    for url in html_pages(product):
        response = browser.get(url)
        assert response.status_code < 500, f"{url}: {response.status_code}"
        if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
            continue
        for form in forms_on(response):
            pages_with_forms.add(url)
            if form["method"] == "post":
                post_forms.append((form, url))
    assert {SEARCH_URL, "/admin/login/"} <= {url for _, url in post_forms}
    missing = [(url, form["action"]) for form, url in post_forms if "csrfmiddlewaretoken" not in form["inputs"]]
    assert len(post_forms) >= 10 and not missing, missing


def url_examples() -> list[str]:
    """One concrete path for every URL pattern of the project (numbers for int converters, words for the rest)."""
    found = []

    def walk(patterns, prefix=""):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern):
                found.append(route)

    walk(get_resolver().url_patterns)
    paths = set()
    for route in found:
        path = re.sub(r"\(\?P<\w+>[^)]*\)", "x", route).replace("^", "").replace("$", "").replace("\\", "")
        path = re.sub(r"<int:\w+>", "1", path)
        path = re.sub(r"<(?:\w+:)?\w+>", "x", path)
        if "(" not in path and "[" not in path:
            paths.add("/" + path)
    return sorted(paths)


def test_a_post_without_the_csrf_token_is_refused_everywhere(product, staff):
    """Signed in (a session cookie the browser would send on its own), every URL refuses a POST without the token:
    pages by Django's middleware, the API by DRF's session authentication."""
    browser = Client(enforce_csrf_checks=True, raise_request_exception=False)
    browser.force_login(staff)
    urls = url_examples()
    assert len(urls) >= 20 and API_SEARCH_URL in urls and SEARCH_URL in urls
    answers = {url: browser.post(url, {"sku": "x"}).status_code for url in urls}
    allowed = {url: code for url, code in answers.items() if code != 403}
    assert not allowed, allowed
    assert Product.objects.count() == 1

    token = browser.get(SEARCH_URL).cookies["csrftoken"].value  # with the token the same session may write
    created = browser.post(
        "/api/products/",
        json.dumps({"sku": "sku-2", "title": "New", "price": "5.00", "category": "Shirt"}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert created.status_code == 201, created.content


# Writes only for staff ---------------------------------------------------------------------------------------
SHOPPER_POSTS = {"search", "detect", "feedback-not-similar", "feedback-click"}  # open by design (AllowAny)


def api_writes(product) -> list[tuple[str, str, str]]:
    """(method, path, url name) for every unsafe method of every API view that is not open to shoppers."""
    from webapp.api import urls as api_urls

    writes = []
    for pattern in api_urls.urlpatterns:
        view = getattr(pattern.callback, "view_class", None)
        if view is None or pattern.name in SHOPPER_POSTS:
            continue
        path = "/api/" + re.sub(r"<int:\w+>", str(product.pk), str(pattern.pattern))
        writes += [(m, path, pattern.name) for m in ("post", "put", "patch", "delete") if hasattr(view, m)]
    return writes


def test_api_writes_need_a_signed_in_staff_account(product, staff):
    writes = api_writes(product)
    assert {name for _, _, name in writes} >= {"product-list", "product-detail", "product-images"}
    customer = get_user_model().objects.create_user("shopper", password="a-long-password-2")
    anonymous, signed_in, merchandiser = APIClient(), APIClient(), APIClient()
    signed_in.force_authenticate(customer)
    merchandiser.force_authenticate(staff)
    refused = {}
    for method, path, name in writes:
        for who, client in (("anonymous", anonymous), ("not staff", signed_in)):
            code = getattr(client, method)(path, {}, format="json").status_code
            if code not in (401, 403):
                refused[(who, method, name)] = code
    assert not refused, f"writes that answered without staff: {refused}"
    assert Product.objects.count() == 1

    basic = APIClient()  # HTTP Basic for scripts: a non-staff password is refused too
    basic.credentials(HTTP_AUTHORIZATION="Basic c2hvcHBlcjphLWxvbmctcGFzc3dvcmQtMg==")  # shopper:a-long-password-2
    assert basic.post("/api/products/", {}, format="json").status_code == 403
    payload = {"sku": "sku-2", "title": "New", "price": "5.00", "category": "Shirt"}
    assert merchandiser.post("/api/products/", payload, format="json").status_code == 201
    assert merchandiser.delete(f"/api/products/{product.pk}/").status_code == 204
    assert anonymous.get("/api/products/").status_code == 200  # reads stay public


# Production settings -----------------------------------------------------------------------------------------
def production_env(tmp_path, **overrides) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "GUNICORN_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="webapp.production_settings",
        DJANGO_SECRET_KEY="x7Gq2" * 12,
        DJANGO_ALLOWED_HOSTS="shop.example.com",
        VAR_DIR=str(tmp_path),
    )
    return {**env, **overrides}


def settings_of(env: dict, *names: str) -> dict:
    code = "import importlib, json, os, sys; m = importlib.import_module(os.environ['DJANGO_SETTINGS_MODULE']); "
    code += "print(json.dumps({n: getattr(m, n) for n in sys.argv[1:]}, default=str))"
    done = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.integration
def test_check_deploy_is_clean_under_the_production_settings(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "no issues" in done.stdout


def test_the_deploy_check_is_not_vacuous_the_development_settings_fail_it(settings):
    settings.DEBUG = True
    ids = {message.id for message in run_checks(include_deployment_checks=True)}
    assert {"security.W004", "security.W008", "security.W012", "security.W016", "security.W018"} <= ids


def test_production_settings_take_secrets_and_hosts_from_the_environment_only(tmp_path):
    values = settings_of(
        production_env(tmp_path, DJANGO_DEBUG="1"),
        "DEBUG", "ALLOWED_HOSTS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
        "SECURE_SSL_REDIRECT",
    )  # fmt: skip
    assert values == {
        "DEBUG": False, "ALLOWED_HOSTS": ["shop.example.com"], "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True, "SECURE_HSTS_SECONDS": 31_536_000, "SECURE_SSL_REDIRECT": True,
    }  # fmt: skip
    for missing, message in (("DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY must be set"),
                             ("DJANGO_ALLOWED_HOSTS", "DJANGO_ALLOWED_HOSTS must list")):  # fmt: skip
        env = production_env(tmp_path)
        env.pop(missing)
        done = subprocess.run([sys.executable, "-c", "import webapp.production_settings"], cwd=ROOT, env=env,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode != 0 and message in done.stderr
    weak = production_env(tmp_path, DJANGO_SECRET_KEY="dev-only-insecure-key-set-DJANGO_SECRET_KEY")
    done = subprocess.run([sys.executable, "-c", "import webapp.production_settings"], cwd=ROOT, env=weak,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "at least 50 characters" in done.stderr
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    assert compose["x-app-env"]["DJANGO_SETTINGS_MODULE"] == "webapp.production_settings"
    assert "DJANGO_SETTINGS_MODULE=webapp.production_settings" in (ROOT / "docker" / "Dockerfile").read_text()


# Loopback by default -----------------------------------------------------------------------------------------
def test_defaults_reach_and_publish_only_loopback(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MILVUS", "DJANGO_", "HOST"))}
    env.update(DJANGO_SETTINGS_MODULE="webapp.settings", VAR_DIR=str(tmp_path))
    values = settings_of(env, "MILVUS_URI", "ALLOWED_HOSTS")
    assert values["MILVUS_URI"] == "http://127.0.0.1:19530"
    assert set(values["ALLOWED_HOSTS"]) <= {"localhost", "127.0.0.1", "[::1]", "testserver"}

    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    assert re.search(r"^HOST=\$\{HOST:-127\.0\.0\.1\}$", run_sh, re.M)
    assert re.search(r'gunicorn .*--bind "\$HOST:\$PORT"', run_sh)
    milvus = re.search(r"milvus-lite server (.*?)\s*>", run_sh, re.S).group(1)
    assert "--host 127.0.0.1" in milvus and "0.0.0.0" not in run_sh

    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["web"], "the web service publishes its port (for the proxy on the host)"
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    assert not any(service.get("network_mode") == "host" for service in compose["services"].values())


@pytest.mark.integration
def test_the_milvus_lite_server_started_as_run_sh_does_listens_on_loopback_only(tmp_path):
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    command = re.search(r"^\s*(\.venv/bin/milvus-lite server .*?)\s*>", run_sh, re.S | re.M).group(1)
    command = command.rstrip("\\ \n").replace("\\\n", " ").replace(".venv/bin/", f"{VENV_BIN}/")
    port = free_port()
    script = f'VAR_DIR="{tmp_path}"; MILVUS_PORT={port}; exec {command}'
    with open(tmp_path / "milvus.log", "w") as log:
        server = subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 90, process=server)
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        listening = {c.laddr for p in processes for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        assert port in {address.port for address in listening}, listening
        assert all(loopback(address.ip) for address in listening), listening
        for address in psutil.net_if_addrs().values():  # not reachable on the machine's other addresses
            for entry in address:
                if entry.family == socket.AF_INET and not entry.address.startswith("127."):
                    with pytest.raises(OSError), socket.create_connection((entry.address, port), timeout=2):
                        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


# Dependency audit --------------------------------------------------------------------------------------------
@pytest.fixture
def vulnerability_service():
    """A stand-in for PyPI's JSON API on 127.0.0.1 (the probe only needs an answer with vulnerability data)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"info": {}, "vulnerabilities": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi/django/json"
    server.shutdown()


def fake_pip_audit(tmp_path: Path, report: dict) -> Path:
    """A python that answers `-m pip_audit ... --output PATH` with the given report (pip-audit's JSON format)."""
    (tmp_path / "report.json").write_text(json.dumps(report))
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip_audit" ]; then\n'
        '  while [ "$#" -gt 0 ]; do [ "$1" = "--output" ] && cp "$(dirname "$0")/report.json" "$2"; shift; done\n'
        "  exit 0\nfi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def audit(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/audit.sh"], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_the_audit_says_why_and_passes_when_the_service_cannot_be_reached():
    done = audit({"AUDIT_PROBE_URL": f"http://127.0.0.1:{free_port()}/pypi/django/json", "PY": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped, the vulnerability service cannot be reached" in done.stdout and "did not answer" in done.stdout


def test_the_audit_fails_on_a_known_vulnerability_and_passes_without(tmp_path, vulnerability_service):
    vulnerable = {"dependencies": [
        {"name": "django", "version": "5.2.19", "vulns": [{"id": "PYSEC-0000-1", "fix_versions": ["5.2.20"]}]},
        {"name": "pillow", "version": "11.3.0", "vulns": []},
    ]}  # fmt: skip
    done = audit({"AUDIT_PROBE_URL": vulnerability_service, "PY": str(fake_pip_audit(tmp_path, vulnerable))})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "django 5.2.19: PYSEC-0000-1 (fixed in 5.2.20)" in done.stdout

    clean = {"dependencies": [{"name": "pillow", "version": "11.3.0", "vulns": []}]}
    done = audit({"AUDIT_PROBE_URL": vulnerability_service, "PY": str(fake_pip_audit(tmp_path, clean))})
    assert done.returncode == 0 and "1 packages audited, no known vulnerabilities" in done.stdout


def test_the_redis_cache_reuses_one_client_per_connection_pool():
    """webapp.cache.ReusingRedisCache: values round-trip through Redis, and the second operation reuses the first's
    client instead of building a new one (Django's own backend builds one per operation)."""
    import redis

    from webapp.cache import ReusingRedisCache

    url = os.environ.get("CACHE_URL", "")
    url = url if url.startswith("redis") else os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        require_service(f"Redis at {url} unreachable ({exc}); set TEST_REDIS_URL")
    backend = ReusingRedisCache(url, {"KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}"})
    backend.set("body", b"\x00bytes", 30)
    assert backend.get("body") == b"\x00bytes"
    client = backend._cache.get_client("body")
    assert backend._cache.get_client("other", write=False) is client
    backend.delete("body")
    assert backend.get("body") is None
