"""Does knowing the item's category help the exact-item search? Off, a row filter, or a ranked boost, measured.

The detector is class-agnostic (docs/localization.md), so the category of a query is predicted from the
embedding itself: a similarity-weighted vote of its `votes` nearest gallery items. Then
  off    - the plain cosine ranking;
  filter - only gallery items of the predicted category (a wrong prediction loses the item);
  boost  - `boost` is added to the similarity of the predicted category's items.
The vote size and the boost are chosen on the validation split, and every mode is reported on test.

    python -m ml.evaluation.category_modes --size full --visnet models/visnet-default
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.data.street2shop import build_benchmark
from ml.evaluation.metrics import recall_from_ranks
from ml.feature_cache import EmbeddingCache
from ml.inference.visnet import load_visnet_embedder

KS = (1, 5, 20)
VOTES = (5, 10, 20)
BOOSTS = (0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class SplitVectors:
    queries: np.ndarray  # [Q, D] street crops (ground-truth box, 10% context)
    gallery: np.ndarray  # [G, D] shop images
    targets: np.ndarray  # [Q] each query's row in gallery
    gallery_labels: np.ndarray  # [G] category of each gallery item


def split_vectors(benchmark, embedder, split: str) -> SplitVectors:
    cache = EmbeddingCache(benchmark, embedder, "visnet", context=0.1)
    queries = benchmark.query_indices(split)
    gallery = benchmark.gallery_indices(split)
    position = {int(shop): row for row, shop in enumerate(gallery)}
    targets = np.array([position[benchmark.items[i].shop_index] for i in queries], dtype=np.int64)
    return SplitVectors(cache.street(queries), cache.shop(gallery), targets, benchmark.shop_labels[gallery])


def predicted_categories(scores: torch.Tensor, labels: torch.Tensor, votes: int, classes: int) -> torch.Tensor:
    """The category with the largest summed similarity among each query's `votes` nearest gallery items."""
    top = scores.topk(votes, dim=1)
    tally = torch.zeros(scores.shape[0], classes, dtype=scores.dtype)
    tally.scatter_add_(1, labels[top.indices], top.values.clamp_min(0))
    return tally.argmax(dim=1)


def mode_ranks(vectors: SplitVectors, mode: str, votes: int = 10, boost: float = 0.0) -> np.ndarray:
    """0-based rank of each query's item (ties count against it); a filtered-out item gets rank len(gallery)."""
    q, g = torch.as_tensor(vectors.queries), torch.as_tensor(vectors.gallery)
    labels = torch.as_tensor(vectors.gallery_labels.astype(np.int64))
    targets = torch.as_tensor(vectors.targets)
    ranks = []
    for start in range(0, len(q), 1024):
        scores = q[start : start + 1024] @ g.T
        chunk_targets = targets[start : start + 1024]
        if mode != "off":
            same = labels[None, :] == predicted_categories(scores, labels, votes, int(labels.max()) + 1)[:, None]
            scores = scores.masked_fill(~same, -10.0) if mode == "filter" else scores + boost * same
        true = scores.gather(1, chunk_targets[:, None])
        rank = (scores >= true).sum(dim=1) - 1
        ranks.append(torch.where(true[:, 0] <= -10.0, torch.full_like(rank, len(g)), rank))
    return torch.cat(ranks).numpy()


def choose_on_validation(val: SplitVectors) -> dict[str, dict]:
    """The best vote size (filter) and vote size + boost (boost) by validation Recall@1, then @20."""
    best: dict[str, dict] = {"off": {}}
    key = lambda recall: (recall[1], recall[20])  # noqa: E731
    filters = [{"votes": v, "recall": recall_from_ranks(mode_ranks(val, "filter", v), KS)} for v in VOTES]
    best["filter"] = max(filters, key=lambda row: key(row["recall"]))
    boosts = [
        {"votes": v, "boost": b, "recall": recall_from_ranks(mode_ranks(val, "boost", v, b), KS)}
        for v, b in itertools.product(VOTES, BOOSTS)
    ]
    best["boost"] = max(boosts, key=lambda row: key(row["recall"]))
    return best


def study(size: str, visnet: str, seed: int = 0) -> dict:
    benchmark = build_benchmark(size, seed)
    embedder = load_visnet_embedder(visnet)
    val, test = split_vectors(benchmark, embedder, "val"), split_vectors(benchmark, embedder, "test")
    chosen = choose_on_validation(val)
    rows = []
    for mode, params in chosen.items():
        votes, boost = params.get("votes", 10), params.get("boost", 0.0)
        rows.append(
            {
                "mode": mode,
                "votes": params.get("votes"),
                "boost": params.get("boost"),
                "val": recall_from_ranks(mode_ranks(val, mode, votes, boost), KS),
                "test": recall_from_ranks(mode_ranks(test, mode, votes, boost), KS),
            }
        )
    scores = torch.as_tensor(test.queries) @ torch.as_tensor(test.gallery).T
    labels = torch.as_tensor(test.gallery_labels.astype(np.int64))
    predicted = predicted_categories(scores, labels, chosen["filter"]["votes"], int(labels.max()) + 1).numpy()
    accuracy = float((predicted == test.gallery_labels[test.targets]).mean())
    return {
        "size": size,
        "model_version": embedder.model_version,
        "rows": rows,
        "category_accuracy": accuracy,
        "queries": {"val": len(val.queries), "test": len(test.queries)},
        "gallery": {"val": len(val.gallery), "test": len(test.gallery)},
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        "| Category use | chosen on val | val R@1 / R@5 / R@20 | test R@1 / R@5 / R@20 |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        chosen = {"off": "-", "filter": f"vote of {row['votes']}", "boost": f"vote of {row['votes']}, +{row['boost']}"}
        val = " / ".join(f"{100 * row['val'][k]:.1f}" for k in KS)
        test = " / ".join(f"{100 * row['test'][k]:.1f}" for k in KS)
        lines.append(f"| {row['mode']} | {chosen[row['mode']]} | {val} | {test} |")
    lines.append("")
    lines.append(
        f"Predicted category accuracy on test (the filter's vote): {100 * result['category_accuracy']:.1f}% "
        f"({result['queries']['test']:,} queries, gallery {result['gallery']['test']:,}; val "
        f"{result['queries']['val']:,} queries, gallery {result['gallery']['val']:,})."
    )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--visnet", default="models/visnet-default")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the result as JSON (docs/category_modes.json)"
    )
    args = parser.parse_args(argv)
    result = study(args.size, args.visnet, args.seed)
    print("\n".join(report_lines(result)))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
