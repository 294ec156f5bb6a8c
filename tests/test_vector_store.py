"""The vector store against a real Milvus server: Milvus Lite, or a Milvus standalone server (MILVUS_ENGINE)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from webapp.search.vector_store import SearchFilters

ROOT = Path(__file__).resolve().parent.parent


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


# What the product relies on, on both engines (make test runs these on Milvus Lite and on a Milvus standalone server).
def _rows(ids, model_version="semantics", **fields):
    return [
        {
            "image_id": i,
            "product_id": fields.get("product_id", i),
            "category_id": fields.get("category_id", i % 3),
            "price": fields.get("price", float(i)),
            "in_stock": fields.get("in_stock", i % 2 == 0),
            "model_version": model_version,
            "vector": np.eye(8)[i % 8].tolist(),
        }
        for i in ids
    ]


def test_an_upsert_overwrites_the_row_of_the_same_image(vector_store):
    vector_store.point_alias(vector_store.create_collection("overwrite", dim=8))
    vector_store.upsert(_rows(range(1, 5)))
    vector_store.upsert(_rows([2], product_id=7, price=99.0))

    assert vector_store.count() == 4
    assert vector_store.rows_for_product(2, with_vectors=False) == []
    [row] = vector_store.rows_for_product(7, with_vectors=False)
    assert (row["image_id"], row["price"]) == (2, 99.0)


def test_filters_select_inside_the_vector_query(vector_store):
    vector_store.point_alias(vector_store.create_collection("filters", dim=8))
    vector_store.upsert(_rows(range(1, 25)))
    query = np.eye(8)[3]

    def found(filters):
        return {hit.image_id for hit in vector_store.search(query, limit=24, filters=filters)[0]}

    assert found(SearchFilters()) == set(range(1, 25))
    assert found(SearchFilters(category_id=1)) == {i for i in range(1, 25) if i % 3 == 1}
    assert found(SearchFilters(max_price=5.0)) == {1, 2, 3, 4, 5}
    assert found(SearchFilters(in_stock=False)) == {i for i in range(1, 25) if i % 2}
    assert found(SearchFilters(category_id=0, max_price=12.0, in_stock=True, exclude_product_id=6)) == {12}
    best = vector_store.search(query, limit=3)[0]
    assert {hit.image_id for hit in best} == {3, 11, 19} and best[0].score > 0.99


def test_deletes_by_image_and_by_product_are_seen_by_the_next_read(vector_store):
    vector_store.point_alias(vector_store.create_collection("deletes", dim=8))
    vector_store.upsert(_rows(range(1, 7)))
    vector_store.delete_images([1, 2])
    vector_store.delete_products([3])

    assert sorted(vector_store.iter_image_ids()) == [4, 5, 6]
    assert vector_store.count() == 3
    assert {hit.image_id for hit in vector_store.search(np.eye(8)[1], limit=6)[0]} == {4, 5, 6}


def test_every_row_is_iterated_across_batches(vector_store):
    vector_store.point_alias(vector_store.create_collection("iterate", dim=8))
    vector_store.upsert(_rows(range(2500)))

    assert sorted(vector_store.iter_image_ids(batch_size=1000)) == list(range(2500))
    assert vector_store.count() == 2500


def test_the_alias_swap_moves_reads_to_the_new_collection(vector_store):
    old = vector_store.create_collection("swap-old", dim=8)
    new = vector_store.create_collection("swap-new", dim=8)
    vector_store.upsert(_rows([1], model_version="swap-old"), collection=old)
    vector_store.upsert(_rows([1, 2], model_version="swap-new"), collection=new)
    vector_store.point_alias(old)
    assert (vector_store.active_collection(), vector_store.count()) == (old, 1)

    vector_store.point_alias(new)
    assert (vector_store.active_collection(), vector_store.count()) == (new, 2)
    assert {h.image_id for h in vector_store.search(np.eye(8)[2], limit=5)[0]} == {1, 2}
    with pytest.raises(ValueError):
        vector_store.drop_collection(new)
    vector_store.drop_collection(old)
    assert vector_store.list_collections() == [new]


def test_an_upsert_is_seen_by_another_process_as_soon_as_it_returns(vector_store, tmp_path):
    """The promise behind upsert(flush=True): a web process searching right after a worker's upsert finds it."""
    name = vector_store.create_collection("fresh", dim=8)
    vector_store.point_alias(name)
    vector_store.upsert(_rows([1]))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, vector_store.uri, name],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None and reader.stdin is not None
    assert reader.stdout.readline().strip() == "ready [1]"  # connected, and it has read the collection once
    vector_store.upsert(_rows([5, 6]))
    vector_store.delete_images([1])
    answer, _ = reader.communicate("go\n", timeout=60)
    assert answer.split() == ["5", "6"]


READER = """
import sys
from webapp.search.vector_store import MilvusVectorStore
view = MilvusVectorStore(sys.argv[1]).collection(sys.argv[2])
print("ready", sorted(view.iter_image_ids()), flush=True)
sys.stdin.readline()
print(*sorted(hit.image_id for hit in view.search([0, 0, 0, 0, 0, 1, 0, 0], limit=5)[0]))
"""
