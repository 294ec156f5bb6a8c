"""Django settings, read from the environment with safe embedded defaults.

With no configuration the product runs on SQLite, a filesystem Celery broker (a real worker
process, no server) and a Milvus Lite server on 127.0.0.1. `.env.example` lists every variable.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


VAR_DIR = Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "dev-only-insecure-key-set-DJANGO_SECRET_KEY-in-production"
ALLOWED_HOSTS = [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "webapp.catalog",
    "webapp.search",
    "webapp.api",
    "webapp.curation",
    "webapp.recommendations",
    "webapp.ops",
    "django_celery_beat",
]

MIDDLEWARE = [
    "webapp.ops.request_ids.RequestIdMiddleware",
    # A body over REQUEST_MAX_BYTES is answered 413 before anything reads it (gunicorn does not cap bodies).
    "webapp.limits.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A database restarting or a full media disk answers a clean 503 with Retry-After, not a 500.
    "webapp.ops.database_errors.DependencyErrorsMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
    )
}
# A persistent connection cut by a database restart is noticed and replaced before the request uses it.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker processes write the same file: WAL and a busy timeout avoid "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Test processes (the Celery worker the tests start) must see the same file, not an in-memory DB.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}

CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith("redis"):
    CACHES = {"default": {"BACKEND": "webapp.cache.ReusingRedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "visnet"}}
SIMILAR_PRODUCTS_CACHE_SECONDS = env_int("SIMILAR_PRODUCTS_CACHE_SECONDS", 600)
# Precomputed similar lists (webapp.recommendations): K neighbours stored per product and model version, over-
# fetched so request-time filters can still fill a page; the build job writes them CHUNK products at a time, one
# task running about TASK_SECONDS before it queues the next.
SIMILAR_LIST_K = env_int("SIMILAR_LIST_K", 60)
SIMILAR_LIST_BUILD_CHUNK = env_int("SIMILAR_LIST_BUILD_CHUNK", 256)
SIMILAR_LIST_TASK_SECONDS = float(os.environ.get("SIMILAR_LIST_TASK_SECONDS", "60"))
# Serving similar products (webapp/recommendations/serving.py, fastpath.py): each response is serialised once and
# kept as bytes in the default cache per (version, product) for BYTES_CACHE_SECONDS (how stale a price can get);
SIMILAR_BYTES_CACHE_SECONDS = env_int("SIMILAR_BYTES_CACHE_SECONDS", 300)
# at most this many parameter variants (k, filters, host) per product are kept, the oldest dropped first;
SIMILAR_BYTES_VARIANTS = env_int("SIMILAR_BYTES_VARIANTS", 16)
# browsers and CDNs may reuse a response this long (private, per client, while an A/B candidate serves);
SIMILAR_HTTP_MAX_AGE = env_int("SIMILAR_HTTP_MAX_AGE", 60)
# each web process also keeps the hottest products' bytes in memory this long (0: off) and this many of them;
SIMILAR_LRU_SECONDS = float(os.environ.get("SIMILAR_LRU_SECONDS", "3"))
SIMILAR_LRU_SIZE = env_int("SIMILAR_LRU_SIZE", 2048)
# the WSGI fast path answers cached similar-products GETs before Django (webapp/wsgi.py); off: Django answers all.
SIMILAR_FAST_PATH = env_bool("SIMILAR_FAST_PATH", True)

# Shopper feedback and A/B (webapp/search/feedback.py, experiments.py). Rates per client address (or signed-in user),
# kept in the default cache: set CACHE_URL to Redis when several web processes serve, or each counts alone.
FEEDBACK_THROTTLE_RATES = {
    "feedback": os.environ.get("FEEDBACK_THROTTLE_RATE", "20/minute"),  # "not similar" marks
    "feedback-click": os.environ.get("CLICK_THROTTLE_RATE", "120/minute"),  # result clicks
}
FEEDBACK_TOKEN_MAX_AGE_SECONDS = env_int("FEEDBACK_TOKEN_MAX_AGE_SECONDS", 24 * 3600)
SERVED_COUNTS_FLUSH_SECONDS = float(os.environ.get("SERVED_COUNTS_FLUSH_SECONDS", "10"))
# Search by photo (page and API share the budget) and image uploads, per client address or signed-in user, counted
# in the default cache (webapp/limits.py). An empty value switches a limit off.
REQUEST_THROTTLE_RATES = {
    "search": os.environ.get("SEARCH_THROTTLE_RATE", "60/minute") or None,
    "upload": os.environ.get("UPLOAD_THROTTLE_RATE", "300/minute") or None,
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or VAR_DIR / "staticfiles")
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT") or VAR_DIR / "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Images: every image that enters (upload, API, import) passes these limits.
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 15 * 1024 * 1024)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 40_000_000)
IMAGE_MAX_SIDE = env_int("IMAGE_MAX_SIDE", 12_000)
IMAGE_MIN_SIDE = env_int("IMAGE_MIN_SIDE", 8)
THUMBNAIL_SIZE = env_int("THUMBNAIL_SIZE", 256)
DATA_UPLOAD_MAX_MEMORY_SIZE = IMAGE_MAX_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = IMAGE_MAX_BYTES + 1024 * 1024
# The whole request body (an image plus the form's other fields); larger is answered 413 (webapp/limits.py).
REQUEST_MAX_BYTES = env_int("REQUEST_MAX_BYTES", IMAGE_MAX_BYTES + 1024 * 1024)
IMPORT_DOWNLOAD_TIMEOUT_SECONDS = env_int("IMPORT_DOWNLOAD_TIMEOUT_SECONDS", 15)

# Embedder (ImageNet EfficientNet-Lite stand-in until a trained VisNet version is active).
EMBEDDER_BACKBONE = os.environ.get("EMBEDDER_BACKBONE", "efficientnet_lite0")
EMBEDDER_DEVICE = os.environ.get("EMBEDDER_DEVICE", "auto")
EMBEDDER_IMAGE_SIZE = env_int("EMBEDDER_IMAGE_SIZE", 224)
EMBEDDER_BATCH_SIZE = env_int("EMBEDDER_BATCH_SIZE", 32)

# Localization: a YOLO detector (trained by `python -m ml.detection.train`) runs in workers on the `localize`
# queue; the web request waits for its answer at most LOCALIZE_TIMEOUT_SECONDS, then answers 503.
DETECTOR_ARTIFACT_DIR = Path(os.environ.get("DETECTOR_ARTIFACT_DIR") or BASE_DIR / "models" / "detector-default")
DETECTOR_DEVICE = os.environ.get("DETECTOR_DEVICE", "auto")
DETECTOR_MIN_SCORE = float(os.environ.get("DETECTOR_MIN_SCORE", "0.25"))
DETECTOR_MAX_ITEMS = env_int("DETECTOR_MAX_ITEMS", 10)
LOCALIZE_TIMEOUT_SECONDS = float(os.environ.get("LOCALIZE_TIMEOUT_SECONDS", "10"))
# Context kept around a box when it is cropped for the embedder (fractions of the box side): one vector per item,
# the mean of its crops' embeddings. Chosen on val (docs/localization.md): the mean of the 5% and 10% crops.
CROP_CONTEXTS = tuple(float(c) for c in os.environ.get("CROP_CONTEXTS", "0.05,0.1").split(","))
# How the detected class shapes the vector query when the shopper chose no category: "off", "filter" (a row
# filter inside the query) or "boost" (same-category hits ranked up by CATEGORY_BOOST).
DETECTED_CATEGORY_MODE = os.environ.get("DETECTED_CATEGORY_MODE", "off")
CATEGORY_BOOST = float(os.environ.get("CATEGORY_BOOST", "0.05"))
# Near-duplicate products (webapp/catalog/duplicates.py): two products whose image vectors score at least this
# cosine similarity are flagged for a merchandiser. Chosen on a benchmark for precision >= 0.99 with the shipped
# VisNet (docs/near_duplicates.md: test precision 98%, recall 33%, most misses a re-listing with a new margin or
# crop); choose again when another model version is served.
NEAR_DUPLICATE_THRESHOLD = float(os.environ.get("NEAR_DUPLICATE_THRESHOLD", "0.981"))

# Vector store. The default engine is a Milvus Lite server that `make run` starts on 127.0.0.1 (MILVUS_ENGINE below).
MILVUS_URI = os.environ.get("MILVUS_URI") or "http://127.0.0.1:19530"
MILVUS_TOKEN = os.environ.get("MILVUS_TOKEN", "")
MILVUS_ALIAS = os.environ.get("MILVUS_ALIAS", "products_active")
MILVUS_CONNECT_TIMEOUT = float(os.environ.get("MILVUS_CONNECT_TIMEOUT", "5"))
MILVUS_COLLECTION_PREFIX = os.environ.get("MILVUS_COLLECTION_PREFIX", "products")
# The Milvus engine: "lite" (Milvus Lite, the zero-configuration default) or "standalone" (a real Milvus server).
# `make run` starts the engine's server unless MILVUS_URI is set (an explicit URI is always the server used; the
# engine then only picks the index below); docker/ runs real Milvus.
MILVUS_ENGINE = os.environ.get("MILVUS_ENGINE", "lite")
# The vector index of each engine, recorded here; MILVUS_INDEX_TYPE overrides it. Its build and search parameters
# default per index type in MilvusVectorStore._index_options; MILVUS_INDEX_BUILD_PARAMS and
# MILVUS_INDEX_SEARCH_PARAMS ("name=value,...", e.g. "M=32,efConstruction=256" and "ef=64") replace them.
#   lite        AUTOINDEX: Milvus Lite 3.2 builds it as a faiss HNSW per sealed segment (it also builds FLAT, HNSW,
#               HNSW_SQ, IVF_FLAT, IVF_SQ8; not IVF_PQ nor the GPU indexes)
#   standalone  HNSW (M 16, efConstruction 64, ef 32) on a CPU server: the 1M-vector index study's winner
#               (docs/index_study.md, docs/benchmarks.md): recall@10 0.991 at p50 3.1 ms; IVF_SQ8 takes a third
#               of the memory but its 8-bit codes cap recall@10 at 0.942;
#               a GPU server (milvusdb/milvus:*-gpu, docker/README.md) takes GPU_CAGRA or GPU_IVF_PQ
MILVUS_ENGINE_INDEX_TYPES = {"lite": "AUTOINDEX", "standalone": "HNSW"}
if MILVUS_ENGINE not in MILVUS_ENGINE_INDEX_TYPES:
    raise ValueError(f"MILVUS_ENGINE={MILVUS_ENGINE!r}: choose one of {', '.join(MILVUS_ENGINE_INDEX_TYPES)}")
MILVUS_INDEX_TYPE = os.environ.get("MILVUS_INDEX_TYPE") or MILVUS_ENGINE_INDEX_TYPES[MILVUS_ENGINE]


def env_index_params(name: str) -> dict[str, int | float | str] | None:
    """ "M=32,efConstruction=256" -> {"M": 32, "efConstruction": 256}; unset -> None (the index type's defaults)."""
    params: dict[str, int | float | str] = {}
    for item in filter(None, (part.strip() for part in os.environ.get(name, "").split(","))):
        key, _, text = item.partition("=")
        value: int | float | str = text.strip()
        for number in (int, float):
            try:
                value = number(text)
                break
            except ValueError:
                continue
        params[key.strip()] = value
    return params or None


MILVUS_INDEX_BUILD_PARAMS = env_index_params("MILVUS_INDEX_BUILD_PARAMS")
MILVUS_INDEX_SEARCH_PARAMS = env_index_params("MILVUS_INDEX_SEARCH_PARAMS")
# reconcile_vectors: an image still pending or processing this long after it was created has lost its message.
RECONCILE_STUCK_MINUTES = env_int("RECONCILE_STUCK_MINUTES", 15)
RECONCILE_EVERY_MINUTES = env_int("RECONCILE_EVERY_MINUTES", 10)

# Celery. The default broker is the filesystem transport: a real worker process, no server.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or "filesystem://"
BROKER_DIR = Path(os.environ.get("CELERY_BROKER_DIR") or VAR_DIR / "broker")
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
# Only the localize task keeps a result (the web request waits for it): Redis with a Redis broker, else files.
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith("redis") else f"file://{VAR_DIR / 'celery-results'}"
)
if CELERY_RESULT_BACKEND.startswith("file://"):
    Path(CELERY_RESULT_BACKEND.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_EXPIRES = 600
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "search.ingest_image_batch": {"queue": "ingest"},
    "search.remove_image_vectors": {"queue": "default"},
    "search.sync_product_vectors": {"queue": "default"},
    "search.reembed_catalog": {"queue": "default"},
    "search.localize_photo": {"queue": "localize"},
    "curation.mine_triplets": {"queue": "default"},
    # Retraining runs on its own worker (`workers/start_worker.sh train`, concurrency 1), on a GPU machine when
    # there is one: start that worker there with RETRAIN_CONFIG=configs/visnet_retrain_gpu.yaml.
    "search.retrain_model": {"queue": "train"},
    "search.nightly_retrain": {"queue": "default"},
    "search.reconcile_vectors": {"queue": "default"},
    "recommendations.build_similar_lists": {"queue": "default"},
    "recommendations.update_similar_lists": {"queue": "default"},
    "catalog.find_near_duplicates": {"queue": "default"},
}
# Triplet curation: the street-to-shop benchmark whose street photos are mined and shown to reviewers (read-only
# in requests; `manage.py mine_triplets --build-benchmark` builds it), and how many candidates one mining run adds.
CURATION_BENCHMARK = os.environ.get("CURATION_BENCHMARK", "small")
CURATION_BENCHMARK_SEED = env_int("CURATION_BENCHMARK_SEED", 0)
CURATION_MINE_LIMIT = env_int("CURATION_MINE_LIMIT", 1000)

CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Periodic jobs: celery beat reads its schedule from the database (django-celery-beat), seeded by
# `manage.py seed_periodic_tasks`; people can pause or reschedule them in the admin (Periodic tasks).
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
MINE_TRIPLETS_EVERY_MINUTES = env_int("MINE_TRIPLETS_EVERY_MINUTES", 30)
NEAR_DUPLICATES_HOUR = env_int("NEAR_DUPLICATES_HOUR", 3)  # UTC, nightly

# Retraining (search.retrain_model on the `train` queue): approved triplets plus the benchmark's mined ones.
# RETRAIN_CONFIG empty: configs/visnet_retrain_gpu.yaml on a worker with CUDA, configs/visnet_retrain.yaml otherwise.
RETRAIN_CONFIG = os.environ.get("RETRAIN_CONFIG", "")
TRAINED_MODELS_DIR = Path(os.environ.get("TRAINED_MODELS_DIR") or VAR_DIR / "models")
# The nightly retrain is off unless NIGHTLY_RETRAIN is on; it starts a run only when this many triplets were
# approved since the last run.
NIGHTLY_RETRAIN = env_bool("NIGHTLY_RETRAIN", False)
NIGHTLY_RETRAIN_MIN_APPROVALS = env_int("NIGHTLY_RETRAIN_MIN_APPROVALS", 200)
NIGHTLY_RETRAIN_HOUR = env_int("NIGHTLY_RETRAIN_HOUR", 2)  # UTC
# Pruning old model collections (only when asked: `manage.py prune_collections`, or the admin) keeps this many
# standby versions' collections for rollback.
MODEL_COLLECTIONS_KEEP = env_int("MODEL_COLLECTIONS_KEEP", 2)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PERMISSION_CLASSES": ["webapp.api.permissions.IsStaffOrReadOnly"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 24,
    "DEFAULT_THROTTLE_RATES": {**FEEDBACK_THROTTLE_RATES, **REQUEST_THROTTLE_RATES},
    # The client address for rate limits: REMOTE_ADDR, or with N trusted proxies in front, the address the
    # outermost of them saw (X-Forwarded-For); never a header the client alone chose.
    "NUM_PROXIES": env_int("TRUSTED_PROXY_COUNT", 0),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "VisNet visual search API",
    "DESCRIPTION": "Catalog, visually similar products and visual search by photo.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# Structured logs: one JSON object per line with the request id, in web and worker processes alike
# (LOG_FORMAT=text for a terminal). Celery keeps this configuration instead of installing its own.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "webapp.ops.request_ids.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "webapp.ops.request_ids.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(task)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_id"],
            "formatter": "json" if LOG_FORMAT == "json" else "text",
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
