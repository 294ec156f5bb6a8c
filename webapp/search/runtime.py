"""Per-process singletons: the embedders (one per model version), the active version, the vector store.

Everything loads lazily on first use, so a Celery prefork parent never initialises CUDA or a model:
only the child process that runs a task does.

The active model version is read from the database with a short in-process TTL: a search embeds
with the active version's embedder and reads that version's own collection (pinned by name, not
through the alias), so the query vector and the indexed vectors always come from the same model,
even in the seconds around an alias swap. The previous collection is kept (standby), so a process
that has not yet noticed the swap keeps answering from it.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import OrderedDict

from django.conf import settings

from pymilvus.exceptions import MilvusException

from webapp.search.vector_store import MilvusVectorStore, VectorStoreUnavailable, collection_name_for

ACTIVE_VERSION_TTL_SECONDS = float(os.environ.get("ACTIVE_VERSION_TTL_SECONDS", "2"))
MAX_CACHED_EMBEDDERS = 3

_lock = threading.RLock()
_embedders: OrderedDict[tuple, object] = OrderedDict()
_active_cache: dict[tuple, tuple[float, object]] = {}
_threads_set = False


# Embedders -----------------------------------------------------------------------------------
def _embedder_key(version) -> tuple:
    return (version.model_version, version.kind, version.artifact_dir,
            tuple(sorted((version.config or {}).items())) if version.kind == "imagenet" else ())


def build_embedder(version):
    """The embedder factory: an ImageNet Embedder (backbone, image_size) or a trained VisNet artifact.

    Both have the same interface: `.embed(list[PIL]) -> float32 [N, D]` L2-normalised, `.embed_one`,
    `.dim`, `.model_version`.
    """
    global _threads_set
    import torch

    threads = int(os.environ.get("TORCH_NUM_THREADS", "0") or 0)
    if threads > 0 and not _threads_set:
        torch.set_num_threads(threads)
        _threads_set = True
    config = version.config or {}
    if version.kind == "imagenet":
        from ml.inference.embedder import Embedder

        embedder = Embedder(
            backbone=config.get("backbone", settings.EMBEDDER_BACKBONE),
            device=settings.EMBEDDER_DEVICE,
            image_size=int(config.get("image_size", settings.EMBEDDER_IMAGE_SIZE)),
            batch_size=settings.EMBEDDER_BATCH_SIZE,
        )
    elif version.kind == "visnet":
        if not version.artifact_dir or not os.path.isdir(version.artifact_dir):
            raise FileNotFoundError(f"artifact directory {version.artifact_dir!r} is missing")
        from ml.inference.visnet import load_visnet_embedder

        embedder = load_visnet_embedder(version.artifact_dir, device=settings.EMBEDDER_DEVICE)
    else:
        raise ValueError(f"unknown model kind {version.kind!r}")
    if embedder.model_version != version.model_version:
        raise ValueError(f"the embedder reports model_version {embedder.model_version!r}, "
                         f"registered as {version.model_version!r}")
    return embedder


def embedder_for(version):
    """The (cached) embedder of a model version; a few versions stay loaded, least recently used goes."""
    key = _embedder_key(version)
    with _lock:
        if key in _embedders:
            _embedders.move_to_end(key)
            return _embedders[key]
    embedder = build_embedder(version)  # outside the lock: loading takes seconds
    with _lock:
        embedder = _embedders.setdefault(key, embedder)
        _embedders.move_to_end(key)
        while len(_embedders) > MAX_CACHED_EMBEDDERS:
            _embedders.popitem(last=False)
    return embedder


def get_embedder(version=None):
    """The embedder of `version`, by default of the ACTIVE version (what search and ingestion use)."""
    return embedder_for(version if version is not None else active_version())


# The active version --------------------------------------------------------------------------
def _active_key() -> tuple:
    return (str(settings.DATABASES["default"].get("NAME")), settings.MILVUS_URI, settings.MILVUS_COLLECTION_PREFIX,
            settings.MILVUS_ALIAS)


def active_version(fresh: bool = False):
    """The active ModelVersion (read-only snapshot), cached for ACTIVE_VERSION_TTL_SECONDS unless `fresh`.

    On first use, with no version registered, the ImageNet stand-in (or whatever the alias already
    points at) is registered as the active version.
    """
    from webapp.search import versions
    from webapp.search.models import ModelVersion

    key = _active_key()
    now = time.monotonic()
    if not fresh:
        with _lock:
            cached = _active_cache.get(key)
        if cached is not None and now - cached[0] < ACTIVE_VERSION_TTL_SECONDS:
            return cached[1]
    version = (ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).order_by("-activated_at", "-id").first()
               or versions.ensure_default_version())
    if version.pk is not None:  # an unsaved fallback (vector store unreachable) is never cached
        with _lock:
            _active_cache[key] = (now, version)
    return version


def reset_active_version_cache() -> None:
    with _lock:
        _active_cache.clear()


# The vector store ----------------------------------------------------------------------------
@functools.cache
def _store(uri: str, token: str, alias: str, prefix: str, index_type: str, connect_timeout: float) -> MilvusVectorStore:
    return MilvusVectorStore(uri=uri, token=token, alias=alias, prefix=prefix, index_type=index_type,
                             connect_timeout=connect_timeout)


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


class CollectionStore(MilvusVectorStore):
    """The vector store pinned to one collection by name: reads and writes go there, not via the alias.

    It shares the connection of the alias store it was made from.
    """

    def __init__(self, base: MilvusVectorStore, collection: str):
        super().__init__(uri=base.uri, token=base.token, alias=collection, prefix=base.prefix,
                         index_type=base.index_type, connect_timeout=base.connect_timeout)
        self._base = base

    @property
    def client(self):
        return self._base.client

    def active_collection(self) -> str | None:
        """The pinned collection, None while it does not exist (reads then answer empty)."""
        return self.alias if self._call("has_collection", self.alias) else None

    def exists(self) -> bool:
        return bool(self._call("has_collection", self.alias))

    def _read(self, method: str, *args, empty, **kwargs):
        try:
            return self._invoke(method, *args, **kwargs)
        except MilvusException as exc:
            try:
                missing = not self.client.has_collection(self.alias)
            except MilvusException:
                missing = False
            if missing:
                return empty
            raise VectorStoreUnavailable(f"Milvus {method} on {self.alias} failed: {exc}") from exc


def collection_name(model_version: str) -> str:
    return collection_name_for(settings.MILVUS_COLLECTION_PREFIX, model_version)


def collection_store(name: str) -> CollectionStore:
    return CollectionStore(get_vector_store(), name)


def active_store(version=None) -> CollectionStore:
    """The store pinned to the collection of `version` (by default the active version)."""
    version = version if version is not None else active_version()
    return collection_store(collection_name(version.model_version))
