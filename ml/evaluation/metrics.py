"""Retrieval metrics on L2-normalised vectors: cosine similarity is a dot product, computed in chunks with torch.

* exact-item Recall@K (street queries vs a shop gallery): the fraction of queries whose own shop item is among
  the K most similar gallery items. Ties count against the query (rank = number of other gallery items
  scoring at least as high as the true item), so a feature that scores everything alike earns nothing.
  The one implementation: the evaluation report and training's validation (which picks the best epoch)
  both count ranks with `exact_item_ranks`.
* category-level Precision@K and mAP@R (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020):
  every item queries all the others (itself left out); R = number of other items of its class;
  mAP@R = mean over queries of (1/R) * sum_{i<=R} P(i) * rel(i).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).contiguous()
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def exact_item_ranks(
    queries: ArrayLike, gallery: ArrayLike, targets: Sequence[int] | np.ndarray, chunk: int = 1024
) -> np.ndarray:
    """0-based rank of each query's true gallery row (`targets[i]` indexes `gallery`) under cosine similarity:
    the number of OTHER gallery rows scoring at least as high (ties count against the query)."""
    q, g = _tensor(queries), _tensor(gallery)
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if len(t) != len(q):
        raise ValueError(f"{len(q)} queries but {len(t)} targets")
    if len(t) and (t.min() < 0 or t.max() >= len(g)):
        raise ValueError("a target is outside the gallery")
    ranks = []
    with torch.inference_mode():
        for start in range(0, len(q), chunk):
            scores = q[start : start + chunk] @ g.T
            true = scores.gather(1, t[start : start + chunk, None])
            ranks.append((scores >= true).sum(dim=1) - 1)
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def recall_from_ranks(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 20)) -> dict[int, float]:
    """{K: fraction of ranks < K} (NaN without queries)."""
    ranks = np.asarray(ranks)
    return {int(k): float((ranks < k).mean()) if len(ranks) else float("nan") for k in ks}


def recall_at_k(
    queries: ArrayLike, gallery: ArrayLike, targets: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 20)
) -> dict[int, float]:
    """Exact-item Recall@K for each K."""
    return recall_from_ranks(exact_item_ranks(queries, gallery, targets), ks)


def recall_summary(
    queries: ArrayLike, gallery: ArrayLike, targets: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 20)
) -> dict[str, float]:
    """Exact-item Recall@K as training's validation records it: {"recall@K": ..., "median_rank" (1-based, the
    lower median), "queries"}; 0.0 for every number without queries."""
    ranks = torch.as_tensor(exact_item_ranks(queries, gallery, targets))
    if not len(ranks):
        return {**{f"recall@{k}": 0.0 for k in ks}, "median_rank": 0.0, "queries": 0}
    out: dict[str, float] = {f"recall@{k}": float((ranks < k).float().mean()) for k in ks}
    out["median_rank"] = float(ranks.float().median() + 1)
    out["queries"] = int(len(ranks))
    return out


def neighbours(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, gallery indices) per query, most similar first; exclude_self drops gallery row i for query i."""
    q, g = _tensor(queries), _tensor(gallery)
    k = min(k, len(g) - (1 if exclude_self else 0))
    all_scores, all_indices = [], []
    with torch.inference_mode():
        for start in range(0, len(q), chunk):
            scores = q[start : start + chunk] @ g.T
            if exclude_self:
                rows = torch.arange(scores.shape[0])
                scores[rows, rows + start] = -float("inf")
            top = scores.topk(k, dim=1)
            all_scores.append(top.values)
            all_indices.append(top.indices)
    return torch.cat(all_scores).numpy(), torch.cat(all_indices).numpy()


def category_metrics(vectors: np.ndarray, labels: Sequence[int] | np.ndarray, k: int = 10) -> dict[str, float]:
    """Leave-one-out Precision@k and mAP@R over one labelled set (each item queries all the others)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(np.int64))
    r = counts[labels] - 1  # R per query
    max_r = int(max(r.max(), k))
    _, indices = neighbours(vectors, vectors, max_r, exclude_self=True)
    relevant = labels[indices] == labels[:, None]  # [N, max_r]
    precision_at_k = relevant[:, :k].mean(axis=1)
    positions = np.arange(1, relevant.shape[1] + 1)
    within_r = positions[None, :] <= r[:, None]
    hits = relevant & within_r
    precision_at_i = np.cumsum(hits, axis=1) / positions[None, :]
    ap_at_r = np.where(r > 0, (precision_at_i * hits).sum(axis=1) / np.maximum(r, 1), 0.0)
    valid = r > 0
    return {f"precision@{k}": float(precision_at_k.mean()), "map@r": float(ap_at_r[valid].mean())}
