"""The benchmark a training run reads (the street-to-shop builder, or the synthetic one for tiny runs) and its
query subsets."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.training.config import DataConfig


def load_bench(data_cfg: DataConfig, progress: bool = True) -> Any:
    if data_cfg.source == "synthetic":
        from ml.training.synthetic import build_synthetic_benchmark

        return build_synthetic_benchmark(data_cfg.size, seed=data_cfg.seed)
    from ml.data.street2shop import build_benchmark

    # data.loader_workers bounds the builder's processes too (1: none forked, e.g. inside a Celery worker)
    return build_benchmark(size=data_cfg.size, seed=data_cfg.seed, progress=progress, workers=data_cfg.loader_workers)


def query_indices(bench: Any, split: str) -> np.ndarray:
    """The street items of a split (benchmark item indices)."""
    if hasattr(bench, "query_indices"):
        return np.asarray(bench.query_indices(split), dtype=np.int64)
    return np.array([i for i, it in enumerate(bench.items) if it.split == split], dtype=np.int64)


def subsample(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of indices, drawn with `seed`, in sorted order (all of them when limit is None)."""
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, int(limit), replace=False))
