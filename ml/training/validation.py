"""Validation during training: exact-item Recall@K of street crops against a split's shop gallery, from the
feature cache, counted by ml.evaluation.metrics (the evaluation report's rule: ties count against the query)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.evaluation.metrics import recall_summary
from ml.feature_cache import DeepFeatureCache
from ml.models.visnet import VisNet
from ml.triplets import shop_ref, street_ref


@torch.inference_mode()
def embed_refs(
    model: VisNet, cache: DeepFeatureCache, refs: Sequence[str], device: torch.device, batch_size: int = 1024
) -> torch.Tensor:
    """Embeddings of cached refs: from the cached deep features while the deep branch is frozen, else the whole
    model over the cached images."""
    idx = cache.index(refs)
    out = []
    model.eval()
    if model.deep_frozen:
        deep, small = cache.tensors()
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size]
            emb = model.forward_from_deep_features(deep[sel].to(device), small[sel].float().to(device))
            out.append(emb.float().cpu())
    else:
        images = cache.images(device)
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size].to(images.device)
            out.append(model(images[sel].to(device).float().div_(255.0)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embedding_dim)


class SplitEval:
    """A split's street queries (those whose shop item is in the gallery) against its shop gallery."""

    def __init__(self, bench: Any, split: str, query_idx: np.ndarray) -> None:
        self.split = split
        self.gallery = np.asarray(bench.gallery_indices(split), dtype=np.int64)
        pos = {int(s): j for j, s in enumerate(self.gallery)}
        self.query_idx = np.array([q for q in query_idx if int(bench.items[q].shop_index) in pos], dtype=np.int64)
        self.gt = np.array([pos[int(bench.items[q].shop_index)] for q in self.query_idx], dtype=np.int64)
        self.gallery_refs = [shop_ref(bench, i) for i in self.gallery]
        self.query_refs = [street_ref(bench, q) for q in self.query_idx]

    def run(self, model: VisNet, cache: DeepFeatureCache, device: torch.device) -> dict:
        """{"recall@1/5/20", "median_rank", "queries", "gallery"} of the model."""
        g = embed_refs(model, cache, self.gallery_refs, device)
        q = embed_refs(model, cache, self.query_refs, device)
        result: dict = recall_summary(q, g, self.gt)
        result["gallery"] = int(len(self.gallery))
        return result


def deep_only_baseline(cache: DeepFeatureCache, ev: SplitEval) -> dict:
    """The same Recall@K from the pretrained deep features alone (no training): what the head adds."""
    deep, _ = cache.tensors()
    g = F.normalize(deep[cache.index(ev.gallery_refs)], dim=1)
    q = F.normalize(deep[cache.index(ev.query_refs)], dim=1)
    return recall_summary(q, g, ev.gt)
