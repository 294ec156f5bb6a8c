"""Retrieval metrics on hand-made vectors with known answers, and the evaluation command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml.evaluation.metrics import (
    category_metrics,
    exact_item_ranks,
    l2_normalise,
    neighbours,
    recall_at_k,
    recall_from_ranks,
    recall_summary,
)

TINY_VISNET = Path(__file__).resolve().parent / "fixtures" / "tiny-visnet"


def unit(*rows):
    return l2_normalise(np.array(rows, dtype=np.float32))


def test_exact_item_ranks_and_recall():
    gallery = unit([1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0])
    queries = unit([1, 0.1, 0], [0, 1, 0.2], [0.9, 1, 0.1])
    # query 0 -> item 0 is nearest; query 1 -> item 2 is third (after 1 and 3); query 2 -> item 1 is second.
    ranks = exact_item_ranks(queries, gallery, [0, 2, 1])
    assert ranks.tolist() == [0, 2, 1]
    assert recall_at_k(queries, gallery, [0, 2, 1], ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    assert recall_from_ranks(np.array([0, 4, 19, 20]), ks=(1, 5, 20)) == {1: 0.25, 5: 0.5, 20: 0.75}


def test_ties_count_against_the_query():
    gallery = unit([1, 0], [1, 0], [0, 1])
    ranks = exact_item_ranks(unit([1, 0]), gallery, [1])
    assert ranks.tolist() == [1]  # an identical distractor ties: no free Recall@1
    constant = np.ones((5, 2), dtype=np.float32) / np.sqrt(2)
    assert recall_at_k(constant[:2], constant, [0, 1], ks=(1,)) == {1: 0.0}


def test_training_validation_counts_ties_like_the_evaluation_report():
    """One Recall@K, one tie rule: a distractor scoring exactly like the true item ranks above it, in the report's
    exact_item_ranks and in training's validation (which picks the best checkpoint) alike."""
    import torch

    from ml.training import validation

    assert validation.recall_summary is recall_summary
    gallery = unit([1, 0], [1, 0], [0, 1], [0.6, 0.8])
    queries = unit([1, 0], [0, 1], [0.6, 0.8])
    targets = [1, 2, 3]  # query 0's true item (row 1) ties with row 0; queries 1 and 2 match uniquely
    assert exact_item_ranks(queries, gallery, targets).tolist() == [1, 0, 0]
    summary = recall_summary(torch.from_numpy(queries), torch.from_numpy(gallery), targets, ks=(1, 2))
    assert summary == {"recall@1": pytest.approx(2 / 3), "recall@2": 1.0, "median_rank": 1.0, "queries": 3}
    assert recall_at_k(queries, gallery, targets, ks=(1, 2)) == {1: pytest.approx(2 / 3), 2: 1.0}
    constant = np.ones((4, 2), dtype=np.float32) / np.sqrt(2)
    assert recall_summary(constant[:2], constant, [0, 1], ks=(1, 4)) == {
        "recall@1": 0.0,
        "recall@4": 1.0,
        "median_rank": 4.0,
        "queries": 2,
    }


def test_chunked_ranks_match_brute_force():
    rng = np.random.default_rng(0)
    gallery = l2_normalise(rng.normal(size=(700, 16)))
    queries = l2_normalise(gallery[:300] + 0.8 * rng.normal(size=(300, 16)))
    targets = np.arange(300)
    scores = queries @ gallery.T
    expected = (scores >= scores[np.arange(300), targets][:, None]).sum(axis=1) - 1
    assert np.array_equal(exact_item_ranks(queries, gallery, targets, chunk=64), expected)
    values, indices = neighbours(queries, gallery, 5, chunk=64)
    assert np.array_equal(indices, np.argsort(-scores, axis=1)[:, :5])
    assert np.allclose(values, np.sort(scores, axis=1)[:, ::-1][:, :5], atol=1e-5)


def test_neighbours_exclude_self():
    vectors = unit([1, 0], [0.9, 0.1], [0, 1])
    _, indices = neighbours(vectors, vectors, 2, exclude_self=True, chunk=2)
    assert indices.tolist() == [[1, 2], [0, 2], [1, 0]]


