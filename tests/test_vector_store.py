"""The vector store against the real Milvus Lite server."""

import numpy as np
import pytest

from webapp.search.vector_store import SearchFilters


def test_a_released_collection_is_loaded_again_on_first_read(vector_store):
    """After a server restart Milvus Lite brings collections back released; reads must not fail."""
    name = vector_store.create_collection("restart-check", dim=4)
    vector_store.point_alias(name)
    rows = [
        {
            "image_id": i,
            "product_id": i,
            "category_id": 1,
            "price": 10.0 * i,
            "in_stock": True,
            "model_version": "restart-check",
            "vector": np.eye(4)[i % 4].tolist(),
        }
        for i in range(1, 5)
    ]
    vector_store.upsert(rows)
    vector_store.release_collection(name)

    hits = vector_store.search(np.eye(4)[1], limit=2, filters=SearchFilters(max_price=25.0))[0]
    assert [hit.product_id for hit in hits][0] == 1
    assert all(hit.product_id in (1, 2) for hit in hits)
    vector_store.release_collection(name)
    assert vector_store.count() == 4
    assert [row["product_id"] for row in vector_store.rows_for_product(3)] == [3]


def test_filters_compose_into_one_expression():
    expression = SearchFilters(category_id=3, max_price=50, in_stock=True, exclude_product_id=9).expression()
    assert expression == "category_id == 3 and price <= 50.0 and in_stock == true and product_id != 9"
    assert SearchFilters().expression() == ""


@pytest.mark.parametrize("flag", [True, False])
def test_stock_filter_renders_booleans(flag):
    assert SearchFilters(in_stock=flag).expression() == f"in_stock == {'true' if flag else 'false'}"


def test_pinned_collection_reads_survive_a_released_collection(vector_store):
    name = vector_store.create_collection("restart-pinned", dim=4)
    vector_store.upsert(
        [
            {
                "image_id": 7,
                "product_id": 7,
                "category_id": 1,
                "price": 1.0,
                "in_stock": True,
                "model_version": "restart-pinned",
                "vector": [0.0, 0.0, 1.0, 0.0],
            }
        ],
        collection=name,
    )
    vector_store.release_collection(name)
    hits = vector_store.collection(name).search(np.array([0.0, 0.0, 1.0, 0.0]), limit=1)[0]
    assert [hit.product_id for hit in hits] == [7]


def test_vectors_are_fetched_by_image_id(vector_store):
    name = vector_store.create_collection("by-id", dim=4)
    vector_store.point_alias(name)
    vector_store.upsert(
        [
            {
                "image_id": i,
                "product_id": 1,
                "category_id": 1,
                "price": 1.0,
                "in_stock": True,
                "model_version": "by-id",
                "vector": np.eye(4)[i].tolist(),
            }
            for i in range(3)
        ]
    )
    vectors = vector_store.vectors_for_images([0, 2, 99])
    assert vectors.shape == (2, 4)
    assert sorted(int(np.argmax(v)) for v in vectors) == [0, 2]
    assert vector_store.vectors_for_images([]).shape[0] == 0
