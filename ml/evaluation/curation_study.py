"""The paper's curation loop, measured: does reviewing scorer-mined street triplets make a better VisNet?

    python -m ml.evaluation.curation_study --size small|full [--seeds 0 1] [--wide-review 10] [--reuse]
        [--epochs N] [--out docs/curation_study.md]

1. Mine street triplets whose POSITIVE is proposed by the BISS scorers (ml.triplets, positive_source="scorer"):
   each train street crop's nearest same-category catalog image in the training pool, by the ensemble the trainer
   mines with (colour histogram, pixels, edges, pretrained deep features). No exact-item ground truth is used;
   negatives are mined as today (the positive's nearest same-category neighbours + a random other-category item).
2. Simulate the review session: a triplet is approved iff its positive is the street item's true shop item and its
   negative is not; every other row is rejected.
3. Train VisNet with one config and seed per arm, through the training command line (ml.training.train_visnet):
   (a) `scorer-unreviewed`: every scorer-mined row (--triplets),
   (b) `scorer-approved`: the approved rows only (--approved-triplets on the reviewed file),
   (b') `scorer-approved-wide` (with --wide-review K): the approved rows of a review that saw the scorer's top K
        proposals per crop instead of one,
   (c) `ground-truth`: positives from the ground truth, today's mining (--triplets).
4. Score every saved model query by query on the test split (SplitScorer: the trainer's own test numbers, or with
   --external-test a larger size's test split) and compare arms with a paired bootstrap over the queries.
5. Write the table (test Recall@1/5/20 with the gallery size, rows and pairs each arm trained on, the scorer's
   precision, the paired differences) to --out (Markdown) and the same numbers, machine and exact commands to its
   .json twin. The report is rewritten after every run, so a long study shows its finished runs early.

Work files (triplet JSONL, configs, one artifact per arm and seed) go to $VAR_DIR/curation-study/<size>/. With
--reuse, a run whose artifact there was trained on the same config and the same rows is read instead of retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ml.machine import describe_machine
from ml.triplets import MinedTriplet, RefResolver, load_triplets, parse_ref, save_triplets, street_ref, triplets_hash

REPO = Path(__file__).resolve().parents[2]
WIDE = "scorer-approved-wide"
ARMS = ("scorer-unreviewed", "scorer-approved", WIDE, "ground-truth")  # table order
RUN_ORDER = ("ground-truth", "scorer-approved", WIDE, "scorer-unreviewed")  # the reference first: is it learnable?
# per arm: which triplet file it trains on, and whether only its approved rows (--approved-triplets)
ARM_FILES = {
    "scorer-unreviewed": ("scorer", False),
    "scorer-approved": ("reviewed", True),
    WIDE: ("reviewed-wide", True),
    "ground-truth": ("truth", False),
}
KS = (1, 5, 20)


def arm_title(arm: str, wide_k: int | None = None) -> str:
    return {
        "scorer-unreviewed": "(a) scorer-mined, unreviewed",
        "scorer-approved": "(b) scorer-mined, approved only",
        WIDE: f"(b') top-{wide_k or 'K'} proposals reviewed, approved only",
        "ground-truth": "(c) ground-truth positives (today's mining)",
    }[arm]


@dataclass(frozen=True)
class StudySize:
    """A benchmark size and the training config every arm of the study shares."""

    base_config: str  # relative to the repository
    overrides: dict
    note: str


# Every arm trains street pairs only (mix.catalog 0): the study is about street-to-shop positives. No re-mining, so
# an arm trains exactly the rows it was given.
_COMMON = {"train": {"mix": {"street": 1.0, "catalog": 0.0}}, "mining": {"remine": False}}
SIZES = {
    "tiny": StudySize(
        "configs/visnet_tiny.yaml",
        {
            "data": {"source": "street2shop", "size": "tiny"},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {"epochs": 2, "curriculum_epochs": 0},
        },
        "the unit-test benchmark; proves the mechanics only",
    ),
    # the shipped CPU recipe (frozen deep branch, cached features, shallow branches trained), shortened to fit a
    # shared 2-core machine: 20 epochs of one-category batches, one torch thread
    "small": StudySize(
        "configs/visnet.yaml",
        {"data": {"size": "small"}, "train": {"epochs": 20, "threads": 1}},
        "1,000 train street items; 200 test queries against a 1,000-item test gallery",
    ),
    "full": StudySize(
        "configs/visnet.yaml",
        {
            "data": {"size": "full", "max_train_queries": 2000, "max_val_queries": 500},
            "train": {"epochs": 20, "batch_size": 288},
        },
        "2,000 of the 80,000 train street items; all 3,000 test queries against the 10,000-item test gallery",
    ),
}


def study_overrides(
    size: str, seed: int | None = None, epochs: int | None = None, cache_dir: str | None = None
) -> dict:
    from ml.training.config import merge

    overrides = merge(_COMMON, SIZES[size].overrides)
    if seed is not None:
        overrides = merge(overrides, {"train": {"seed": int(seed)}})
    if epochs:
        overrides = merge(overrides, {"train": {"epochs": int(epochs)}})
    if cache_dir:
        overrides = merge(overrides, {"data": {"cache_dir": cache_dir}})
    return overrides


def study_config(
    size: str, seed: int, epochs: int | None = None, cache_dir: str | None = None, base_config: str | None = None
) -> dict:
    """The resolved training config of every arm (ml.training.config.load_config) for one seed."""
    from ml.training.config import load_config

    base = REPO / (base_config or SIZES[size].base_config)
    return load_config(base, study_overrides(size, seed, epochs, cache_dir))


# -- mining and review ------------------------------------------------------------------------------------------


@dataclass
class MinedSets:
    scorer: list[MinedTriplet]
    truth: list[MinedTriplet]
    proposals: dict  # the scorer's precision over its proposed (crop, positive) pairs
    wide: list[MinedTriplet] | None = None  # with top-K proposals per crop (--wide-review)
    wide_proposals: dict | None = None
    timings: dict = field(default_factory=dict)


def _mining_cache(cfg: Any, bench: Any, resolver: RefResolver, progress: bool):
    """A DeepFeatureCache built the way the trainer builds its own (same model config, device, bfloat16)."""
    import torch

    from ml.devices import cpu_bf16_supported, resolve_device
    from ml.feature_cache import DeepFeatureCache
    from ml.models.visnet import VisNet

    device = resolve_device(cfg.train.device)
    cpu_bf16 = device.type != "cuda" and cfg.train.cpu_bf16 in ("auto", True) and cpu_bf16_supported()
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    cache_dir = cfg.data.cache_dir or (Path(os.environ.get("VAR_DIR") or REPO / "var") / "visnet-cache")
    model = VisNet(cfg.model).to(device)
    return DeepFeatureCache(
        model, bench, resolver, cache_dir, device, progress=progress, cpu_bf16=cpu_bf16, workers=cfg.data.loader_workers
    )


def crop_biss_features(bench: Any, queries: Sequence[int] | np.ndarray, cache: Any, weights: dict) -> np.ndarray:
    """The BISS ensemble rows of street crops, weighted as ml.training.mining.biss_pool_features weights the shop
    images (the cached deep features as "cnn"), so crop-to-shop cosines are ensemble similarities."""
    from ml.biss import ColourHistogramScorer, EdgeOrientationScorer, EnsembleScorer, PixelScorer

    refs = [street_ref(bench, q) for q in queries]
    crops = cache.load_images(refs)
    sets, ws = [], []
    for scorer in (ColourHistogramScorer(), PixelScorer(), EdgeOrientationScorer()):
        w = float(weights.get(scorer.name, 0))
        if w > 0:
            sets.append(scorer.features(crops))
            ws.append(w)
    w = float(weights.get("cnn", 0))
    if w > 0:
        deep, _ = cache.tensors()
        sets.append(deep[cache.index(refs)].numpy())
        ws.append(w)
    return EnsembleScorer.combine(sets, ws).astype(np.float32)


def proposal_stats(
    bench: Any, queries: np.ndarray, pool: np.ndarray, features: np.ndarray, query_features: np.ndarray, k: int
) -> dict:
    """How often the scorer's top-k same-category proposals are the crop's true item."""
    from ml.triplets import propose_street_positives

    proposed = propose_street_positives(bench, queries, pool, features, query_features, k)
    true_item = np.array([bench.items[int(q)].shop_index for q in queries], dtype=np.int64)
    hit = pool[proposed.pool_rows] == true_item[proposed.query_rows]
    queries_hit = np.zeros(len(queries), dtype=bool)
    queries_hit[proposed.query_rows[hit]] = True
    first = proposed.ranks == 0
    return {
        "proposals_per_query": int(k),
        "proposed_pairs": int(len(hit)),
        "true_pairs": int(hit.sum()),
        "precision": round(float(hit.mean()) if len(hit) else 0.0, 4),
        "precision_at_1": round(float(hit[first].mean()) if first.any() else 0.0, 4),
        "queries_with_true_proposal": int(queries_hit.sum()),
    }


def mine_study_triplets(
    bench: Any, config: dict, proposals_per_query: int = 1, wide_k: int | None = None, progress: bool = True
) -> MinedSets:
    """Scorer-proposed and ground-truth street triplets over the trainer's train pool (ml.training.mining)."""
    from ml.training.config import TrainingConfig
    from ml.training.mining import biss_pool_features, pool_refs, train_pool
    from ml.triplets import mine_street_triplets

    cfg = TrainingConfig.from_dict(config)
    started = time.monotonic()
    resolver = RefResolver(bench, context=float(cfg.data.context))
    cache = _mining_cache(cfg, bench, resolver, progress)
    train_q, pool = train_pool(bench, cfg.data)
    cache.ensure(pool_refs(bench, train_q, pool), "curation-study")
    cached = time.monotonic()
    weights = cfg.mining.weights
    pool_features = biss_pool_features(bench, pool, cache, weights)
    query_features = crop_biss_features(bench, train_q, cache, weights)
    mining = {
        "hard_negatives": int(cfg.mining.street_hard_negatives),
        "hard_k": int(cfg.mining.street_hard_k),
        "out_of_class_negatives": int(cfg.mining.street_out_of_class),
        "seed": 4,  # the trainer's street mining seed
    }
    common: dict[str, Any] = {"features": pool_features, "pool": pool, "queries": train_q, **mining}

    def scorer_mined(k: int) -> list[MinedTriplet]:
        return mine_street_triplets(
            bench, "train", positive_source="scorer", query_features=query_features, positives_per_query=k, **common
        )

    labels = np.asarray(bench.shop_labels)[pool]
    true_item = np.array([bench.items[int(q)].shop_index for q in train_q], dtype=np.int64)
    stats = {
        "queries": int(len(train_q)),
        "pool": int(len(pool)),
        "candidates_per_query_mean": round(
            float(np.mean([np.sum(labels == bench.shop_labels[t]) for t in true_item])), 1
        ),
        **proposal_stats(bench, train_q, pool, pool_features, query_features, proposals_per_query),
        "weights": dict(weights),
        "mining": mining,
    }
    mined = MinedSets(scorer_mined(proposals_per_query), mine_street_triplets(bench, "train", **common), stats)
    if wide_k:
        mined.wide = scorer_mined(wide_k)
        mined.wide_proposals = proposal_stats(bench, train_q, pool, pool_features, query_features, wide_k)
    mined.timings = {"cache_s": round(cached - started, 1), "mining_s": round(time.monotonic() - cached, 1)}
    return mined