def test_category_metrics_known_answers():
    # Two perfect clusters: every neighbour within R is relevant.
    vectors = unit([1, 0], [0.99, 0.05], [0.98, 0.1], [0, 1], [0.05, 0.99], [0.1, 0.98])
    labels = [0, 0, 0, 1, 1, 1]
    metrics = category_metrics(vectors, labels, k=2)
    assert metrics == {"precision@2": 1.0, "map@r": 1.0}


def test_map_at_r_penalises_late_hits():
    # Class 0: A, B, C; class 1: D (R = 0, so D is left out of mAP@R but still counts for precision).
    # A's neighbours: D, B, C -> within R=2 a miss then a hit: AP@R = (1/2) / 2 = 0.25
    # B's neighbours: C, D, A -> hit then miss: AP@R = 1/2; C's neighbours: B, D, A -> 1/2.
    vectors = unit([1, 0], [0.8, 0.6], [0.6, 0.8], [0.95, 0.31])
    metrics = category_metrics(vectors, [0, 0, 0, 1], k=1)
    assert metrics["map@r"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert metrics["precision@1"] == pytest.approx(0.5)  # B and C hit, A and D miss


def test_map_at_r_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=60)
    vectors = l2_normalise(rng.normal(size=(60, 8)) + 1.5 * np.eye(8)[labels])
    scores = vectors @ vectors.T
    aps = []
    for i in range(60):
        order = [j for j in np.argsort(-scores[i], kind="stable") if j != i]
        r = int((labels == labels[i]).sum() - 1)
        hits, total = 0, 0.0
        for position, j in enumerate(order[:r], start=1):
            if labels[j] == labels[i]:
                hits += 1
                total += hits / position
        aps.append(total / r)
    assert category_metrics(vectors, labels)["map@r"] == pytest.approx(np.mean(aps), abs=1e-9)


def evaluate_tiny(tmp: Path, *arguments: str) -> dict:
    """`python -m ml.evaluation.evaluate` on the tiny benchmark built under `tmp`, 64 px, quiet."""
    from ml.evaluation.evaluate import main

    return main(["--size", "tiny", "--root", str(tmp / "tiny-seed0"), "--image-size", "64", "--quiet", *arguments])


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluation")
    return tmp, evaluate_tiny(
        tmp,
        "--visnet",
        str(tmp / "missing-artifacts"),
        "--out",
        str(tmp / "evaluation.md"),
        "--plot",
        str(tmp / "recall.png"),
    )


def test_evaluate_end_to_end_on_tiny(evaluation):
    tmp, result = evaluation
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"pixels", "colour-histogram", "imagenet", "visnet-deep-only", "visnet"}
    for method in ("pixels", "colour-histogram", "imagenet"):
        row = rows[method]
        assert 0.0 <= row["recall"][1] <= row["recall"][5] <= row["recall"][20] <= 1.0
        assert len(row["curve"]) == 50 and row["curve"] == sorted(row["curve"])
        assert 0.0 <= row["category"]["map@r"] <= 1.0
    assert rows["visnet"]["note"].startswith("not trained")
    assert rows["visnet-deep-only"]["note"].startswith("not trained")
    assert rows["imagenet"]["dim"] == 1280
    # Category retrieval of shop images by ImageNet features beats chance (10 balanced classes).
    assert rows["imagenet"]["category"]["precision@10"] > 0.3
    report = (tmp / "evaluation.md").read_text()
    assert "Recall@1 | Recall@5 | Recall@20 | gallery" in report and "not trained" in report
    assert "torch" in report and "cores" in report
    assert (tmp / "recall.png").stat().st_size > 1000
    assert result["study"] and result["study"][0]["variant"].startswith("original 1280-d")
    assert json.loads((tmp / "tiny-seed0" / "results-split.json").read_text())["benchmark"]["size"] == "tiny"


