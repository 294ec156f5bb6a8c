"""Model versions: every embedder the product can serve, and which one the vector-store alias points at."""

from django.conf import settings
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
        CANDIDATE = "candidate", "Candidate (embedded, serving an A/B share)"
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
    ab_share = models.FloatField(
        default=0.0, help_text="Share of shoppers (0-1, sticky per client) served by this candidate version."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("activate_modelversion", "Can activate, A/B test and roll back model versions")]

    def __str__(self):
        return f"{self.model_version} ({self.state})"

    @property
    def progress(self) -> str:
        if not self.total:
            return "-"
        return f"{self.embedded}/{self.total} ({100 * self.embedded / self.total:.0f}%)"


class TrainingRun(models.Model):
    """One retrain (a Celery task on the `train` queue): approved triplets plus the base data -> a new version."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED, db_index=True)
    config = models.JSONField(default=dict, blank=True, help_text="What was asked: config file, epochs, data size.")
    approved_triplets = models.PositiveIntegerField(default=0)
    progress = models.JSONField(
        default=dict, blank=True, help_text="Latest epoch, epochs, loss and validation recall, and every epoch's row."
    )
    metrics = models.JSONField(default=dict, blank=True, help_text="The new version's evaluation.")
    base_version = models.ForeignKey(
        "ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version that was active when the run started.",
    )
    model_version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"training run {self.pk} ({self.state})"


class ShopperEvent(models.Model):
    """What shoppers did with results, per serving version: a click, or a "not similar" mark (deduplicated)."""

    class Kind(models.TextChoices):
        CLICK = "click", "Result clicked"
        NOT_SIMILAR = "not_similar", "Marked not similar"

    class Surface(models.TextChoices):
        SIMILAR = "similar", "Similar products"
        SEARCH = "search", "Search by photo"

    kind = models.CharField(max_length=12, choices=Kind.choices)
    surface = models.CharField(max_length=12, choices=Surface.choices)
    model_version = models.CharField(max_length=120, db_index=True)
    client_key = models.CharField(max_length=64, help_text="A hash of the session or client address, never raw.")
    query_ref = models.CharField(max_length=200, help_text="shop:<sku> for a product page, query:<id> for a photo.")
    product = models.ForeignKey("catalog.Product", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "client_key", "query_ref", "product"],
                condition=models.Q(kind="not_similar"),
                name="one_not_similar_mark_per_client",
            )
        ]

    def __str__(self):
        return f"{self.kind} {self.product_id} ({self.model_version})"


class ServedCount(models.Model):
    """How many result lists each model version served, per surface and day: the denominator of the A/B rates.

    Web processes count in memory and add their counts here every few seconds (webapp.search.experiments), so a
    busy site writes a few rows a minute instead of one per response.
    """

    day = models.DateField()
    model_version = models.CharField(max_length=120)
    surface = models.CharField(max_length=12, choices=ShopperEvent.Surface.choices)
    served = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-day", "model_version", "surface"]
        constraints = [
            models.UniqueConstraint(fields=["day", "model_version", "surface"], name="one_served_count_per_day"),
        ]

    def __str__(self):
        return f"{self.model_version} {self.surface} {self.day}: {self.served}"