def simulate_review(triplets: Sequence[MinedTriplet], bench: Any) -> tuple[list[MinedTriplet], dict]:
    """The simulated reviewer: approve a street triplet iff its positive is the anchor's true shop item and its
    negative is not; reject every other row. Returns reviewed copies and the counts."""
    resolver = RefResolver(bench)
    reviewed, approved = [], 0
    for t in triplets:
        kind, _, item_index = parse_ref(t.anchor)
        if kind != "street":
            raise ValueError(f"the simulated reviewer judges street triplets, not {t.anchor}")
        truth = int(bench.items[int(item_index)].shop_index)
        ok = resolver.shop_index(t.positive) == truth and resolver.shop_index(t.negative) != truth
        approved += ok
        reviewed.append(MinedTriplet.from_dict({**t.__dict__, "status": "approved" if ok else "rejected"}))
    return reviewed, {"rows": len(reviewed), "approved": approved, "rejected": len(reviewed) - approved}


def pair_count(triplets: Sequence[MinedTriplet]) -> int:
    """Distinct (anchor, positive) pairs: what a pairs-only run (train.mined_negatives false) trains on."""
    return len({(t.anchor, t.positive) for t in triplets})


# -- the arms -----------------------------------------------------------------------------------------------------


def arm_rows(arm: str, files: dict[str, Path]) -> list[MinedTriplet]:
    """The rows an arm trains on."""
    name, approved_only = ARM_FILES[arm]
    return load_triplets(files[name], approved_only=approved_only)


