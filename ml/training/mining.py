"""Which triplets a run trains on: mined with the BISS scorers over the train split (street crops against their
shop items, catalog items against their neighbours), or given (a reviewed file); re-mined with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml.feature_cache import DeepFeatureCache
from ml.models.visnet import VisNet
from ml.training.config import DataConfig, MiningConfig
from ml.training.data import query_indices, subsample
from ml.training.validation import embed_refs
from ml.triplets import MinedTriplet, RefResolver, mine_catalog_triplets, mine_street_triplets, shop_ref, street_ref


@dataclass
class TrainingSet:
    triplets: list[MinedTriplet]
    pool: np.ndarray  # the train shop items the triplets draw from (re-mining searches them)


def biss_pool_features(bench: Any, pool: np.ndarray, cache: DeepFeatureCache, weights: dict) -> np.ndarray:
    """The BISS ensemble's feature vectors of the pool's shop images (the cached deep features as "cnn")."""
    from ml.biss import ColourHistogramScorer, EdgeOrientationScorer, EnsembleScorer, PixelScorer

    images = [bench.shop_image(int(i)) for i in pool]
    sets, ws = [], []
    for scorer in (ColourHistogramScorer(), PixelScorer(), EdgeOrientationScorer()):
        w = float(weights.get(scorer.name, 0))
        if w > 0:
            sets.append(scorer.features(images))
            ws.append(w)
    w = float(weights.get("cnn", 0))
    if w > 0:
        deep, _ = cache.tensors()
        sets.append(deep[cache.index([shop_ref(bench, i) for i in pool])].numpy())
        ws.append(w)
    return EnsembleScorer.combine(sets, ws).astype(np.float32)


def train_pool(bench: Any, data_cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train street queries, shop pool = their shop items + train_pool_extra random other train items)."""
    train_q = subsample(query_indices(bench, "train"), data_cfg.max_train_queries, 2)
    positives = np.unique([bench.items[q].shop_index for q in train_q]).astype(np.int64)
    train_shop = np.flatnonzero(np.asarray(bench.shop_split) == "train")
    rng = np.random.default_rng(3)
    extra_n = int(data_cfg.train_pool_extra or 0)
    rest = np.setdiff1d(train_shop, positives)
    extra = rng.choice(rest, min(extra_n, len(rest)), replace=False) if extra_n and len(rest) else np.zeros(0, np.int64)
    return train_q, np.sort(np.concatenate([positives, extra]).astype(np.int64))


def pool_refs(bench: Any, train_q: np.ndarray, pool: np.ndarray) -> list[str]:
    """The images mining and training read: the pool's shop items and the train street crops."""
    return [shop_ref(bench, i) for i in pool] + [street_ref(bench, q) for q in train_q]


def mine_training_set(
    bench: Any,
    cache: DeepFeatureCache,
    train_q: np.ndarray,
    pool: np.ndarray,
    mine_cfg: MiningConfig,
    catalog_share: float,
) -> TrainingSet:
    """Street triplets for the train queries (and catalog ones when catalog_share > 0) by the BISS ensemble,
    from the cached pool (see pool_refs)."""
    feats = biss_pool_features(bench, pool, cache, mine_cfg.weights)
    street = mine_street_triplets(
        bench,
        "train",
        features=feats,
        pool=pool,
        queries=train_q,
        hard_negatives=int(mine_cfg.street_hard_negatives),
        hard_k=int(mine_cfg.street_hard_k),
        out_of_class_negatives=int(mine_cfg.street_out_of_class),
        seed=4,
    )
    catalog: list[MinedTriplet] = []
    if catalog_share > 0 and mine_cfg.catalog_anchors:
        catalog = mine_catalog_triplets(
            bench,
            "train",
            features=feats,
            pool=pool,
            anchors=int(mine_cfg.catalog_anchors),
            positives_per_anchor=int(mine_cfg.catalog_positives),
            in_class_negatives=int(mine_cfg.catalog_in_class),
            out_of_class_negatives=int(mine_cfg.catalog_out_of_class),
            seed=5,
        )
    return TrainingSet(street + catalog, pool)


def given_training_set(triplets: list[MinedTriplet], cache: DeepFeatureCache, resolver: RefResolver) -> TrainingSet:
    """Given triplets (e.g. approved in review): cache their images; the pool is their shop items."""
    refs = [r for t in triplets for r in (t.anchor, t.positive, t.negative)]
    cache.ensure(refs, "triplets")
    shop_refs = {r for r in refs if r.startswith("shop:")}
    return TrainingSet(triplets, np.array(sorted(resolver.shop_index(r) for r in shop_refs), dtype=np.int64))


@torch.inference_mode()
def remine_street(
    model: VisNet,
    cache: DeepFeatureCache,
    bench: Any,
    street: list[MinedTriplet],
    pool: np.ndarray,
    k: int,
    per_anchor: int,
    device: torch.device,
    seed: int,
) -> list[MinedTriplet]:
    """Hard in-class negatives by the current model: nearest same-class pool items to each street anchor."""
    rng = np.random.default_rng(seed)
    pool_refs = [shop_ref(bench, i) for i in pool]
    labels = np.asarray(bench.shop_labels)[pool]
    g = embed_refs(model, cache, pool_refs, device)
    anchors = list(dict.fromkeys((t.anchor, t.positive) for t in street))
    ref_pos = {r: j for j, r in enumerate(pool_refs)}
    a_emb = embed_refs(model, cache, [a for a, _ in anchors], device)
    out = []
    pos_idx = np.array([ref_pos[p] for _, p in anchors])
    for cls in np.unique(labels[pos_idx]):
        members = np.flatnonzero(labels == cls)
        rows = np.flatnonzero(labels[pos_idx] == cls)
        sim = a_emb[rows] @ g[members].T
        sim[torch.as_tensor(members[None, :] == pos_idx[rows][:, None])] = -float("inf")
        top = torch.topk(sim, min(k, len(members) - 1), dim=1).indices.numpy()
        for r, row in enumerate(rows):
            a, p = anchors[row]
            choice = rng.choice(top[r], min(per_anchor, top.shape[1]), replace=False)
            for n in choice:
                out.append(
                    MinedTriplet(
                        a,
                        p,
                        pool_refs[members[n]],
                        "street",
                        "visnet:remined",
                        negative_score=float(sim[r, n]),
                        negative_kind="in_class",
                    )
                )
    return out
