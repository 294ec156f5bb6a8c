"""The category study's modes on vectors whose answers are known by hand."""

import numpy as np

from ml.evaluation.category_modes import SplitVectors, mode_ranks


def unit(*rows):
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def vectors() -> SplitVectors:
    # Gallery: items 0-2 of category 0 near the x axis, items 3-4 of category 1 near the y axis.
    gallery = unit([1, 0.0], [1, 0.1], [1, 0.2], [0.1, 1], [0.0, 1])
    # Query 0 sits between item 2 (its target, category 0) and the category-1 items, nearer category 0 overall.
    # Query 1's target is item 3 (category 1), but its neighbours are mostly category 0.
    queries = unit([1, 0.35], [1, 0.9])
    return SplitVectors(queries, gallery, np.array([2, 3]), np.array([0, 0, 0, 1, 1]))


def test_off_is_the_plain_cosine_rank():
    assert mode_ranks(vectors(), "off").tolist() == [0, 3]


def test_filter_keeps_the_predicted_category_and_loses_items_of_another():
    ranks = mode_ranks(vectors(), "filter", votes=3)
    assert ranks[0] == 0  # predicted category 0: item 2 still first
    assert ranks[1] == 5  # predicted category 0 for a category-1 item: filtered out (rank = gallery size)


def test_a_boost_ranks_the_predicted_category_up_without_removing_the_rest():
    ranks = mode_ranks(vectors(), "boost", votes=3, boost=0.5)
    assert ranks.tolist() == [0, 3]  # item 3 is behind the three boosted category-0 items but still there
