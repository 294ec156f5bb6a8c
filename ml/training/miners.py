"""Miners, in the manner of pytorch-metric-learning: a miner looks at a batch's embeddings and labels and returns
index tuples; a loss (ml.training.losses) takes the embeddings and the miner's output.

A training batch is laid out [anchors (b rows); candidates]: candidate row b+i is anchor i's positive (its exact
shop item), and with mined negatives the rows after the positives are anchor i's mined negative (row 2b+i).
Labels say which image a row is: an anchor is labelled by its positive's image, so rows with equal labels match.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PairIndices(NamedTuple):
    """pytorch-metric-learning's pair form of indices_tuple: positive pairs (anchors_p[i], positives[i]) and
    negative pairs (anchors_n[j], negatives[j]), all row indices into the batch's embeddings."""

    anchors_p: torch.Tensor
    positives: torch.Tensor
    anchors_n: torch.Tensor
    negatives: torch.Tensor


def _paired_positives(n_anchors: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    anchors = torch.arange(n_anchors, device=device)
    return anchors, anchors + n_anchors


class MinedNegativesMiner:
    """Each anchor against its own positive and its own mined negative: the batch is [anchors; positives;
    negatives], b rows each. The labels are not needed (the triplets were mined beforehand)."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor | None, n_anchors: int) -> PairIndices:
        b = n_anchors
        if embeddings.shape[0] != 3 * b:
            raise ValueError(f"a mined-negatives batch has 3 x {b} rows, not {embeddings.shape[0]}")
        anchors, positives = _paired_positives(b, embeddings.device)
        return PairIndices(anchors, positives, anchors, positives + b)


class InBatchNegativesMiner:
    """Each anchor against its own positive and EVERY candidate that is not the same image as that positive
    (the other anchors' positives and any mined negatives in the batch): batch-all negatives."""

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, n_anchors: int) -> PairIndices:
        b = n_anchors
        if labels.shape[0] != embeddings.shape[0] or embeddings.shape[0] < 2 * b:
            raise ValueError("an in-batch-negatives batch has b anchors, >= b candidates and a label per row")
        anchors, positives = _paired_positives(b, embeddings.device)
        labels = labels.to(embeddings.device)
        negative = labels[None, b:] != labels[b : 2 * b, None]  # [b anchors, candidates]
        anchor_n, candidate = negative.nonzero(as_tuple=True)
        return PairIndices(anchors, positives, anchor_n, candidate + b)
