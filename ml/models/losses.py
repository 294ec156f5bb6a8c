"""Losses for metric learning (re-exported from ml.models.visnet)."""

from ml.models.visnet import TripletLoss, triplet_loss

__all__ = ["TripletLoss", "triplet_loss"]
