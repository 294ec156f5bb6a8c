"""Mined training triplets that merchandisers review before they train a VisNet version."""

from django.conf import settings
from django.db import models


class Triplet(models.Model):
    """anchor / positive / negative image references, as mined by ml/triplets.py.

    References are "shop:<sku>" (a catalog product image) or "street:<split>:<index>" (a street photo crop).
    """

    class Kind(models.TextChoices):
        CATALOG = "catalog", "Catalog"
        STREET = "street", "Street to shop"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    anchor_ref = models.CharField(max_length=200)
    positive_ref = models.CharField(max_length=200)
    negative_ref = models.CharField(max_length=200)
    kind = models.CharField(max_length=12, choices=Kind.choices, db_index=True)
    source = models.CharField(max_length=120, db_index=True, help_text="The scorer or rule that mined it.")
    scores = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviewed_triplets"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["anchor_ref", "positive_ref", "negative_ref"], name="unique_triplet"),
        ]

    def __str__(self):
        return f"{self.anchor_ref} / {self.positive_ref} / {self.negative_ref}"
