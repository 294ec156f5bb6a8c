"""In-memory stand-ins for the unit tests: a vector store with the adapter's behaviour and a pixel embedder.

They implement the `VectorStore` and `Embedder` protocols, so services and selectors run unchanged
against them, without a Milvus server or a model. The integration tests use the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from webapp.search.vector_store import Hit, SearchFilters, collection_name_for


class FakeVectorStore:
    """Collections of rows keyed by image id, an alias, cosine search with the filters applied inside the query."""

    def __init__(
        self,
        alias: str = "fake_active",
        prefix: str = "fake",
        *,
        _shared: dict | None = None,
        _pinned: str | None = None,
    ):
        self.alias, self.prefix = alias, prefix
        self._state = _shared if _shared is not None else {"collections": {}, "alias": None, "searches": 0}
        self._pinned = _pinned

    # Collections and the alias
    @property
    def target(self) -> str:
        return self._pinned or self.alias

    def _rows(self, name: str | None = None) -> dict[int, dict]:
        name = name or self.target
        if name == self.alias:
            name = self._state["alias"]
        return self._state["collections"].get(name, {})

    def collection_name(self, model_version: str) -> str:
        return collection_name_for(self.prefix, model_version)

    def collection(self, name: str) -> FakeVectorStore:
        return FakeVectorStore(self.alias, self.prefix, _shared=self._state, _pinned=name)

    def create_collection(self, model_version: str, dim: int) -> str:
        name = self.collection_name(model_version)
        self._state["collections"].setdefault(name, {})
        return name

    def has_collection(self, name: str) -> bool:
        return name in self._state["collections"]

    def exists(self) -> bool:
        return self.has_collection(self._pinned) if self._pinned else self._state["alias"] is not None

    def drop_collection(self, name: str) -> None:
        self._state["collections"].pop(name, None)

    def active_collection(self) -> str | None:
        return self._state["alias"]

    def point_alias(self, collection: str) -> None:
        self._state["alias"] = collection

    # Rows
    def upsert(self, rows: list[dict], collection: str | None = None, flush: bool = True) -> None:
        name = collection or self.target
        name = self._state["alias"] if name == self.alias else name
        self._state["collections"].setdefault(name, {}).update({int(r["image_id"]): dict(r) for r in rows})

    def flush(self, collection: str | None = None) -> None:
        pass

    def delete_images(self, image_ids: list[int]) -> None:
        rows = self._rows()
        for image_id in image_ids:
            rows.pop(int(image_id), None)

    def delete_products(self, product_ids: list[int]) -> None:
        rows = self._rows()
        for image_id in [i for i, r in rows.items() if r["product_id"] in set(product_ids)]:
            rows.pop(image_id)

    def rows_for_product(self, product_id: int, with_vectors: bool = True) -> list[dict]:
        return [dict(r) for r in self._rows().values() if r["product_id"] == product_id]

    def vectors_for_images(self, image_ids: list[int]) -> np.ndarray:
        rows = self._rows()
        found = [rows[i]["vector"] for i in image_ids if i in rows]
        return np.asarray(found, dtype=np.float32) if found else np.zeros((0, 0), dtype=np.float32)

    def vectors_by_image(self, image_ids: list[int], batch_size: int = 1000) -> dict[int, np.ndarray]:
        rows = self._rows()
        return {int(i): np.asarray(rows[int(i)]["vector"], dtype=np.float32) for i in image_ids if int(i) in rows}

    def products_of_images(self, image_ids: list[int], batch_size: int = 1000) -> dict[int, int]:
        rows = self._rows()
        return {int(i): int(rows[int(i)]["product_id"]) for i in image_ids if int(i) in rows}

    def iter_rows(self, output_fields: tuple[str, ...] = ("image_id",), batch_size: int = 1000) -> Iterator[dict]:
        for row in list(self._rows().values()):
            yield {field: row[field] for field in output_fields}

    def iter_image_ids(self, batch_size: int = 1000) -> Iterator[int]:
        yield from list(self._rows())

    def count(self, collection: str | None = None) -> int:
        return len(self._rows(collection))

    @staticmethod
    def _passes(row: dict, filters: SearchFilters) -> bool:
        return (
            (filters.category_id is None or row["category_id"] == filters.category_id)
            and (filters.max_price is None or row["price"] <= filters.max_price)
            and (filters.in_stock is None or row["in_stock"] == filters.in_stock)
            and (filters.exclude_product_id is None or row["product_id"] != filters.exclude_product_id)
        )

    def search(self, vectors: np.ndarray, limit: int, filters: SearchFilters = SearchFilters()) -> list[list[Hit]]:
        self._state["searches"] += 1
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        rows = [r for r in self._rows().values() if self._passes(r, filters)]
        if not rows:
            return [[] for _ in vectors]
        matrix = np.asarray([r["vector"] for r in rows], dtype=np.float32)
        scores = vectors @ matrix.T
        results = []
        for row_scores in scores:
            order = np.argsort(-row_scores, kind="stable")[:limit]
            results.append(
                [Hit(int(rows[i]["image_id"]), int(rows[i]["product_id"]), float(row_scores[i])) for i in order]
            )
        return results


class PixelEmbedder:
    """A real, if weak, embedder: the image as 16x16 grey pixels, mean-centred and L2-normalised.

    Small perturbations (noise, slight colour change) keep an image nearest to itself; it knows
    nothing about categories.
    """

    dim = 256

    def __init__(self, model_version: str):
        self.model_version = model_version

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = []
        for image in images:
            pixels = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
            flat = pixels.ravel() - pixels.mean()
            vectors.append(flat / (np.linalg.norm(flat) or 1.0))
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, image: Image.Image) -> np.ndarray:
        return self.embed([image])[0]


class RandomEmbedder(PixelEmbedder):
    """What a broken model looks like: a random unit vector per call, whatever the image."""

    def __init__(self, model_version: str, seed: int = 0):
        super().__init__(model_version)
        self.rng = np.random.default_rng(seed)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        vectors = self.rng.normal(size=(len(images), self.dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
