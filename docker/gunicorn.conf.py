"""gunicorn settings for the web role (docker/entrypoint.sh and scripts/run.sh pass `-c docker/gunicorn.conf.py`).

Every value can be overridden from the environment. The default bind is loopback only: a container publishes its
port by setting GUNICORN_BIND=0.0.0.0:8000 (docker/docker-compose.yml does, and publishes it on the host's
127.0.0.1 for the TLS-terminating proxy in front).

Request limits: gunicorn caps the request line and the headers here, but not the body. The body is capped by
Django: webapp.limits.RequestBodyLimitMiddleware answers 413 above REQUEST_MAX_BYTES (the image limit plus 1 MiB)
before anything reads it, and DATA_UPLOAD_MAX_MEMORY_SIZE caps non-file form data. A proxy in front should cap it
first too (nginx: `client_max_body_size 16m;`).
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5

# A URL (path and query) of at most 4 KiB, at most 50 headers of at most 8 KiB each: far above what the site's
# pages, API and admin send, and a cheap refusal (400) of header floods.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

# A worker that has served this many requests is replaced (a slow leak in a dependency cannot grow forever);
# the jitter keeps the workers from restarting together.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = 200

# gunicorn believes X-Forwarded-Proto only from these addresses (Django reads it through SECURE_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None  # empty: no access log
