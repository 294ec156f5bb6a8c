"""Read-only lookups shared by every process: the active model version, its embedder, the vector store.

Nothing here writes. Registering the default version and activating others are services
(`webapp.search.activation`), run by `make run`'s setup, commands, the admin and tasks.

Everything loads lazily on first use, so a Celery prefork parent never initialises CUDA or a model:
only the child process that runs a task does.

The active model version is read from the database with a short in-process TTL: a search embeds
with the active version's embedder and reads that version's own collection (pinned by name, not
through the alias), so the query vector and the indexed vectors always come from the same model,
even in the seconds around an alias swap. The previous collection is kept (standby), so a process
that has not yet noticed the swap keeps answering from it.

A candidate version (state candidate, `ab_share` > 0) serves a sticky share of shoppers before it is
activated; which version serves a given shopper is decided in `webapp.search.experiments`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from webapp.search.embedders import Embedder, build_embedder
from webapp.search.models import ModelVersion
from webapp.search.vector_store import MilvusVectorStore

if TYPE_CHECKING:
    from ml.detection.detector import Detector

ACTIVE_VERSION_TTL_SECONDS = float(os.environ.get("ACTIVE_VERSION_TTL_SECONDS", "2"))
MAX_CACHED_EMBEDDERS = 3

_lock = threading.RLock()
_embedders: OrderedDict[tuple, Embedder] = OrderedDict()
_active_cache: dict[tuple, tuple[float, ModelVersion | None]] = {}


# The active version --------------------------------------------------------------------------
def _active_key() -> tuple:
    return (
        str(settings.DATABASES["default"].get("NAME")),
        settings.MILVUS_URI,
        settings.MILVUS_COLLECTION_PREFIX,
        settings.MILVUS_ALIAS,
    )


def _cached_version(key: tuple, fresh: bool, load: Callable[[], ModelVersion | None], cache_none: bool):
    now = time.monotonic()
    if not fresh:
        with _lock:
            cached = _active_cache.get(key)
        if cached is not None and now - cached[0] < ACTIVE_VERSION_TTL_SECONDS:
            return cached[1]
    version = load()
    if version is not None or cache_none:
        with _lock:
            _active_cache[key] = (now, version)
    return version


def active_version(fresh: bool = False) -> ModelVersion | None:
    """The active ModelVersion (a read-only snapshot), cached for ACTIVE_VERSION_TTL_SECONDS unless `fresh`.

    None until a version is registered as active (`manage.py ensure_default_model`, or the first ingestion);
    "nothing active yet" is not cached: the first ingestion registers one.
    """
    return _cached_version(
        _active_key(),
        fresh,
        lambda: ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).order_by("-activated_at", "-id").first(),
        cache_none=False,
    )


def candidate_version(fresh: bool = False) -> ModelVersion | None:
    """The candidate version serving an A/B share (state candidate, ab_share > 0), or None; cached like the active.

    "None" is cached too: most of the time there is no experiment, and every search and product page asks.
    """
    return _cached_version(
        ("candidate", *_active_key()),
        fresh,
        lambda: (
            ModelVersion.objects.filter(state=ModelVersion.State.CANDIDATE, ab_share__gt=0)
            .order_by("-updated_at", "-id")
            .first()
        ),
        cache_none=True,
    )


def reset_active_version_cache() -> None:
    """Forget the cached active and candidate versions (tests, and commands that just changed them)."""
    with _lock:
        _active_cache.clear()


def kept_collections() -> list[str]:
    """Collections besides the alias that deletes must reach: versions embedding, candidates, standby versions."""
    names = ModelVersion.objects.filter(
        state__in=[ModelVersion.State.EMBEDDING, ModelVersion.State.CANDIDATE, ModelVersion.State.STANDBY]
    ).values_list("model_version", flat=True)
    store = get_vector_store()
    return [store.collection_name(name) for name in names]


# Embedders -----------------------------------------------------------------------------------
def _embedder_key(version: ModelVersion) -> tuple:
    return (
        version.model_version,
        version.kind,
        version.artifact_dir,
        tuple(sorted((version.config or {}).items())) if version.kind == ModelVersion.Kind.IMAGENET else (),
    )


def embedder_for(version: ModelVersion) -> Embedder:
    """The (cached) embedder of a model version; a few versions stay loaded, least recently used goes."""
    key = _embedder_key(version)
    with _lock:
        if key in _embedders:
            _embedders.move_to_end(key)
            return _embedders[key]
    config = version.config or {}
    embedder = build_embedder(  # outside the lock: loading takes seconds
        kind=version.kind,
        model_version=version.model_version,
        artifact_dir=Path(version.artifact_dir) if version.artifact_dir else None,
        backbone=config.get("backbone", settings.EMBEDDER_BACKBONE),
        image_size=int(config.get("image_size", settings.EMBEDDER_IMAGE_SIZE)),
        device=settings.EMBEDDER_DEVICE,
        batch_size=settings.EMBEDDER_BATCH_SIZE,
    )
    with _lock:
        embedder = _embedders.setdefault(key, embedder)
        _embedders.move_to_end(key)
        while len(_embedders) > MAX_CACHED_EMBEDDERS:
            _embedders.popitem(last=False)
    return embedder


def serving_models_preload(*, warm_up: bool = True) -> dict[str, float]:
    """Load, before a web worker takes its first request, what a search would otherwise load on first use: the
    embedder of every version that serves (the active one and an A/B candidate), one forward pass of each at the
    batch shapes a search uses (one image; one crop per CROP_CONTEXTS) so the first shopper does not pay for
    kernel set-up either, one search of its collection (the vector store's connection and first-query set-up), and
    the URL configuration (every view module imported).
    Returns the time each step took (ms).

    Run by gunicorn's post_worker_init hook (docker/gunicorn.conf.py), in the worker process after the app has
    loaded; never in a Celery prefork parent, a management command or a test that does not ask for it. Reads only:
    with no version active yet there is nothing to load, and the first search loads lazily as before.
    """
    from PIL import Image

    timings: dict[str, float] = {}
    started = time.perf_counter()
    versions = [v for v in (active_version(fresh=True), candidate_version(fresh=True)) if v is not None]
    timings["versions_ms"] = (time.perf_counter() - started) * 1000
    for version in versions:
        t0 = time.perf_counter()
        embedder = embedder_for(version)
        timings[f"load:{version.model_version}_ms"] = (time.perf_counter() - t0) * 1000
        if not warm_up:
            continue
        t0 = time.perf_counter()
        blank = Image.new("RGB", (224, 224), (128, 128, 128))
        vectors = [embedder.embed([blank] * batch) for batch in sorted({1, max(1, len(settings.CROP_CONTEXTS))})]
        timings[f"warm_up:{version.model_version}_ms"] = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        # One search of the version's collection: opens the gRPC channel and pays the first query's set-up (measured
        # ~100 ms on the first search of a worker otherwise); a collection that does not exist yet answers empty.
        version_store(version).search(vectors[0][0], 1)
        timings[f"vector_store:{version.model_version}_ms"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - imports every app's urls, views and serializers now, not on request 1
    timings["urls_ms"] = (time.perf_counter() - t0) * 1000
    timings["total_ms"] = (time.perf_counter() - started) * 1000
    return timings


# The detector ---------------------------------------------------------------------------------
@functools.cache
def _detector(artifact_dir: str, device: str) -> Detector:
    from ml.detection.detector import load_detector  # torch and ultralytics load in the worker that needs them

    return load_detector(artifact_dir, device=device)


def detector() -> Detector:
    """The localization model, loaded once per process (only localize and ingest workers call this)."""
    return _detector(str(settings.DETECTOR_ARTIFACT_DIR), settings.DETECTOR_DEVICE)


# The vector store ----------------------------------------------------------------------------
@functools.cache
def _store(
    uri: str,
    token: str,
    alias: str,
    prefix: str,
    index_type: str,
    connect_timeout: float,
    index_params: tuple[tuple[str, object], ...],
    search_params: tuple[tuple[str, object], ...],
) -> MilvusVectorStore:
    return MilvusVectorStore(
        uri=uri,
        token=token,
        alias=alias,
        prefix=prefix,
        index_type=index_type,
        connect_timeout=connect_timeout,
        index_params=dict(index_params),
        search_params=dict(search_params),
    )


def get_vector_store() -> MilvusVectorStore:
    """The store as the product's alias sees it (writes that follow the alias, admin, counts)."""
    return _store(
        settings.MILVUS_URI,
        settings.MILVUS_TOKEN,
        settings.MILVUS_ALIAS,
        settings.MILVUS_COLLECTION_PREFIX,
        settings.MILVUS_INDEX_TYPE,
        settings.MILVUS_CONNECT_TIMEOUT,
        tuple(sorted((settings.MILVUS_INDEX_BUILD_PARAMS or {}).items())),
        tuple(sorted((settings.MILVUS_INDEX_SEARCH_PARAMS or {}).items())),
    )


def version_store(version: ModelVersion) -> MilvusVectorStore:
    """The store pinned to the collection of `version` (reads answer empty while it does not exist)."""
    store = get_vector_store()
    return store.collection(store.collection_name(version.model_version))
