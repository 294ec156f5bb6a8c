"""Miners + losses composed like pytorch-metric-learning, and the epoch samplers' batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.training.losses import TripletMarginLoss, batch_triplet_loss, triplet_loss
from ml.training.miners import InBatchNegativesMiner, MinedNegativesMiner
from ml.training.samplers import fixed_spans, one_class_order, one_class_spans


def test_mined_negatives_miner_pairs_each_anchor_with_its_own_rows():
    emb = torch.randn(9, 4)
    indices = MinedNegativesMiner()(emb, None, 3)
    assert indices.anchors_p.tolist() == [0, 1, 2] and indices.positives.tolist() == [3, 4, 5]
    assert indices.anchors_n.tolist() == [0, 1, 2] and indices.negatives.tolist() == [6, 7, 8]
    with pytest.raises(ValueError, match="3 x 2"):
        MinedNegativesMiner()(emb, None, 2)


def test_mined_triplets_through_the_miner_and_loss_equal_the_plain_triplet_loss():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(3 * 8, 16), dim=1)
    composed = TripletMarginLoss(0.4, "mean")(emb, MinedNegativesMiner()(emb, None, 8))
    assert float(composed) == pytest.approx(float(triplet_loss(emb[:8], emb[8:16], emb[16:], margin=0.4)), abs=1e-6)


def test_in_batch_miner_never_takes_the_positives_own_image_as_a_negative():
    emb = torch.randn(6, 4)
    labels = torch.tensor([10, 11, 10, 11, 12, 10])  # anchors labelled by their positives; candidates 2..5
    indices = InBatchNegativesMiner()(emb, labels, 2)
    pairs = set(zip(indices.anchors_n.tolist(), indices.negatives.tolist(), strict=True))
    assert pairs == {(0, 3), (0, 4), (1, 2), (1, 4), (1, 5)}


def test_reducers_mean_active_and_hardest():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # anchor, positive, far and near negative
    indices = InBatchNegativesMiner()(emb, torch.tensor([0, 0, 1, 2]), 1)
    # squared distances to the negatives: 2 and 0.8; margin 2.5: terms 0.5 and 1.7
    assert float(TripletMarginLoss(2.5, "mean_active")(emb, indices)) == pytest.approx(1.1)
    assert float(TripletMarginLoss(2.5, "hardest")(emb, indices)) == pytest.approx(1.7)
    assert float(TripletMarginLoss(1.0, "mean")(emb, indices)) == pytest.approx((0 + 0.2) / 2)
    assert float(
        batch_triplet_loss(emb[:1], emb[1:], torch.tensor([0]), torch.tensor([0, 1, 2]), 2.5)
    ) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="reducer"):
        TripletMarginLoss(0.2, "median")


def test_one_class_batches_never_mix_classes_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=50)
    order = one_class_order(labels, 6, np.random.default_rng(1))
    assert sorted(order.tolist()) == list(range(50))
    spans = one_class_spans(labels[order], 6)
    assert spans[0][0] == 0 and spans[-1][1] == 50
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:], strict=False))  # contiguous
    for lo, hi in spans:
        assert 0 < hi - lo <= 6 and len(set(labels[order][lo:hi].tolist())) == 1
    assert fixed_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
