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
# the jitter keeps the workers from restarting together. A new worker loads the embedder before it serves (below):
# about 4 CPU-seconds and 0.8 GB, so at the similar API's 2,000 req/s the old limit of 2,000 restarted each worker
# every couple of seconds. 200,000 is a restart every few minutes at full load.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "200000"))
max_requests_jitter = max_requests // 10

# gunicorn believes X-Forwarded-Proto only from these addresses (Django reads it through SECURE_PROXY_SSL_HEADER).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None  # empty: no access log

# Torch threads per worker: workers x threads must not exceed the cores, or concurrent searches fight over them.
# Measured on 2 cores with 2 workers (docs/scale.md, `python -m benchmarks.scale --only threads`): the query's forward
# pass took p50 24 ms with one thread per worker against 42 ms with two at c=1, and 27 against 30 ms at c=4, so the
# default is cores // workers (at least 1).
# WEB_TORCH_THREADS (or TORCH_NUM_THREADS already set) overrides it; webapp.search.embedders reads TORCH_NUM_THREADS
# when it builds an embedder.
torch_threads = int(
    os.environ.get("WEB_TORCH_THREADS")
    or os.environ.get("TORCH_NUM_THREADS")
    or max(1, (os.cpu_count() or 1) // max(1, workers))
)
os.environ["TORCH_NUM_THREADS"] = str(torch_threads)

# Load the serving models when a worker boots, not on the first search that reaches it (that search used to wait
# about 10 s). gunicorn calls post_worker_init in the new worker after the app has loaded and before it accepts a
# connection, so requests go to workers that are ready. WEB_PRELOAD_MODELS=0 turns it off (models load on first use).
preload_models = os.environ.get("WEB_PRELOAD_MODELS", "1") != "0"


def post_worker_init(worker):
    if not preload_models:
        return
    try:
        from webapp.search.registry import serving_models_preload

        timings = serving_models_preload()
        worker.log.info(
            "serving models preloaded in %.0f ms (torch threads %s): %s",
            timings["total_ms"],
            os.environ.get("TORCH_NUM_THREADS"),
            ", ".join(f"{name} {ms:.0f}" for name, ms in timings.items() if name != "total_ms"),
        )
    except Exception:  # the worker still serves; its first search loads the model instead
        worker.log.exception("preloading the serving models failed; they will load on first use")
    finally:
        from django.db import connections

        connections.close_all()  # the hook's connection belongs to this thread, which serves no request
