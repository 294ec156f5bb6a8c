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
def _store(uri: str, token: str, alias: str, prefix: str, index_type: str, connect_timeout: float) -> MilvusVectorStore:
    return MilvusVectorStore(
        uri=uri, token=token, alias=alias, prefix=prefix, index_type=index_type, connect_timeout=connect_timeout
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
    )


def version_store(version: ModelVersion) -> MilvusVectorStore:
    """The store pinned to the collection of `version` (reads answer empty while it does not exist)."""
    store = get_vector_store()
    return store.collection(store.collection_name(version.model_version))
