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
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "visnet"}}
SIMILAR_PRODUCTS_CACHE_SECONDS = env_int("SIMILAR_PRODUCTS_CACHE_SECONDS", 600)

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

# Vector store. The embedded default is a Milvus Lite server that `make run` starts on 127.0.0.1.
MILVUS_URI = os.environ.get("MILVUS_URI") or "http://127.0.0.1:19530"
MILVUS_TOKEN = os.environ.get("MILVUS_TOKEN", "")
MILVUS_ALIAS = os.environ.get("MILVUS_ALIAS", "products_active")
MILVUS_CONNECT_TIMEOUT = float(os.environ.get("MILVUS_CONNECT_TIMEOUT", "5"))
MILVUS_COLLECTION_PREFIX = os.environ.get("MILVUS_COLLECTION_PREFIX", "products")
# AUTOINDEX suits Milvus Lite and CPU servers; GPU servers take GPU_CAGRA or GPU_IVF_PQ.
MILVUS_INDEX_TYPE = os.environ.get("MILVUS_INDEX_TYPE", "AUTOINDEX")
# reconcile_vectors: an image still pending or processing this long after it was created has lost its message.
RECONCILE_STUCK_MINUTES = env_int("RECONCILE_STUCK_MINUTES", 15)

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
}
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 24,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "VisNet visual search API",
    "DESCRIPTION": "Catalog, visually similar products and visual search by photo.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
