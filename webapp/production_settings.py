"""Production settings: webapp.settings plus what `manage.py check --deploy` asks for.

Select with DJANGO_SETTINGS_MODULE=webapp.production_settings (the Docker image and docker/docker-compose.yml do).
DEBUG is off whatever DJANGO_DEBUG says; the secret key and the allowed hosts must come from the environment
(DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS): without them the process refuses to start rather than run with a
development default. HTTPS is terminated by a reverse proxy in front of gunicorn, which sets X-Forwarded-Proto.
"""

import os

from django.core.exceptions import ImproperlyConfigured

from webapp.settings import *  # noqa: F403
from webapp.settings import env_bool, env_int

DEBUG = False

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-"):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to a random string of at least 50 characters, e.g. "
        '`python -c "import secrets; print(secrets.token_urlsafe(50))"`.'
    )
ALLOWED_HOSTS = [host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host]
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list the site's host names (comma-separated).")

# HTTPS only: the proxy terminates TLS and says so in X-Forwarded-Proto (it must overwrite a client's header).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SECURE_REDIRECT_EXEMPT = [r"^health/$"]  # the load balancer's plain-HTTP health check
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)  # a header only: submitting the site is separate
SECURE_CONTENT_TYPE_NOSNIFF = True  # an uploaded image is never read as a page
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_SAMESITE = "Lax"
