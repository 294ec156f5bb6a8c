"""The curation study's mechanics: scorer-proposed street positives, the simulated reviewer, and the three training
arms end to end on the tiny benchmark (one epoch each)."""

import json

import numpy as np
import pytest

from ml.evaluation.curation_study import pair_count, simulate_review
from ml.training.synthetic import SyntheticBenchmark
from ml.triplets import (
    MinedTriplet,
    RefResolver,
    load_triplets,
    mine_street_triplets,
    parse_ref,
    propose_street_positives,
    shop_ref,
    street_ref,
)


@pytest.fixture(scope="module")
def bench():
    return SyntheticBenchmark(n_shop=120, seed=1)


def _setup(bench):
    """Train queries, the train pool, random unit pool features and crop features that point at a chosen
    same-category item: the ground truth for half of the queries, a wrong item for the other half."""
    rng = np.random.default_rng(0)
    queries = [i for i, item in enumerate(bench.items) if item.split == "train"]
    pool = np.flatnonzero(np.asarray(bench.shop_split) == "train")
    features = rng.normal(size=(len(pool), 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.asarray(bench.shop_labels)[pool]
    row_of = {int(s): j for j, s in enumerate(pool)}
    chosen = []
    for n, q in enumerate(queries):
        true_row = row_of[bench.items[q].shop_index]
        wrong = [j for j in np.flatnonzero(labels == labels[true_row]) if j != true_row]
        chosen.append(true_row if n % 2 == 0 or not wrong else wrong[0])
    query_features = features[chosen] + 0.01 * rng.normal(size=(len(queries), 16)).astype(np.float32)
    return queries, pool, features, query_features, np.asarray(chosen)


def test_scorer_positives_come_from_the_scorer_not_the_truth(bench):
    queries, pool, features, query_features, chosen = _setup(bench)
    triplets = mine_street_triplets(
        bench,
        "train",
        features=features,
        pool=pool,
        queries=queries,
        hard_negatives=2,
        hard_k=5,
        out_of_class_negatives=1,
        positive_source="scorer",
        query_features=query_features,
    )
    resolver = RefResolver(bench)
    positive_of = {}
    for t in triplets:
        positive_of.setdefault(t.anchor, set()).add(t.positive)
        negative = resolver.shop_index(t.negative)
        positive = resolver.shop_index(t.positive)
        assert negative != positive
        assert (bench.shop_labels[negative] == bench.shop_labels[positive]) == (t.negative_kind == "in_class")
        assert t.source.startswith("biss-ensemble:proposed-positive:") and t.status == "pending"
    assert set(positive_of) == {street_ref(bench, q) for q in queries}
    expected = {street_ref(bench, q): {shop_ref(bench, pool[c])} for q, c in zip(queries, chosen, strict=True)}
    assert positive_of == expected  # every positive is the scorer's pick, wrong ones included
    wrong = sum(
        resolver.shop_index(next(iter(p))) != bench.items[parse_ref(a)[2]].shop_index for a, p in positive_of.items()
    )
    assert wrong == len(queries) // 2
    # today's mining (the default) still takes the exact shop item
    truth = mine_street_triplets(bench, "train", features=features, pool=pool, queries=queries, hard_negatives=1)
    assert all(resolver.shop_index(t.positive) == bench.items[parse_ref(t.anchor)[2]].shop_index for t in truth)
    with pytest.raises(ValueError, match="positive_source"):
        mine_street_triplets(bench, "train", features=features, pool=pool, positive_source="oracle")


def test_proposals_are_the_nearest_same_category_items_best_first(bench):
    queries, pool, features, query_features, _ = _setup(bench)
    proposals = propose_street_positives(bench, queries, pool, features, query_features, per_query=3)
    labels = np.asarray(bench.shop_labels)[pool]
    assert len(proposals.query_rows) == 3 * len(queries)
    for row in range(len(queries)):
        mine = proposals.query_rows == row
        assert list(proposals.ranks[mine]) == [0, 1, 2]
        cls = bench.shop_labels[bench.items[queries[row]].shop_index]
        members = np.flatnonzero(labels == cls)
        best = members[np.argsort(-(features[members] @ query_features[row]))[:3]]
        assert list(proposals.pool_rows[mine]) == list(best)
        assert np.all(np.diff(proposals.scores[mine]) <= 1e-6)
    with pytest.raises(ValueError, match="query feature rows"):
        propose_street_positives(bench, queries, pool, features, query_features[:-1])


def test_paired_difference_tells_a_real_gap_from_noise():
    from ml.evaluation.curation_study import paired_difference

    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 100, size=400)
    same = paired_difference([ranks], [ranks], 20)
    assert same["diff"] == 0 and not same["real"]
    better = np.where(rng.random(400) < 0.3, 0, ranks)  # 30% of the queries now found first
    gap = paired_difference([better, better], [ranks], 1)
    assert gap["real"] and gap["low"] > 0.2 and gap["diff"] == pytest.approx(np.mean(better < 1) - np.mean(ranks < 1))


def test_simulated_reviewer_approves_exactly_the_true_positives(bench):
    resolver = RefResolver(bench)
    q = next(i for i, item in enumerate(bench.items) if item.split == "train")
    true = shop_ref(bench, bench.items[q].shop_index)
    others = [shop_ref(bench, i) for i in range(len(bench.shop_keys)) if i != bench.items[q].shop_index][:2]
    anchor = street_ref(bench, q)
    rows = [
        MinedTriplet(anchor, true, others[0], "street", "s"),  # approved
        MinedTriplet(anchor, others[0], others[1], "street", "s"),  # wrong positive
        MinedTriplet(anchor, others[0], true, "street", "s"),  # wrong positive, the true item as negative
        MinedTriplet(anchor, true, true, "street", "s"),  # the true item as its own negative
    ]
    reviewed, counts = simulate_review(rows, bench)
    assert [t.status for t in reviewed] == ["approved", "rejected", "rejected", "rejected"]
    assert counts == {"rows": 4, "approved": 1, "rejected": 3}
    assert [t.status for t in rows] == ["pending"] * 4  # the input rows are left as they were
    assert pair_count(rows) == 2 and resolver.shop_index(reviewed[0].positive) == bench.items[q].shop_index
    with pytest.raises(ValueError, match="street triplets"):
        simulate_review([MinedTriplet(true, true, others[0], "catalog", "s")], bench)


def test_study_trains_every_arm_on_the_tiny_benchmark_and_reuses_finished_runs(tmp_path):
    from ml.evaluation.curation_study import WIDE, main

    out = tmp_path / "report.md"
    work = tmp_path / "work"
    argv = ["--size", "tiny", "--epochs", "1", "--wide-review", "3", "--work-dir", str(work), "--out", str(out)]
    argv += ["--external-test", "tiny"]  # scoring the saved models again on the same split reproduces the trainer
    report = main([*argv, "--quiet"])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["review"] == report["review"]
    assert set(saved["results"]) == {"scorer-unreviewed", "scorer-approved", WIDE, "ground-truth"}
    scorer = load_triplets(work / "scorer-mined.jsonl")
    approved = load_triplets(work / "scorer-reviewed.jsonl", approved_only=True)
    wide = load_triplets(work / "scorer-top3-reviewed.jsonl")
    wide_approved = [t for t in wide if t.status == "approved"]
    truth = load_triplets(work / "ground-truth.jsonl")
    assert saved["review"]["approved"] == len(approved) and saved["review"]["rows"] == len(scorer)
    assert 0 < len(approved) < len(scorer)  # the tiny scorer is right sometimes, wrong sometimes
    assert len(wide) == 3 * len(scorer) and len(wide_approved) >= len(approved)  # top-3 holds every top-1 hit
    runs = {arm: saved["results"][arm]["0"] for arm in saved["results"]}
    assert runs["scorer-unreviewed"]["triplets"]["count"] == len(scorer)
    assert runs["scorer-approved"]["triplets"]["count"] == len(approved)
    assert runs["scorer-approved"]["triplets"]["source"].startswith("approved:")
    assert runs[WIDE]["triplets"]["count"] == len(wide_approved)
    assert runs["ground-truth"]["triplets"]["count"] == len(truth)
    precision = saved["arm_positive_precision"]
    assert precision["scorer-approved"] == precision[WIDE] == precision["ground-truth"] == 1.0
    assert precision["scorer-unreviewed"] == pytest.approx(saved["scorer"]["precision"], abs=1e-4)
    assert saved["scorer"]["true_pairs"] == pair_count(approved)
    for run in runs.values():
        assert run["epochs_run"] == 1 and run["test"]["gallery"] == 160 and 0 <= run["test"]["recall@1"] <= 1
        assert run["reused"] is False
        assert run["scored"] == pytest.approx(run["test"], abs=1e-6) and len(run["ranks"]) == 32
        assert run["scored"]["recall@20"] == pytest.approx(np.mean(np.asarray(run["ranks"]) < 20))
    assert saved["scored_split"] == {"size": "tiny", "own": False, "queries": 32, "gallery": 160}
    own_baseline = runs["ground-truth"]["test_deep_only_baseline"]
    assert saved["baseline"]["recall@20"] == pytest.approx(own_baseline["recall@20"], abs=1e-6)
    both = saved["comparisons"]["ground-truth vs scorer-unreviewed"]
    for d in both.values():
        assert d["low"] <= d["diff"] <= d["high"] and d["real"] == (d["low"] > 0 or d["high"] < 0)
    text = out.read_text()
    assert "| gallery |" in text and "--approved-triplets" in text and "(b) scorer-mined, approved only" in text
    assert "top-3 proposals reviewed" in text and "Partial report" not in text
    assert "The same models on the `tiny` benchmark's test split" in text
    assert saved["machine"]["cores"] and "python -m ml.evaluation.curation_study --size tiny" in saved["command"]

    # run again with --reuse: same config, same rows -> every run is read back, none retrained
    again = main([*argv, "--quiet", "--reuse"])
    assert again["runs"]["reused"] == again["runs"]["finished"] == 4
    assert again["results"]["ground-truth"]["0"]["test"] == runs["ground-truth"]["test"]
    # another epoch count is another config: nothing is reused
    from ml.evaluation.curation_study import reusable, study_config

    config = study_config("tiny", 0, epochs=2)
    assert not reusable(work / "ground-truth-seed0", config, truth)
    assert reusable(work / "ground-truth-seed0", study_config("tiny", 0, epochs=1), truth)
    assert not reusable(work / "ground-truth-seed0", study_config("tiny", 0, epochs=1), truth[:-1])