def arm_command(arm: str, config_path: Path, files: dict[str, Path], out: Path, quiet: bool = True) -> list[str]:
    """The training command line of one arm (argv after `python -m ml.training.train_visnet`)."""
    if arm not in ARM_FILES:
        raise ValueError(f"unknown arm {arm!r}")
    name, approved_only = ARM_FILES[arm]
    argv = ["--config", str(config_path), "--out", str(out)] + (["--quiet"] if quiet else [])
    return argv + ["--approved-triplets" if approved_only else "--triplets", str(files[name])]


def _comparable(config: dict) -> dict:
    """A resolved config without what a run records about itself (device used, resolved blocks, ...)."""
    from ml.training.config import RUN_FACTS, TrainingConfig

    known = {k: v for k, v in config.items() if k not in RUN_FACTS[""]}
    typed = TrainingConfig.from_dict(known).to_dict()
    typed["train"] = {k: v for k, v in typed["train"].items() if k not in RUN_FACTS["train"] | {"train_last_blocks"}}
    return typed


def reusable(out: Path, config: dict, rows: Sequence[MinedTriplet]) -> bool:
    """The artifact in `out` was trained on this config and exactly these rows."""
    try:
        saved = json.loads((out / "config.json").read_text())
        if not (out / "metrics.json").exists():
            return False
        return saved.get("triplets", {}).get("hash") == triplets_hash(rows) and _comparable(saved) == _comparable(
            config
        )
    except (OSError, ValueError, TypeError, KeyError):
        return False


def read_arm(out: Path) -> dict:
    """An arm's numbers from its artifact (ml.artifacts layout: metrics.json, config.json)."""
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    final = metrics["final"]
    return {
        "model_version": config["model_version"],
        "triplets": config["triplets"],
        "pairs_seen": int(sum(row["triplets"] for row in metrics["epochs"])),
        "epochs_run": len(metrics["epochs"]),
        "best_epoch": next((row["epoch"] for row in reversed(metrics["epochs"]) if row.get("best")), None),
        "test": final.get("test"),
        "val": final["val"],
        "test_deep_only_baseline": final.get("test_deep_only_baseline"),
        "timings": metrics["timings"],
    }


def run_arm(argv: list[str], out: Path) -> dict:
    """Train through ml.training.train_visnet's command line, in this process; the artifact's numbers."""
    from ml.training import train_visnet

    started = time.monotonic()
    train_visnet.main(argv)
    return {**read_arm(out), "wall_s": round(time.monotonic() - started, 1), "reused": False}