def test_breakdown_by_rendering_condition_partitions_the_queries(evaluation):
    tmp, result = evaluation
    assert result["breakdown_method"] == "ImageNet backbone (Embedder)"  # the best method that ran (no VisNet here)
    overall = {row["method"]: row for row in result["rows"]}["imagenet"]["recall"]
    queries = result["benchmark"]["queries"]
    groups: dict[str, list[dict]] = {}
    for row in result["breakdown"]:
        groups.setdefault(row["group"], []).append(row)
    assert {"colour", "rotation (degrees, absolute)", "occluded fraction", "category"} <= set(groups)
    for rows in groups.values():
        # every query falls in exactly one bin of each group: the bins' weighted recall is the overall recall
        assert sum(r["queries"] for r in rows) == queries
        for k in (1, 20):
            weighted = sum(r[f"recall@{k}"] * r["queries"] for r in rows) / queries
            assert weighted == pytest.approx(overall[k])
    assert "## Where the misses are (ImageNet backbone (Embedder))" in (tmp / "evaluation.md").read_text()


def test_features_are_cached(evaluation):
    tmp, first = evaluation

    second = evaluate_tiny(tmp, "--methods", "pixels", "imagenet", "--no-study", "--out", "")
    rows = {row["method"]: row for row in second["rows"]}
    assert rows["imagenet"]["recall"] == dict(first["rows"][2]["recall"].items())
    assert np.isnan(rows["imagenet"]["ms_per_image"])  # nothing was embedded again
    assert any(p.name.startswith("imagenet__") for p in (tmp / "tiny-seed0" / "features").iterdir())


def test_training_section_describes_the_committed_artifact():
    from ml.evaluation.evaluate import deep_branch_suffix, training_lines, training_summary

    artifact = Path(__file__).resolve().parents[1] / "models" / "visnet-default"
    summary = training_summary(artifact)
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert summary["model_version"] == metrics["model_version"] and summary["pairs_only"] is True
    lines = training_lines(summary)
    assert "trained as (anchor, positive) pairs" in lines[2] and lines[4].startswith("| epoch | pairs |")
    assert len([line for line in lines if line.startswith("| ") and line[2].isdigit()]) == len(metrics["epochs"])
    assert "deep branch trained (its last 7 blocks" in lines[2] and "bfloat16 autocast: True" in lines[2]
    frozen = training_lines(training_summary(artifact.parent / "visnet-deep-only"))
    assert "deep branch frozen (cached features)" in frozen[2]
    assert deep_branch_suffix(artifact) == " (deep branch trained)"  # the table's row titles say which
    assert deep_branch_suffix(artifact.parent / "visnet-deep-only") == " (deep branch frozen)"
    assert deep_branch_suffix(None) == ""
    assert training_summary(artifact.parent / "no-such-artifact") is None


def test_evaluate_scores_the_committed_tiny_visnet_artifact(evaluation):
    """The evaluation command on tests/fixtures/tiny-visnet (made by `python -m ml.training.train_visnet --config
    configs/visnet_tiny.yaml --out tests/fixtures/tiny-visnet`): its VisNet row, its training section."""
    from ml.artifacts import read_artifact

    tmp, _ = evaluation
    result = evaluate_tiny(
        tmp,
        "--methods",
        "visnet",
        "--visnet",
        str(TINY_VISNET),
        "--no-study",
        "--out",
        str(tmp / "visnet.md"),
        "--plot",
        str(tmp / "visnet.png"),
    )
    (row,) = result["rows"]
    artifact = read_artifact(TINY_VISNET)
    assert row["title"] == "VisNet (deep branch frozen)" and "note" not in row
    assert row["dim"] == 64 and row["model_version"] == artifact.model_version
    gallery = result["benchmark"]["gallery"]
    recall = row["recall"]
    assert 0.0 <= recall[1] <= recall[5] <= recall[20] <= 1.0
    assert recall[20] > 20 / gallery  # better than a random ranking of the gallery
    assert 0.2 < row["category"]["precision@10"] <= 1.0  # 10 balanced categories: chance is 0.1
    assert result["training"]["model_version"] == artifact.model_version
    report = (tmp / "visnet.md").read_text()
    assert "| VisNet (deep branch frozen) | 64 |" in report and "## Training (VisNet)" in report
    assert {"cpu", "cores", "memory_gib", "gpu", "torch"} <= set(result["machine"])
