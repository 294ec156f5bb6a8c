"""The product vector store: one Milvus collection per model version behind an alias.

This is the only module that imports pymilvus. Rows are keyed by product image id, so re-ingesting
an image overwrites its vector. Every row carries the product id, category id, price, stock flag and
the model version that made it. Errors leave this module as `VectorStoreError` subclasses.

A store object targets either the alias (what the product reads) or, through `collection(name)`,
one collection by name (a pinned view sharing the same connection). Reads on a pinned collection
that does not exist answer empty; reads on an alias that points nowhere yet answer empty too.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ErrorCode, MilvusException

RELEASED_COLLECTION = re.compile(r"Collection '([^']+)' is in state 'released'")
OUTPUT_FIELDS = ["product_id", "category_id", "price", "in_stock", "model_version"]
MAX_SEARCH_LIMIT = 16384
NOT_LOADED = 101  # Milvus 2.3+: "collection not loaded"
GET_BATCH = 1000  # ids per primary-key get (the request is an `in` expression of them)


class VectorStoreError(RuntimeError):
    """Any failure of the vector store."""


class VectorStoreUnavailable(VectorStoreError):
    """Milvus could not be reached or refused the call; transient, worth a retry."""


class CollectionNotFound(VectorStoreError):
    """The alias or collection does not exist (a fresh install before the first vector)."""


@dataclass(frozen=True)
class SearchFilters:
    category_id: int | None = None
    max_price: float | None = None
    in_stock: bool | None = None
    exclude_product_id: int | None = None

    def expression(self) -> str:
        parts = []
        if self.category_id is not None:
            parts.append(f"category_id == {int(self.category_id)}")
        if self.max_price is not None:
            parts.append(f"price <= {float(self.max_price)}")
        if self.in_stock is not None:
            parts.append(f"in_stock == {'true' if self.in_stock else 'false'}")
        if self.exclude_product_id is not None:
            parts.append(f"product_id != {int(self.exclude_product_id)}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Hit:
    image_id: int
    product_id: int
    score: float


def collection_name_for(prefix: str, model_version: str) -> str:
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', model_version)}"


class VectorStore(Protocol):
    """What the product needs from a vector store (Milvus here; a fake in the unit tests)."""

    alias: str

    def collection_name(self, model_version: str) -> str: ...
    def collection(self, name: str) -> VectorStore: ...
    def create_collection(self, model_version: str, dim: int) -> str: ...
    def has_collection(self, name: str) -> bool: ...
    def exists(self) -> bool: ...
    def drop_collection(self, name: str) -> None: ...
    def active_collection(self) -> str | None: ...
    def point_alias(self, collection: str) -> None: ...
    def upsert(self, rows: list[dict], collection: str | None = None, flush: bool = True) -> None: ...
    def flush(self, collection: str | None = None) -> None: ...
    def delete_images(self, image_ids: list[int]) -> None: ...
    def delete_products(self, product_ids: list[int]) -> None: ...
    def rows_for_product(self, product_id: int, with_vectors: bool = True) -> list[dict]: ...
    def vectors_for_images(self, image_ids: list[int]) -> np.ndarray: ...
    def vectors_by_image(self, image_ids: list[int], batch_size: int = ...) -> dict[int, np.ndarray]: ...
    def products_of_images(self, image_ids: list[int], batch_size: int = ...) -> dict[int, int]: ...
    def iter_rows(self, output_fields: tuple[str, ...] = ..., batch_size: int = 1000) -> Iterator[dict]: ...
    def iter_image_ids(self, batch_size: int = 1000) -> Iterator[int]: ...
    def count(self, collection: str | None = None) -> int: ...
    def search(self, vectors: np.ndarray, limit: int, filters: SearchFilters = ...) -> list[list[Hit]]: ...


class _Connection:
    """One MilvusClient per URI, shared by every view of the store; a failed connect fails fast for a while."""

    def __init__(self, uri: str, token: str, connect_timeout: float):
        self.uri, self.token, self.connect_timeout = uri, token, connect_timeout
        self.reconnect_backoff = min(connect_timeout, 3.0)
        self._retry_connect_after = 0.0
        self._client: MilvusClient | None = None
        self._lite: bool | None = None
        self._lock = threading.Lock()

    def is_lite(self) -> bool:
        """Milvus Lite (flush is cheap and reads are always current) or a Milvus server (version "v2.x")."""
        if self._lite is None:
            self._lite = str(self.client().get_server_version()).startswith("milvus_lite")
        return self._lite

    def client(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                if time.monotonic() < self._retry_connect_after:
                    raise VectorStoreUnavailable(f"Milvus at {self.uri} is unreachable (recent connect failed)")
                try:
                    self._client = MilvusClient(uri=self.uri, token=self.token, timeout=self.connect_timeout)
                except MilvusException as exc:
                    self._retry_connect_after = time.monotonic() + self.reconnect_backoff
                    raise VectorStoreUnavailable(f"Milvus at {self.uri} is unreachable: {exc}") from exc
            return self._client


def _is_missing(exc: MilvusException) -> bool:
    return exc.code == ErrorCode.COLLECTION_NOT_FOUND or "does not exist" in str(exc) or "not found" in str(exc)


class MilvusVectorStore:
    """The store behind `alias` (writes that follow the alias, admin, counts), or a collection pinned by name."""

    def __init__(
        self,
        uri: str,
        token: str = "",
        alias: str = "products_active",
        prefix: str = "products",
        index_type: str = "AUTOINDEX",
        connect_timeout: float = 5.0,
        *,
        index_params: dict | None = None,
        search_params: dict | None = None,
        _connection: _Connection | None = None,
        _pinned: str | None = None,
    ):
        self.uri = uri
        self.token = token
        self.alias = alias
        self.prefix = prefix
        self.index_type = index_type
        self.index_params = dict(index_params) if index_params else None
        self.search_params = dict(search_params) if search_params else None
        self._connection = _connection or _Connection(uri, token, connect_timeout)
        self._pinned = _pinned

    @property
    def connect_timeout(self) -> float:
        return self._connection.connect_timeout

    @connect_timeout.setter
    def connect_timeout(self, seconds: float) -> None:
        self._connection.connect_timeout = seconds
        self._connection.reconnect_backoff = min(seconds, 3.0)

    @property
    def target(self) -> str:
        """The name reads and writes go to: the pinned collection, or the alias."""
        return self._pinned or self.alias

    def collection_name(self, model_version: str) -> str:
        return collection_name_for(self.prefix, model_version)

    def collection(self, name: str) -> MilvusVectorStore:
        """A view of this store pinned to one collection by name (same connection)."""
        return MilvusVectorStore(
            self.uri,
            self.token,
            self.alias,
            self.prefix,
            self.index_type,
            index_params=self.index_params,
            search_params=self.search_params,
            _connection=self._connection,
            _pinned=name,
        )

    # Calls ------------------------------------------------------------------------------------
    def _invoke(self, method: str, *args, **kwargs):
        """Call the client; a collection that is released (Milvus Lite after a restart, a server after a release) is
        loaded and the call retried once."""
        client = self._connection.client()
        try:
            return getattr(client, method)(*args, **kwargs)
        except MilvusException as exc:
            released = RELEASED_COLLECTION.search(str(exc))
            if released is not None:  # Milvus Lite names the collection
                name = released.group(1)
            elif exc.code == NOT_LOADED or "collection not loaded" in str(exc) or "delegator" in str(exc):
                # A server names the collection's id (and for a few seconds after a release its shard-leader cache
                # answers "delegator ... not found"): load what was called; an alias loads its collection.
                name = kwargs.get("collection_name") or args[0]
            else:
                raise
            client.load_collection(name)
            return getattr(client, method)(*args, **kwargs)

    def _call(self, method: str, *args, **kwargs):
        try:
            return self._invoke(method, *args, **kwargs)
        except MilvusException as exc:
            if _is_missing(exc):
                raise CollectionNotFound(f"Milvus {method}: {exc}") from exc
            raise VectorStoreUnavailable(f"Milvus {method} failed: {exc}") from exc

    def _read(self, method: str, *args, empty, **kwargs):
        """A read on the target; before it exists (no vector ingested yet) the answer is empty."""
        try:
            return self._call(method, *args, **kwargs)
        except CollectionNotFound:
            return empty
        except VectorStoreUnavailable:
            if self._pinned is not None and not self.exists():
                return empty
            raise

    # Collections and the alias ---------------------------------------------------------------
    def has_collection(self, name: str) -> bool:
        return bool(self._call("has_collection", name))

    def exists(self) -> bool:
        """Whether the target exists: the pinned collection, or a collection behind the alias."""
        if self._pinned is not None:
            return self.has_collection(self._pinned)
        return self.active_collection() is not None

    def create_collection(self, model_version: str, dim: int) -> str:
        name = self.collection_name(model_version)
        if self.has_collection(name):
            return name
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("image_id", DataType.INT64, is_primary=True)
        schema.add_field("product_id", DataType.INT64)
        schema.add_field("category_id", DataType.INT64)
        schema.add_field("price", DataType.FLOAT)
        schema.add_field("in_stock", DataType.BOOL)
        schema.add_field("model_version", DataType.VARCHAR, max_length=120)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index("vector", index_type=self.index_type, metric_type="COSINE", **self._index_options())
        # Session consistency: a process reads its own writes at once, other processes within one time tick (about
        # 200 ms on Milvus 2.3). Strong would hold every search for that tick (measured: 200 ms a search instead of
        # 3 ms); Bounded, a Milvus server's default, may answer up to 5 s stale. Milvus Lite is consistent anyway.
        self._call("create_collection", name, schema=schema, index_params=index_params, consistency_level="Session")
        return name

    def _index_options(self) -> dict:
        """The index's build parameters: the store's own (settings.MILVUS_INDEX_BUILD_PARAMS), else the index type's
        defaults. A Milvus server refuses HNSW and the IVF indexes without them; AUTOINDEX and FLAT take none."""
        params = self.index_params or {
            "HNSW": {"M": 16, "efConstruction": 64},
            "IVF_FLAT": {"nlist": 1024},
            "IVF_SQ8": {"nlist": 1024},
            "IVF_PQ": {"nlist": 4096, "m": 64, "nbits": 8},
            "GPU_IVF_FLAT": {"nlist": 1024},
            "GPU_IVF_PQ": {"nlist": 4096, "m": 64, "nbits": 8},
            "GPU_CAGRA": {"intermediate_graph_degree": 64, "graph_degree": 32},
        }.get(self.index_type)
        return {"params": dict(params)} if params else {}

    def active_collection(self) -> str | None:
        """The collection the alias points at; None before the first collection is created."""
        try:
            return self._call("describe_alias", self.alias)["collection_name"]
        except CollectionNotFound:
            return None

    def point_alias(self, collection: str) -> None:
        """Make the alias the product reads point at `collection` (atomic swap when it exists)."""
        if self.active_collection() is None:
            self._call("create_alias", collection, self.alias)
        else:
            self._call("alter_alias", collection, self.alias)

    def drop_collection(self, name: str) -> None:
        if name == self.active_collection():
            raise ValueError(f"{name} is the active collection; point the alias elsewhere first")
        self._call("drop_collection", name)

    def drop_alias(self) -> None:
        if self.active_collection() is not None:
            self._call("drop_alias", self.alias)

    def list_collections(self) -> list[str]:
        """The collections of this store's prefix."""
        return [name for name in self._call("list_collections") if name.startswith(self.prefix + "_")]

    def release_collection(self, name: str) -> None:
        """Unload a collection from memory (as a server restart does); the next read loads it again."""
        self._call("release_collection", name)

    # Rows ------------------------------------------------------------------------------------
    def upsert(self, rows: list[dict], collection: str | None = None, flush: bool = True) -> None:
        if not rows:
            return
        target = collection or self.target
        self._call("upsert", target, rows)
        if flush:
            self._settle(target, int(rows[0]["image_id"]))

    def _settle(self, target: str, image_id: int) -> None:
        """Return once every reader sees the write: Milvus Lite flushes (~15 ms); a server answers a Strong read of
        one written row after one time tick (~200 ms), where a flush costs 2.5-3 s and seals a tiny segment."""
        if self._connection.is_lite():
            self._call("flush", target)
        else:
            self._call(
                "query",
                target,
                filter=f"image_id == {int(image_id)}",
                output_fields=["image_id"],
                consistency_level="Strong",
            )

    def flush(self, collection: str | None = None) -> None:
        """Seal what was written so a search sees it (used when freshness is promised)."""
        self._call("flush", collection or self.target)

    def delete_images(self, image_ids: list[int]) -> None:
        if image_ids:
            self._call("delete", self.target, ids=[int(i) for i in image_ids])
            self._deleted(self.target)

    def delete_products(self, product_ids: list[int]) -> None:
        if product_ids:
            self._call("delete", self.target, filter=f"product_id in {[int(p) for p in product_ids]}")
            self._deleted(self.target)

    def _deleted(self, target: str) -> None:
        """Return once every reader misses the deleted rows: nothing to wait for on Milvus Lite; on a server (where a
        delete does not advance the session's timestamp) a Strong read waits one time tick (~200 ms) until every
        query node has applied the delete."""
        if not self._connection.is_lite():
            self._call("query", target, filter="image_id < 0", output_fields=["image_id"], consistency_level="Strong")

    def rows_for_product(self, product_id: int, with_vectors: bool = True) -> list[dict]:
        fields = ["image_id", *OUTPUT_FIELDS] + (["vector"] if with_vectors else [])
        return self._read(
            "query", self.target, filter=f"product_id == {int(product_id)}", output_fields=fields, empty=[]
        )

    def vectors_for_images(self, image_ids: list[int]) -> np.ndarray:
        """Vectors of the given images (those indexed), fetched by primary key.

        A primary-key get stays ~2 ms at 100k rows on Milvus Lite, where a filter on product_id scans
        every row (218 ms measured by make bench).
        """
        if not image_ids:
            return np.zeros((0, 0), dtype=np.float32)
        rows = self._read("get", self.target, ids=[int(i) for i in image_ids], output_fields=["vector"], empty=[])
        return np.asarray([row["vector"] for row in rows], dtype=np.float32)

    def vectors_by_image(self, image_ids: list[int], batch_size: int = GET_BATCH) -> dict[int, np.ndarray]:
        """Each indexed image's vector keyed by image id (images not indexed are left out): one primary-key get per
        `batch_size` ids, so a batch job reads a chunk of products' vectors in one call rather than one per product.
        """
        found: dict[int, np.ndarray] = {}
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), batch_size):
            rows = self._read(
                "get", self.target, ids=ids[start : start + batch_size], output_fields=["vector"], empty=[]
            )
            if not rows:
                continue
            matrix = np.asarray([row["vector"] for row in rows], dtype=np.float32)
            found.update((int(row["image_id"]), vector) for row, vector in zip(rows, matrix, strict=True))
        return found

    def products_of_images(self, image_ids: list[int], batch_size: int = GET_BATCH) -> dict[int, int]:
        """The product id of each indexed image, keyed by image id (a primary-key get; images not indexed are left
        out): what a removal needs to know once the image rows are gone."""
        owners: dict[int, int] = {}
        ids = [int(i) for i in image_ids]
        for start in range(0, len(ids), batch_size):
            rows = self._read(
                "get", self.target, ids=ids[start : start + batch_size], output_fields=["product_id"], empty=[]
            )
            owners.update((int(row["image_id"]), int(row["product_id"])) for row in rows)
        return owners

    def iter_rows(self, output_fields: tuple[str, ...] = ("image_id",), batch_size: int = 1000) -> Iterator[dict]:
        """Every row of the target with the given fields, batch by batch (nothing when it does not exist)."""
        if not self.exists():
            return
        try:
            iterator = self._invoke(
                "query_iterator",
                collection_name=self.target,
                batch_size=batch_size,
                filter="image_id >= 0",
                output_fields=list(output_fields),
            )
        except MilvusException as exc:
            raise VectorStoreUnavailable(f"Milvus query_iterator failed: {exc}") from exc
        try:
            while True:
                try:
                    rows = iterator.next()
                except MilvusException as exc:
                    raise VectorStoreUnavailable(f"Milvus query_iterator failed: {exc}") from exc
                if not rows:
                    return
                yield from rows
        finally:
            iterator.close()

    def iter_image_ids(self, batch_size: int = 1000) -> Iterator[int]:
        for row in self.iter_rows(("image_id",), batch_size):
            yield int(row["image_id"])

    def count(self, collection: str | None = None) -> int:
        result = self._read(
            "query", collection or self.target, filter="", output_fields=["count(*)"], empty=[{"count(*)": 0}]
        )
        return int(result[0]["count(*)"])

    def search(self, vectors: np.ndarray, limit: int, filters: SearchFilters = SearchFilters()) -> list[list[Hit]]:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        limit = min(int(limit), MAX_SEARCH_LIMIT)
        results = self._read(
            "search",
            self.target,
            data=vectors.tolist(),
            limit=limit,
            filter=filters.expression(),
            output_fields=["product_id"],
            search_params={"metric_type": "COSINE", **self._search_options(limit)},
            empty=[[] for _ in vectors],
        )
        return [
            [
                Hit(
                    image_id=int(h["id"] if "id" in h else h["image_id"]),
                    product_id=int(h["entity"]["product_id"]),
                    score=float(h["distance"]),
                )
                for h in hits
            ]
            for hits in results
        ]

    def _search_options(self, limit: int = 0) -> dict:
        """The index's search parameters for a search of `limit` hits: the store's own
        (settings.MILVUS_INDEX_SEARCH_PARAMS), else the index type's defaults. A graph index's candidate list (HNSW
        `ef`, CAGRA `itopk_size`) is raised to the limit: Milvus 2.3 refuses a search with fewer candidates than hits
        ("ef(128) should be larger than k(248)")."""
        params = dict(
            self.search_params
            or {
                "HNSW": {"ef": 32},
                "IVF_FLAT": {"nprobe": 32},
                "IVF_SQ8": {"nprobe": 16},
                "IVF_PQ": {"nprobe": 32},
                "GPU_IVF_FLAT": {"nprobe": 32},
                "GPU_IVF_PQ": {"nprobe": 32},
                "GPU_CAGRA": {"itopk_size": 128},
            }.get(self.index_type, {})
        )
        for candidates in ("ef", "itopk_size"):
            if candidates in params:
                params[candidates] = max(int(params[candidates]), int(limit))
        return {"params": params} if params else {}


def best_per_product(hit_lists: list[list[Hit]], limit: int) -> list[Hit]:
    """Merge hits from several query vectors, keep each product's best score, rank by score."""
    best: dict[int, Hit] = {}
    for hits in hit_lists:
        for hit in hits:
            current = best.get(hit.product_id)
            if current is None or hit.score > current.score:
                best[hit.product_id] = hit
    return sorted(best.values(), key=lambda h: h.score, reverse=True)[:limit]