class SplitScorer:
    """Scores saved models on a benchmark's test split exactly as the trainer scores its own (a SplitEval over a
    DeepFeatureCache: the frozen deep branch's cached features + each model's head), keeping every query's rank so
    arms can be compared query by query. On the training benchmark it reproduces the trainer's test numbers; on a
    larger size (--external-test full: 3,000 street queries against all 10,000 Fashion-MNIST test items) it gives
    the same models more queries. Sound because every size draws its test items from Fashion-MNIST's test split
    and composes test photos on the test backgrounds, while training sees only train items and train backgrounds."""

    def __init__(self, size: str, config: dict, bench: Any = None, progress: bool = True) -> None:
        self.size, self.config, self.progress = size, config, progress
        self._bench = bench
        self._ready: tuple[Any, Any] | None = None

    def _set_up(self) -> tuple[Any, Any]:
        if self._ready is None:
            from ml.training.config import TrainingConfig
            from ml.training.data import load_bench, query_indices, subsample
            from ml.training.validation import SplitEval

            cfg = TrainingConfig.from_dict(merge_data(self.config, {"size": self.size}))
            bench = self._bench if self._bench is not None else load_bench(cfg.data, self.progress)
            cache = _mining_cache(cfg, bench, RefResolver(bench, context=float(cfg.data.context)), self.progress)
            own = self.size == self.config["data"]["size"]
            # the trainer's own test queries (ml.training.loop.final_metrics) or, elsewhere, all of them
            queries = subsample(query_indices(bench, "test"), cfg.data.max_test_queries if own else None, 6)
            split = SplitEval(bench, "test", queries)
            cache.ensure(split.gallery_refs + split.query_refs, "test")
            self._ready = (cache, split)
        return self._ready

    def _summary(self, ranks: np.ndarray) -> dict:
        _, split = self._set_up()
        out: dict = {f"recall@{k}": float((ranks < k).mean()) for k in KS}
        out["median_rank"] = float(np.sort(ranks)[(len(ranks) - 1) // 2] + 1) if len(ranks) else 0.0
        return {**out, "queries": int(len(ranks)), "gallery": int(len(split.gallery))}

    def score(self, artifact_dir: Path) -> tuple[dict, np.ndarray]:
        """(Recall@K, median rank, queries, gallery; each query's 0-based rank) of the artifact's model."""
        from ml.artifacts import load_weights, read_artifact
        from ml.evaluation.metrics import exact_item_ranks
        from ml.models.visnet import VisNet
        from ml.training.validation import embed_refs

        cache, split = self._set_up()
        artifact = read_artifact(artifact_dir)
        model = VisNet(artifact.model_config).to(cache.device)
        model.load_trainable_state_dict(load_weights(artifact))
        if not model.deep_frozen:
            raise ValueError(f"{artifact_dir}: only frozen-deep-branch models are scored from the feature cache")
        gallery = embed_refs(model, cache, split.gallery_refs, cache.device)
        queries = embed_refs(model, cache, split.query_refs, cache.device)
        ranks = exact_item_ranks(queries, gallery, split.gt)
        return self._summary(ranks), ranks

    def baseline(self) -> tuple[dict, np.ndarray]:
        """The same for the pretrained deep features alone (no training)."""
        import torch.nn.functional as F

        from ml.evaluation.metrics import exact_item_ranks

        cache, split = self._set_up()
        deep, _ = cache.tensors()
        gallery = F.normalize(deep[cache.index(split.gallery_refs)], dim=1)
        queries = F.normalize(deep[cache.index(split.query_refs)], dim=1)
        ranks = exact_item_ranks(queries, gallery, split.gt)
        return self._summary(ranks), ranks


def merge_data(config: dict, data: dict) -> dict:
    from ml.training.config import merge

    return merge(config, {"data": data})


def paired_difference(
    ranks_a: Sequence[Sequence[int]], ranks_b: Sequence[Sequence[int]], k: int, resamples: int = 4000
) -> dict:
    """Recall@k of arm a minus arm b on the same queries, each arm's hits averaged over its seeds, with a paired
    bootstrap 95% interval over the queries (seed 0, so a report is reproducible)."""
    hits_a = np.mean([np.asarray(r) < k for r in ranks_a], axis=0)
    hits_b = np.mean([np.asarray(r) < k for r in ranks_b], axis=0)
    diff = hits_a - hits_b
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "low": float(low), "high": float(high), "real": bool(low > 0 or high < 0)}


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _relative_arg(arg: str) -> str:
    return _relative(Path(arg)) if "/" in arg else arg


# -- report -------------------------------------------------------------------------------------------------------

COMPARISONS = (
    ("scorer-approved", "scorer-unreviewed"),
    ("ground-truth", "scorer-approved"),
    ("ground-truth", "scorer-unreviewed"),
    (WIDE, "scorer-approved"),
    ("ground-truth", WIDE),
    ("scorer-unreviewed", "baseline"),
    ("scorer-approved", "baseline"),
    (WIDE, "baseline"),
    ("ground-truth", "baseline"),
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _title(arm: str, wide_k: int | None) -> str:
    return "pretrained deep features, no training" if arm == "baseline" else arm_title(arm, wide_k)


def _short(arm: str) -> str:
    return "no training" if arm == "baseline" else arm_title(arm).split(" ", 1)[0]


def summarise(results: dict[str, dict], key: str = "scored") -> dict[str, dict]:
    """Per arm: the mean Recall@K and median rank over seeds on `key` ("test": the trainer's own numbers,
    "scored": SplitScorer's)."""
    out = {}
    for arm, by_seed in results.items():
        tests = [r[key] for r in by_seed.values() if r.get(key)]
        if tests:
            out[arm] = {f"recall@{k}": float(np.mean([t[f"recall@{k}"] for t in tests])) for k in KS}
            out[arm]["median_rank"] = float(np.mean([t["median_rank"] for t in tests]))
            out[arm]["queries"] = tests[0]["queries"]
            out[arm]["seeds"] = len(tests)
    return out


def comparisons(results: dict[str, dict], baseline_ranks: Sequence[int] | np.ndarray | None) -> dict[str, dict]:
    """Paired differences of Recall@1 and @20 between arms (COMPARISONS), on the scored split's queries."""
    ranks = {arm: [r["ranks"] for r in by_seed.values() if r.get("ranks")] for arm, by_seed in results.items()}
    if baseline_ranks is not None:
        ranks["baseline"] = [list(baseline_ranks)]
    out = {}
    for a, b in COMPARISONS:
        if ranks.get(a) and ranks.get(b):
            out[f"{a} vs {b}"] = {f"recall@{k}": paired_difference(ranks[a], ranks[b], k) for k in (1, 20)}
    return out


def _difference_text(d: dict) -> str:
    word = ("better" if d["diff"] > 0 else "worse") if d["real"] else "within noise"
    return f"{100 * d['diff']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] ({word})"


def interpretation(report: dict) -> list[str]:
    """Plain sentences read off the numbers (so a re-run never leaves a stale reading behind)."""
    results, diffs, wide_k = report["results"], report["comparisons"], report.get("wide_review")
    pairs = {arm: next(iter(by_seed.values()))["triplets"]["street"] for arm, by_seed in results.items() if by_seed}
    out = []
    if {"scorer-unreviewed", "scorer-approved", "ground-truth"} <= set(pairs):
        precision = report["arm_positive_precision"]["scorer-unreviewed"]
        out.append(
            f"* Review kept {pairs['scorer-approved']:,} of the scorer's {pairs['scorer-unreviewed']:,} pairs "
            f"({100 * pairs['scorer-approved'] / max(pairs['scorer-unreviewed'], 1):.0f}%; the ground truth has "
            f"{pairs['ground-truth']:,}) and raised the share of true positives from {100 * precision:.1f}% to 100%."
        )
    for k in (1, 20):
        real = [
            f"{_short(a)} {'above' if d['diff'] > 0 else 'below'} {_short(b)} by {100 * abs(d['diff']):.1f}"
            for name, both in diffs.items()
            for a, b in [name.split(" vs ")]
            for d in [both[f"recall@{k}"]]
            if d["real"]
        ]
        out.append(
            f"* Recall@{k}: "
            + ("differences beyond noise: " + "; ".join(real) + " points." if real else "no difference beyond noise.")
        )
    gap = diffs.get("ground-truth vs scorer-unreviewed", {}).get("recall@20")
    ba = diffs.get("scorer-approved vs scorer-unreviewed", {}).get("recall@20")
    if gap and ba and gap["real"] and gap["diff"] > 0:

        def share(diff: float) -> str:
            return f"{100 * diff / gap['diff']:.0f}%" if diff > 0 else f"none of it ({100 * diff / gap['diff']:.0f}%)"

        recovered = f"training on the approved top-1 rows recovers {share(ba['diff'])}"
        wide_vs_b = diffs.get(f"{WIDE} vs scorer-approved", {}).get("recall@20")
        if wide_vs_b:
            recovered += f", on the approved top-{wide_k} rows {share(ba['diff'] + wide_vs_b['diff'])}"
        out.append(
            f"* Of the Recall@20 that unreviewed scorer triplets lose against ground-truth positives "
            f"({100 * gap['diff']:.1f} points), {recovered}."
        )
    if wide_k and report.get("wide_scorer") and WIDE in pairs:
        out.append(
            f"* Reviewing the top {wide_k} proposals per crop instead of one keeps {pairs[WIDE]:,} true pairs "
            f"(vs {pairs['scorer-approved']:,}) for {report['wide_scorer']['proposed_pairs']:,} judgements instead of "
            f"{report['scorer']['proposed_pairs']:,}."
        )
    main = [arm for arm in ARMS if len(results.get(arm, {})) > 1]
    if main:
        spread = {
            arm: 100
            * (
                max(r["scored"]["recall@20"] for r in results[arm].values())
                - min(r["scored"]["recall@20"] for r in results[arm].values())
            )
            for arm in main
        }
        out.append(
            "* Seed-to-seed spread of Recall@20 (max - min): "
            + ", ".join(f"{_short(arm)} {spread[arm]:.1f}" for arm in main)
            + " points."
        )
    return out


def write_report(report: dict, out_md: Path) -> None:
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    out_md.write_text(render_markdown(report))


def _rank(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def render_markdown(report: dict) -> str:
    m, s, review = report["machine"], report["scorer"], report["review"]
    bench, wide_k, runs = report["benchmark"], report.get("wide_review"), report["runs"]
    scored, results = report["scored_split"], report["results"]
    lines = [
        "# The curation loop, measured",
        "",
        "Generated by `ml/evaluation/curation_study.py`. In the VisNet paper, simple image similarity scorers proposed",
        "candidate triplets and people checked them. This study simulates that loop on the street-to-shop proxy",
        "benchmark ([street2shop.md](street2shop.md)) and measures what the review changes.",
        "",
        "```",
        report["command"],
        "```",
        "",
        *(
            [
                f"(Without --reuse the same command trains every run from scratch: {runs['train_wall_s'] / 60:.0f} min"
                " of training on this machine; the runs read back here were trained by it with the same config and"
                " rows.)",
                "",
            ]
            if runs["reused"]
            else []
        ),
        f"* Benchmark: size `{bench['size']}`, seed {bench['seed']}, data hash `{bench['data_hash'][:16]}`; "
        f"{SIZES[bench['size']].note}.",
        f"* Machine: {m['cpu']}, {m['cores']} cores (shared with other work; the study ran at nice {m['niceness']}), "
        f"GPU: {m['gpu']}; torch {m['torch']}, Python {m['python']}. Wall time of this invocation "
        f"{report['wall_s'] / 60:.1f} min; the {runs['finished']} training runs took {runs['train_wall_s'] / 60:.1f} "
        f"min together ({runs['reused']} read back from an earlier invocation with --reuse); mining "
        f"{report['mining_timings']['mining_s']} s after its feature cache ({report['mining_timings']['cache_s']} s).",
        *(
            [f"* **Partial report**: {runs['finished']} of {runs['planned']} training runs finished."]
            if runs["finished"] < runs["planned"]
            else []
        ),
        f"* Training config (every arm, every seed the same; only the triplet file differs): `{report['base_config']}` "
        f"with {json.dumps(report['overrides'], sort_keys=True)}; the resolved file is in the JSON twin "
        "(`config`).",
        "",
        "## The simulated review",
        "",
        f"* Mining: for each of the {s['queries']:,} train street crops, the BISS ensemble ("
        + ", ".join(f"{k} {v}" for k, v in s["weights"].items())
        + f") proposes its {s['proposals_per_query']} nearest catalog image(s) of the crop's category among the "
        f"{s['pool']:,} train-pool items (~{s['candidates_per_query_mean']:.0f} candidates per crop) as the positive; "
        f"negatives as today ({s['mining']['hard_negatives']} of the positive's {s['mining']['hard_k']} nearest "
        f"same-category items + {s['mining']['out_of_class_negatives']} random other-category item).",
        f"* Scorer precision: {s['true_pairs']:,} of {s['proposed_pairs']:,} proposed (crop, positive) pairs are the "
        f"true item: **{_pct(s['precision'])}%**; {s['queries_with_true_proposal']:,} crops have a true proposal.",
        f"* Review (approve iff the positive is the true item and the negative is not): {review['approved']:,} of "
        f"{review['rows']:,} triplets approved, {review['rejected']:,} rejected.",
    ]
    if wide_k and report.get("wide_scorer"):
        w, wr = report["wide_scorer"], report["wide_review_counts"]
        lines.append(
            f"* Wider review (b'): the top {wide_k} proposals per crop: {w['true_pairs']:,} of {w['proposed_pairs']:,} "
            f"proposed pairs true ({_pct(w['precision'])}%), {w['queries_with_true_proposal']:,} crops with a true "
            f"proposal; {wr['approved']:,} of {wr['rows']:,} triplets approved."
        )
    lines += [
        "",
        "## Results (test split)",
        "",
        "Recall@K: the street crop's exact shop item among the K nearest gallery images; median rank of that item"
        " (1 = first). Pairs: distinct (street crop, positive) pairs in the arm's triplets (the recipe trains pairs,"
        " the other positives of a one-category batch being the negatives); pairs seen: over all epochs; true"
        " positives: share of the arm's pairs whose positive is the true item; best epoch: the checkpoint kept"
        " (validation Recall@20 + 0.1 Recall@1).",
        "",
        "| arm | seed | triplets | pairs | true positives | pairs seen | best epoch | Recall@1 | Recall@5 | Recall@20 "
        "| median rank | gallery | queries | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    precision = report["arm_positive_precision"]
    for arm in ARMS:
        for seed, r in sorted(results.get(arm, {}).items(), key=lambda kv: int(kv[0])):
            t = r["test"] or {}
            lines.append(
                f"| {arm_title(arm, wide_k)} | {seed} | {r['triplets']['count']:,} | {r['triplets']['street']:,} | "
                f"{_pct(precision.get(arm))}% | {r['pairs_seen']:,} | {r['best_epoch']} | "
                f"{_pct(t.get('recall@1'))} | {_pct(t.get('recall@5'))} | {_pct(t.get('recall@20'))} | "
                f"{_rank(t.get('median_rank'))} | {t.get('gallery', 0):,} | {t.get('queries', 0):,} | "
                f"{r['timings'].get('train_s', '-')} |"
            )
    runs_all = [r for by_seed in results.values() for r in by_seed.values()]
    own_base = next((r["test_deep_only_baseline"] for r in runs_all if r.get("test_deep_only_baseline")), None)
    if own_base:
        lines.append(
            f"| pretrained deep features, no training | - | - | - | - | - | - | {_pct(own_base['recall@1'])} | "
            f"{_pct(own_base['recall@5'])} | {_pct(own_base['recall@20'])} | {_rank(own_base.get('median_rank'))} "
            "| - | - | - |"
        )
    summary = report["summary"]
    where = "the training benchmark's test split" if scored["own"] else f"the `{scored['size']}` test split"
    if not scored["own"]:
        lines += [
            "",
            f"### The same models on the `{scored['size']}` benchmark's test split",
            "",
            f"Each arm's saved model scored again, as the trainer scores a split, on {scored['queries']:,} street "
            f"queries against a {scored['gallery']:,}-item gallery (Fashion-MNIST test items and test backgrounds"
            " only, like the training benchmark's own test split: nothing the models trained on).",
            "",
            "| arm | seed | Recall@1 | Recall@5 | Recall@20 | median rank | gallery | queries |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for arm in ARMS:
            for seed, r in sorted(results.get(arm, {}).items(), key=lambda kv: int(kv[0])):
                t = r.get("scored") or {}
                lines.append(
                    f"| {arm_title(arm, wide_k)} | {seed} | {_pct(t.get('recall@1'))} | {_pct(t.get('recall@5'))} | "
                    f"{_pct(t.get('recall@20'))} | {_rank(t.get('median_rank'))} | {t.get('gallery', 0):,} | "
                    f"{t.get('queries', 0):,} |"
                )
    base = report.get("baseline")
    if any(len(by_seed) > 1 for by_seed in results.values()) or not scored["own"]:
        lines += [
            "",
            f"Means over seeds ({where}):",
            "",
            "| arm | seeds | Recall@1 | Recall@5 | Recall@20 | median rank |",
            "|---|---|---|---|---|---|",
        ]
        for arm in ARMS:
            if arm in summary:
                a = summary[arm]
                lines.append(
                    f"| {arm_title(arm, wide_k)} | {a['seeds']} | {_pct(a['recall@1'])} | {_pct(a['recall@5'])} | "
                    f"{_pct(a['recall@20'])} | {_rank(a['median_rank'])} |"
                )
        if base:
            lines.append(
                f"| pretrained deep features, no training | - | {_pct(base['recall@1'])} | {_pct(base['recall@5'])} | "
                f"{_pct(base['recall@20'])} | {_rank(base['median_rank'])} |"
            )
    diffs = report["comparisons"]
    if diffs:
        lines += [
            "",
            "## Reading",
            "",
            f"Differences on {where} ({scored['queries']:,} queries, the same for every arm): each arm's hits "
            "averaged over its seeds, then compared query by query; in brackets a paired bootstrap 95% interval over"
            " the queries. A difference counts as beyond noise when its interval excludes 0. A second seed varies the"
            " training only; the test queries stay the same, so the interval is the limit of what this test split can"
            " tell apart.",
            "",
            "| comparison | Recall@1 difference | Recall@20 difference |",
            "|---|---|---|",
        ]
        for name, both in diffs.items():
            a, b = name.split(" vs ")
            lines.append(
                f"| {_title(a, wide_k)} vs {_title(b, wide_k)} | {_difference_text(both['recall@1'])} | "
                f"{_difference_text(both['recall@20'])} |"
            )
        lines += ["", *interpretation(report)]
    lines += [
        "",
        "## What this simulates, and what it does not",
        "",
        "* The reviewer is perfect and sees every proposal; people err and tire, so real approved sets are smaller"
        " and a little noisy.",
        "* The candidate pool is the training pool (the train street items' own shop items), as the trainer mines;"
        " a real catalogue is larger, so the scorers' precision there would be lower.",
        "* The crop's category is taken as known (Street2Shop photos are tagged by category); its exact item is not.",
        "* Catalog (shop-to-shop) triplets are left out of every arm (`train.mix.catalog: 0`): the question is about"
        " street positives. The recipe trains (anchor, positive) pairs, so a triplet's negative only decides which"
        " pairs are trained; a wrong positive is what curation removes.",
        "* Every arm runs the same number of epochs; with one-category batches larger than a category's pairs, every"
        " arm takes the same number of optimiser steps per epoch (one per category), over fewer pairs when it has"
        " fewer.",
        "",
        "## Commands",
        "",
        "```",
        *report["arm_commands"],
        "```",
        "",
    ]
    return "\n".join(lines)


def arm_positive_precision(files: dict[str, Path], bench: Any, arms: Sequence[str]) -> dict[str, float]:
    """Per arm, the share of its (anchor, positive) pairs whose positive is the true item."""
    resolver = RefResolver(bench)
    out = {}
    for arm in arms:
        pairs = {(t.anchor, t.positive) for t in arm_rows(arm, files)}
        true = sum(resolver.shop_index(p) == bench.items[int(parse_ref(a)[2])].shop_index for a, p in pairs)
        out[arm] = true / max(len(pairs), 1)
    return out


# -- command line ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Simulate the triplet review and measure what it changes")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--config", default=None, help="base training config (default: the size's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the size's epochs (every arm)")
    parser.add_argument("--proposals", type=int, default=1, help="scorer-proposed positives per street crop")
    parser.add_argument(
        "--wide-review", type=int, default=None, metavar="K", help="add arm (b'): review the top K proposals per crop"
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="default: (a), (b), (c) [and (b')]")
    parser.add_argument(
        "--external-test",
        default=None,
        help="score and compare the models on this benchmark size's test split (e.g. full) instead of their own",
    )
    parser.add_argument("--reuse", action="store_true", help="read runs already trained on the same config and rows")
    parser.add_argument("--work-dir", default=None, help="default $VAR_DIR/curation-study/<size>")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the trainer's)")
    parser.add_argument("--out", default=None, help="Markdown report (default docs/curation_study.md; .json beside)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    from ml.training.config import TrainingConfig
    from ml.training.data import load_bench

    args = build_parser().parse_args(argv)
    started = time.monotonic()
    command = "python -m ml.evaluation.curation_study " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    arms = args.arms or [a for a in ARMS if a != WIDE or args.wide_review]
    if WIDE in arms and not args.wide_review:
        raise SystemExit(f"arm {WIDE} needs --wide-review K")
    var = Path(os.environ.get("VAR_DIR") or REPO / "var")
    work = Path(args.work_dir) if args.work_dir else var / "curation-study" / args.size
    work.mkdir(parents=True, exist_ok=True)
    out_md = Path(args.out) if args.out else REPO / "docs" / "curation_study.md"
    progress = not args.quiet

    configs = {seed: study_config(args.size, seed, args.epochs, args.cache_dir, args.config) for seed in args.seeds}
    first = configs[args.seeds[0]]
    bench = load_bench(TrainingConfig.from_dict(first).data, progress)
    print(f"mining on {args.size} ({len(bench.items):,} street items)", flush=True)
    mined = mine_study_triplets(bench, first, args.proposals, args.wide_review, progress)
    reviewed, review = simulate_review(mined.scorer, bench)
    files = {
        "scorer": save_triplets(mined.scorer, work / "scorer-mined.jsonl"),
        "reviewed": save_triplets(reviewed, work / "scorer-reviewed.jsonl"),
        "truth": save_triplets(mined.truth, work / "ground-truth.jsonl"),
    }
    wide_review = None
    if mined.wide is not None:
        reviewed_wide, wide_review = simulate_review(mined.wide, bench)
        files["reviewed-wide"] = save_triplets(reviewed_wide, work / f"scorer-top{args.wide_review}-reviewed.jsonl")
    print(f"scorer precision {mined.proposals['precision']:.3f}; review {review}; wide {wide_review}", flush=True)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    commands: list[str] = []
    precision = arm_positive_precision(files, bench, arms)
    scored_size = args.external_test or args.size
    scorer = SplitScorer(scored_size, first, bench=None if args.external_test else bench, progress=progress)
    baseline, baseline_ranks = scorer.baseline()

    def report_now() -> dict:
        runs = [r for by_seed in results.values() for r in by_seed.values()]
        return {
            "command": command,
            "machine": {**describe_machine(), "niceness": os.nice(0)},
            "benchmark": {"size": args.size, "seed": int(first["data"]["seed"]), "data_hash": bench.data_hash},
            "base_config": args.config or SIZES[args.size].base_config,
            "overrides": study_overrides(args.size, epochs=args.epochs, cache_dir=args.cache_dir),
            "config": first,
            "scorer": mined.proposals,
            "review": review,
            "wide_review": args.wide_review,
            "wide_scorer": mined.wide_proposals,
            "wide_review_counts": wide_review,
            "mining_timings": mined.timings,
            "arm_positive_precision": precision,
            "results": {arm: {str(s): r for s, r in by_seed.items()} for arm, by_seed in results.items()},
            "scored_split": {
                "size": scored_size,
                "own": not args.external_test,
                "queries": baseline["queries"],
                "gallery": baseline["gallery"],
            },
            "baseline": baseline,
            "baseline_ranks": [int(r) for r in baseline_ranks],
            "summary": summarise(results, "scored"),
            "comparisons": comparisons(results, baseline_ranks),
            "arm_commands": commands,
            "runs": {
                "planned": len(args.seeds) * len(arms),
                "finished": len(runs),
                "reused": sum(bool(r.get("reused")) for r in runs),
                "train_wall_s": round(sum(r.get("wall_s") or 0.0 for r in runs), 1),
            },
            "wall_s": round(time.monotonic() - started, 1),
        }

    for seed in args.seeds:
        config_path = work / f"config-seed{seed}.yaml"
        config_path.write_text(yaml.safe_dump(configs[seed], sort_keys=True))
        for arm in [a for a in RUN_ORDER if a in arms]:
            out = work / f"{arm}-seed{seed}"
            argv_arm = arm_command(arm, config_path, files, out, quiet=args.quiet)
            commands.append("python -m ml.training.train_visnet " + shlex.join([_relative_arg(a) for a in argv_arm]))
            if args.reuse and reusable(out, configs[seed], arm_rows(arm, files)):
                saved = read_arm(out)
                results[arm][seed] = {**saved, "wall_s": saved["timings"].get("total_s"), "reused": True}
                print(f"reused {arm} seed {seed} from {out}", flush=True)
            else:
                print(f"training {arm} seed {seed}: {commands[-1]}", flush=True)
                results[arm][seed] = run_arm(argv_arm, out)
            scored, ranks = scorer.score(out)
            results[arm][seed].update(scored=scored, ranks=[int(r) for r in ranks])
            if args.external_test:
                print(f"  {arm} seed {seed} on the {scored_size} test split: {scored}", flush=True)
            t = results[arm][seed]["test"] or {}
            print(
                f"  {arm} seed {seed}: test R@1 {t.get('recall@1')} R@5 {t.get('recall@5')} R@20 "
                f"{t.get('recall@20')} (gallery {t.get('gallery')}), {results[arm][seed]['wall_s']} s",
                flush=True,
            )
            write_report(report_now(), out_md)
    report = report_now()
    write_report(report, out_md)
    print(f"wrote {out_md} and {out_md.with_suffix('.json')} ({report['wall_s']} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
