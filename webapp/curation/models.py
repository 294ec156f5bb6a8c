"""Mined training triplets that merchandisers review before they train a VisNet version."""

from django.conf import settings
from django.db import models


class Triplet(models.Model):
    """anchor / positive / negative image references, as mined by ml/triplets.py.

    References are "shop:<sku>" (a catalog product image), "street:<split>:<index>" (an item of a street photo of
    the street-to-shop benchmark) or "query:<id>" (a shopper's search photo, a QueryPhoto row, with its item box).
    """

    class Kind(models.TextChoices):
        CATALOG = "catalog", "Catalog (scorer)"
        STREET = "street", "Street to shop"
        FEEDBACK = "feedback", "Shopper feedback"

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
    category = models.CharField(
        max_length=120, blank=True, db_index=True, help_text="The category of the positive (the item to match)."
    )
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


class TripletDecision(models.Model):
    """Every review decision, kept: who decided what and when (the triplet holds only the latest)."""

    class Action(models.TextChoices):
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        SWAPPED = "swapped", "Positive and negative swapped"
        RESET = "reset", "Back to pending"

    triplet = models.ForeignKey(Triplet, on_delete=models.CASCADE, related_name="decisions")
    action = models.CharField(max_length=12, choices=Action.choices)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="triplet_decisions"
    )
    decided_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-decided_at", "-id"]

    def __str__(self):
        return f"{self.action} triplet {self.triplet_id} by {self.reviewer_id}"


def query_photo_path(instance, filename):
    return f"queries/{filename}"


class QueryPhoto(models.Model):
    """A shopper's search photo kept because the shopper marked a result "not similar" (ref "query:<id>")."""

    image = models.ImageField(upload_to=query_photo_path, max_length=300)
    checksum = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the stored bytes.")
    box = models.JSONField(null=True, blank=True, help_text="[x1, y1, x2, y2] of the item that was searched.")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"query photo {self.pk}"

    @property
    def ref(self) -> str:
        return f"query:{self.pk}"
