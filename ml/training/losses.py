"""Triplet losses on squared Euclidean distances, max(0, m + ||a-p||^2 - ||a-n||^2): the one place for them.

`TripletMarginLoss` works like pytorch-metric-learning's: `loss(embeddings, indices)` where `indices` is a
miner's output (ml.training.miners.PairIndices); a reducer turns the per-triplet terms into the batch loss.
`triplet_loss` and `batch_triplet_loss` are the plain functional forms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ml.training.miners import InBatchNegativesMiner, PairIndices

REDUCERS = ("mean", "mean_active", "hardest")


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[len(x), len(y)] squared Euclidean distances: ||x||^2 + ||y||^2 - 2 x.y (a matmul, no [n, m, dim] tensor)."""
    return (x.pow(2).sum(1)[:, None] + y.pow(2).sum(1)[None, :] - 2 * x @ y.T).clamp(min=0)


def _local(rows: torch.Tensor, size: int) -> torch.Tensor:
    """A lookup from batch row to position in `rows` (-1 elsewhere)."""
    lookup = torch.full((size,), -1, dtype=torch.long, device=rows.device)
    lookup[rows] = torch.arange(len(rows), device=rows.device)
    return lookup


class TripletMarginLoss(nn.Module):
    """Each anchor's one positive against each of its negatives, over a dense [anchors x candidates] grid.

    reducer "mean": mean over all triplets; "mean_active": mean over the triplets with a non-zero loss
    (pytorch-metric-learning's AvgNonZeroReducer; an easy batch does not dilute the hard ones); "hardest": each
    anchor's largest term (its hardest negative), mean over anchors."""

    def __init__(self, margin: float = 0.2, reducer: str = "mean") -> None:
        super().__init__()
        if reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {REDUCERS}, not {reducer!r}")
        self.margin, self.reducer = margin, reducer

    def terms(self, embeddings: torch.Tensor, indices: PairIndices) -> tuple[torch.Tensor, torch.Tensor]:
        """(hinge terms [anchors, candidates], the mask of the mined (anchor, negative) pairs)."""
        anchors, positives, anchors_n, negatives = indices
        if len(torch.unique(anchors)) != len(anchors):
            raise ValueError("TripletMarginLoss takes one positive per anchor")
        candidates = torch.unique(torch.cat([positives, negatives]))
        n = embeddings.shape[0]
        d = squared_distances(embeddings[anchors], embeddings[candidates])
        anchor_at, candidate_at = _local(anchors, n), _local(candidates, n)
        d_pos = d[torch.arange(len(anchors), device=d.device), candidate_at[positives]]
        mask = torch.zeros_like(d, dtype=torch.bool)
        mask[anchor_at[anchors_n], candidate_at[negatives]] = True
        return F.relu(self.margin + d_pos[:, None] - d) * mask, mask

    def forward(self, embeddings: torch.Tensor, indices: PairIndices) -> torch.Tensor:
        terms, mask = self.terms(embeddings, indices)
        if self.reducer == "hardest":
            return terms.amax(dim=1).mean()
        if self.reducer == "mean_active":
            return terms.sum() / (terms > 0).sum().clamp(min=1)
        return terms.sum() / mask.sum().clamp(min=1)


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2, reduction: str = "mean"
) -> torch.Tensor:
    """max(0, m + ||a - p||^2 - ||a - n||^2) per row triplet; reduction "mean", "sum" or "none"."""
    d_pos = (anchor - positive).pow(2).sum(dim=1)
    d_neg = (anchor - negative).pow(2).sum(dim=1)
    loss = F.relu(margin + d_pos - d_neg)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def batch_triplet_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive_rows: torch.Tensor,
    candidate_rows: torch.Tensor,
    margin: float,
    hardest: bool = False,
) -> torch.Tensor:
    """The hinge over every anchor and the negatives in the batch: candidates = [positives; mined negatives];
    anchor i's positive is candidates[i]; every candidate that is not the same image (row id) as that positive
    is a negative. hardest=False: mean over the active (anchor, negative) terms; True: each anchor's hardest
    negative only, mean over anchors. (InBatchNegativesMiner + TripletMarginLoss.)"""
    embeddings = torch.cat([anchors, candidates])
    labels = torch.cat([positive_rows, candidate_rows])
    indices = InBatchNegativesMiner()(embeddings, labels, len(anchors))
    return TripletMarginLoss(margin, "hardest" if hardest else "mean_active")(embeddings, indices)
