"""Triplet mining for VisNet (as in the paper), as plain JSONL-serialisable records.

References are strings:
  "shop:<shop_key>"                 a catalog image (bench.shop_image(index of that key))
  "street:<split>:<item_index>"     a street crop; item_index indexes bench.items (global), split is
                                    that item's split (kept for readability and sanity checks)

Catalog triplets: anchor = a shop image, positive = one of its nearest SAME-CLASS neighbours by BISS,
negatives = far same-class items (in-class) and random other-class items (out-of-class).
Street triplets: anchor = a street crop, positive = its exact shop item, negatives = the positive's
nearest same-class catalog neighbours by BISS (hard, in-class) plus random out-of-class items. With
positive_source="scorer" the positive is proposed instead, as in the paper before people checked it: the street
crop's nearest same-category catalog images by BISS (the crop's category is known, its exact item is not), so
some proposed positives are wrong and review has something to reject.

Records carry a `status` ("pending" | "approved" | "rejected") so merchandisers can review them;
training takes all rows or only the approved ones (`load_triplets(path, approved_only=True)`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

STATUSES = ("pending", "approved", "rejected")


@dataclass
class MinedTriplet:
    anchor: str
    positive: str
    negative: str
    kind: str  # "catalog" | "street"
    source: str  # which scorer / rule produced it
    positive_score: float | None = None
    negative_score: float | None = None
    negative_kind: str | None = None  # "in_class" | "out_of_class"
    status: str = "pending"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> MinedTriplet:
        known = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in known})


# -- references ------------------------------------------------------------------------------------
def shop_ref(bench, index: int) -> str:
    return f"shop:{bench.shop_keys[int(index)]}"


def street_ref(bench, item_index: int) -> str:
    return f"street:{bench.items[int(item_index)].split}:{int(item_index)}"


def parse_ref(ref: str) -> tuple[str, str, int | str]:
    """("shop", "", key) or ("street", split, item_index)."""
    kind, _, rest = ref.partition(":")
    if kind == "shop":
        return "shop", "", rest
    if kind == "street":
        split, _, idx = rest.rpartition(":")
        return "street", split, int(idx)
    raise ValueError(f"bad image reference {ref!r}")


class RefResolver:
    """Turns references into PIL images (and shop keys into indices) for one benchmark."""

    def __init__(self, bench, context: float = 0.1):
        self.bench = bench
        self.context = context
        self.key_to_index = {k: i for i, k in enumerate(bench.shop_keys)}

    def shop_index(self, ref: str) -> int:
        kind, _, key = parse_ref(ref)
        if kind != "shop":
            raise ValueError(f"{ref} is not a shop reference")
        return self.key_to_index[key]

    def image(self, ref: str):
        kind, split, value = parse_ref(ref)
        if kind == "shop":
            return self.bench.shop_image(self.key_to_index[value])
        return self.bench.street_crop(self.bench.items[value], context=self.context)


# -- similarity helpers ----------------------------------------------------------------------------
def _topk_rows(sim: np.ndarray, k: int) -> np.ndarray:
    k = min(k, sim.shape[1])
    if k <= 0:
        return np.zeros((sim.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(sim, part, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, axis=1)


def shop_features_for(
    bench, indices: Sequence[int] | np.ndarray, scorer=None, precomputed: dict | None = None
) -> np.ndarray:
    """BISS ensemble features for shop indices (computed with `scorer`, default: cheap scorers, no CNN)."""
    from ml.biss import default_ensemble

    scorer = scorer or default_ensemble(cnn=False)
    images = [bench.shop_image(int(i)) for i in indices]
    if hasattr(scorer, "scorers") and precomputed:
        return scorer.features(images, precomputed=precomputed)
    return scorer.features(images)


# -- mining ----------------------------------------------------------------------------------------
def mine_catalog_triplets(
    bench,
    split: str = "train",
    features: np.ndarray | None = None,
    pool: Sequence[int] | np.ndarray | None = None,
    scorer=None,
    anchors: int | None = 1000,
    positives_per_anchor: int = 1,
    near_k: int = 3,
    in_class_negatives: int = 1,
    out_of_class_negatives: int = 1,
    far_fraction: float = 0.5,
    seed: int = 0,
    source: str = "biss-ensemble",
) -> list[MinedTriplet]:
    """Catalog triplets among shop items of `split` (or the given `pool` of shop indices).

    `features` ([len(pool_ids), D], L2-normalised rows aligned with `pool`) skips computing BISS features."""
    rng = np.random.default_rng(seed)
    pool_ids = np.asarray(
        pool if pool is not None else np.flatnonzero(np.asarray(bench.shop_split) == split), dtype=np.int64
    )
    if features is None:
        features = shop_features_for(bench, pool_ids, scorer)
    labels = np.asarray(bench.shop_labels)[pool_ids]
    if anchors is None or anchors >= len(pool_ids):
        chosen = np.arange(len(pool_ids))
    else:
        chosen = rng.choice(len(pool_ids), anchors, replace=False)
    triplets: list[MinedTriplet] = []
    for cls in np.unique(labels[chosen]):
        members = np.flatnonzero(labels == cls)
        others = np.flatnonzero(labels != cls)
        if len(members) < 3:
            continue
        cls_anchors = chosen[labels[chosen] == cls]
        sim = features[cls_anchors] @ features[members].T
        self_mask = members[None, :] == cls_anchors[:, None]
        sim[self_mask] = -np.inf
        order = np.argsort(-sim, axis=1)
        n_valid = len(members) - 1
        far_start = max(near_k, int(n_valid * far_fraction))
        for row, a in enumerate(cls_anchors):
            near = order[row, :near_k]
            far = order[row, far_start:n_valid]
            if len(far) == 0:
                continue
            pos_choice = near[:positives_per_anchor]
            for p in pos_choice:
                p_global = members[p]
                negs = []
                for n in rng.choice(far, min(in_class_negatives, len(far)), replace=False):
                    negs.append((members[n], float(sim[row, n]), "in_class"))
                if len(others):
                    for n in rng.choice(others, min(out_of_class_negatives, len(others)), replace=False):
                        negs.append((n, float(features[a] @ features[n]), "out_of_class"))
                for n_global, n_score, n_kind in negs:
                    triplets.append(
                        MinedTriplet(
                            anchor=shop_ref(bench, pool_ids[a]),
                            positive=shop_ref(bench, pool_ids[p_global]),
                            negative=shop_ref(bench, pool_ids[n_global]),
                            kind="catalog",
                            source=f"{source}:near-vs-{n_kind}",
                            positive_score=float(sim[row, p]),
                            negative_score=n_score,
                            negative_kind=n_kind,
                        )
                    )
    return triplets


def mine_street_triplets(
    bench,
    split: str = "train",
    features: np.ndarray | None = None,
    pool: Sequence[int] | np.ndarray | None = None,
    scorer=None,
    queries: Sequence[int] | np.ndarray | None = None,
    hard_negatives: int = 3,
    hard_k: int = 10,
    out_of_class_negatives: int = 1,
    seed: int = 0,
    source: str = "biss-ensemble",
    positive_source: str = "truth",
    query_features: np.ndarray | None = None,
    positives_per_query: int = 1,
) -> list[MinedTriplet]:
    """Street triplets: (street crop, its positive, BISS-nearest same-class other items / random out-of-class
    items). Negatives are the positive's nearest catalog neighbours in `pool` (default: the split's shop items).
    `queries`: indices into bench.items (default: all items of `split`). `features`: L2-normalised BISS rows
    aligned with `pool`.

    positive_source "truth": the positive is the street item's exact shop item (it must be in the pool).
    "scorer": the positives are the crop's `positives_per_query` nearest same-category pool items by BISS
    (see propose_street_positives; `query_features` are the crops' BISS rows aligned with `queries`, computed
    with `scorer` when not given) - no exact-item ground truth is used."""
    if positive_source not in ("truth", "scorer"):
        raise ValueError(f"positive_source must be 'truth' or 'scorer', not {positive_source!r}")
    rng = np.random.default_rng(seed)
    if queries is None:
        queries = [i for i, item in enumerate(bench.items) if item.split == split]
    query_list = list(queries)
    pool_ids = np.asarray(
        pool if pool is not None else np.flatnonzero(np.asarray(bench.shop_split) == split), dtype=np.int64
    )
    pos_in_pool = {int(s): j for j, s in enumerate(pool_ids)}
    if positive_source == "truth":
        missing = [q for q in query_list if int(bench.items[q].shop_index) not in pos_in_pool]
        if missing:
            raise ValueError(f"{len(missing)} street items have their shop item outside the pool")
    if features is None:
        features = shop_features_for(bench, pool_ids, scorer)
    labels = np.asarray(bench.shop_labels)[pool_ids]
    triplets: list[MinedTriplet] = []
    if positive_source == "truth":
        positives = np.array([pos_in_pool[int(bench.items[q].shop_index)] for q in query_list], dtype=np.int64)
        pair_query = np.arange(len(query_list), dtype=np.int64)
        positive_scores = np.ones(len(query_list), dtype=np.float32)
        in_class_source, out_of_class_source = f"{source}:nn-of-positive", "random:out-of-class"
    else:
        if query_features is None:
            query_features = street_crop_features(bench, query_list, scorer)
        proposals = propose_street_positives(bench, query_list, pool_ids, features, query_features, positives_per_query)
        pair_query, positives, positive_scores = proposals.query_rows, proposals.pool_rows, proposals.scores
        in_class_source = f"{source}:proposed-positive:nn-of-positive"
        out_of_class_source = f"{source}:proposed-positive:random-out-of-class"
    for cls in np.unique(labels[positives]) if len(positives) else []:
        members = np.flatnonzero(labels == cls)
        others = np.flatnonzero(labels != cls)
        rows = np.flatnonzero(labels[positives] == cls)
        for start in range(0, len(rows), 2048):
            chunk = rows[start : start + 2048]
            sim = features[positives[chunk]] @ features[members].T
            sim[members[None, :] == positives[chunk][:, None]] = -np.inf
            near = _topk_rows(sim, hard_k)
            for r, q_row in enumerate(chunk):
                q = query_list[pair_query[q_row]]
                p = positives[q_row]
                cand = near[r][np.isfinite(sim[r, near[r]])]
                picks = cand[:hard_negatives] if hard_negatives <= len(cand) else cand
                if len(cand) > hard_negatives:
                    # always the hardest one, the rest sampled from the top-k band
                    rest = (
                        rng.choice(cand[1:], hard_negatives - 1, replace=False) if hard_negatives > 1 else np.zeros(0)
                    )
                    picks = np.concatenate([cand[:1], np.asarray(rest, dtype=np.int64)])
                for n in picks:
                    triplets.append(
                        MinedTriplet(
                            anchor=street_ref(bench, q),
                            positive=shop_ref(bench, pool_ids[p]),
                            negative=shop_ref(bench, pool_ids[members[n]]),
                            kind="street",
                            source=in_class_source,
                            positive_score=float(positive_scores[q_row]),
                            negative_score=float(sim[r, n]),
                            negative_kind="in_class",
                        )
                    )
                if len(others):
                    for n in rng.choice(others, min(out_of_class_negatives, len(others)), replace=False):
                        triplets.append(
                            MinedTriplet(
                                anchor=street_ref(bench, q),
                                positive=shop_ref(bench, pool_ids[p]),
                                negative=shop_ref(bench, pool_ids[n]),
                                kind="street",
                                source=out_of_class_source,
                                positive_score=float(positive_scores[q_row]),
                                negative_score=float(features[p] @ features[n]),
                                negative_kind="out_of_class",
                            )
                        )
    return triplets


@dataclass
class StreetProposals:
    """Scorer-proposed street positives, one row per (query, proposal), best proposal of each query first."""

    query_rows: np.ndarray  # index into the mining call's `queries`
    pool_rows: np.ndarray  # index into its `pool`
    scores: np.ndarray  # BISS similarity of the crop and the proposed item
    ranks: np.ndarray  # 0 for a query's best proposal, 1 for the next, ...


def street_crop_features(bench, queries: Sequence[int] | np.ndarray, scorer=None, context: float = 0.1) -> np.ndarray:
    """BISS ensemble features of street crops (bench.items indices), with `scorer` (default: cheap scorers)."""
    from ml.biss import default_ensemble

    scorer = scorer or default_ensemble(cnn=False)
    return scorer.features([bench.street_crop(bench.items[int(q)], context=context) for q in queries])


def propose_street_positives(
    bench,
    queries: Sequence[int] | np.ndarray,
    pool: Sequence[int] | np.ndarray,
    features: np.ndarray,
    query_features: np.ndarray,
    per_query: int = 1,
    query_labels: Sequence[int] | np.ndarray | None = None,
) -> StreetProposals:
    """Each street crop's `per_query` nearest pool items of its category by BISS (cosine of the rows).

    The category of a crop is `query_labels` (default: its shop item's category - the photo's tag in
    Street2Shop; the exact item is never looked at)."""
    pool_ids = np.asarray(pool, dtype=np.int64)
    query_list = [int(q) for q in queries]
    if len(query_features) != len(query_list):
        raise ValueError(f"{len(query_features)} query feature rows for {len(query_list)} queries")
    if query_labels is None:
        query_labels = [int(bench.shop_labels[int(bench.items[q].shop_index)]) for q in query_list]
    q_labels = np.asarray(query_labels, dtype=np.int64)
    labels = np.asarray(bench.shop_labels)[pool_ids]
    rows: list[np.ndarray] = [np.zeros(0, np.int64)] * 4
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for cls in np.unique(q_labels):
        members = np.flatnonzero(labels == cls)
        q_rows = np.flatnonzero(q_labels == cls)
        if not len(members):
            continue
        sim = np.asarray(query_features[q_rows], dtype=np.float32) @ np.asarray(features[members], np.float32).T
        top = _topk_rows(sim, per_query)
        k = top.shape[1]
        parts[0].append(np.repeat(q_rows, k))
        parts[1].append(members[top].ravel())
        parts[2].append(np.take_along_axis(sim, top, axis=1).ravel())
        parts[3].append(np.tile(np.arange(k), len(q_rows)))
    rows = [np.concatenate(p) if p else rows[i] for i, p in enumerate(parts)]
    order = np.lexsort((rows[3], rows[0]))
    return StreetProposals(
        rows[0][order].astype(np.int64),
        rows[1][order].astype(np.int64),
        rows[2][order].astype(np.float32),
        rows[3][order].astype(np.int64),
    )


# -- JSONL -----------------------------------------------------------------------------------------
def save_triplets(triplets: Iterable[MinedTriplet], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for t in triplets:
            handle.write(t.to_json() + "\n")
    return path


def load_triplets(path: str | Path, approved_only: bool = False) -> list[MinedTriplet]:
    """Rows from a JSONL file; with approved_only, only rows whose status is "approved"."""
    out = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            t = MinedTriplet.from_dict(json.loads(line))
            if approved_only and t.status != "approved":
                continue
            out.append(t)
    return out


def triplets_hash(triplets: Iterable[MinedTriplet]) -> str:
    h = hashlib.sha256()
    for t in triplets:
        h.update(f"{t.anchor}|{t.positive}|{t.negative}|{t.kind}\n".encode())
    return h.hexdigest()[:16]
