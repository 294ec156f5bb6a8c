"""Model versions: every embedder the product can serve, and which one the vector-store alias points at."""

from django.db import models


class ModelVersion(models.Model):
    """A versioned embedder (weights, config, metrics, data hash) and the Milvus collection of its vectors.

    `model_version` is also the suffix of its collection (`<prefix>_<model_version>`). Exactly one
    version is active (the alias points at its collection); the one it replaced is standby and its
    collection is kept for rollback.
    """

    class Kind(models.TextChoices):
        IMAGENET = "imagenet", "ImageNet stand-in"
        VISNET = "visnet", "Trained VisNet"

    class State(models.TextChoices):
        REGISTERED = "registered", "Registered"
        EMBEDDING = "embedding", "Embedding the catalog"
        ACTIVE = "active", "Active"
        STANDBY = "standby", "Standby (kept for rollback)"
        FAILED = "failed", "Failed"

    model_version = models.CharField(max_length=120, unique=True)
    kind = models.CharField(max_length=12, choices=Kind.choices)
    artifact_dir = models.CharField(max_length=500, blank=True, help_text="Blank for the ImageNet stand-in.")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    data_hash = models.CharField(max_length=128, blank=True)
    dim = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.REGISTERED, db_index=True)
    embedded = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    reembed_cursor = models.BigIntegerField(default=0, help_text="Last image id embedded by the main pass.")
    reembed_started_at = models.DateTimeField(null=True, blank=True)
    task_token = models.CharField(max_length=32, blank=True, help_text="Only the latest queued re-embed runs.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.model_version} ({self.state})"

    @property
    def progress(self) -> str:
        if not self.total:
            return "-"
        return f"{self.embedded}/{self.total} ({100 * self.embedded / self.total:.0f}%)"
