from django.conf import settings
from django.db import models
from django.urls import reverse


class Category(models.Model):
    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=140, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self):
        return self.name


class Product(models.Model):
    sku = models.CharField(max_length=120, unique=True, help_text="The merchant's own product id.")
    title = models.CharField(max_length=300)
    brand = models.CharField(max_length=120, blank=True)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    attributes = models.JSONField(default=dict, blank=True)
    in_stock = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["category", "id"]), models.Index(fields=["price"])]

    def __str__(self):
        return self.title

    def get_absolute_url(self):
        return reverse("catalog:product-detail", args=[self.pk])

    @property
    def primary_image(self):
        images = list(self.images.all())
        return images[0] if images else None


def product_image_path(instance, filename):
    return f"products/{instance.product_id}/{filename}"


def thumbnail_path(instance, filename):
    return f"thumbnails/{instance.product_id}/{filename}"


class ProductImage(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="images")
    image = models.ImageField(upload_to=product_image_path, max_length=300)
    thumbnail = models.ImageField(upload_to=thumbnail_path, max_length=300, blank=True)
    source_url = models.URLField(max_length=1000, blank=True)
    position = models.PositiveIntegerField(default=0)
    checksum = models.CharField(max_length=64, blank=True, help_text="SHA-256 of the original bytes.")
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    model_version = models.CharField(max_length=120, blank=True)
    item_box = models.JSONField(
        null=True,
        blank=True,
        help_text="[x1, y1, x2, y2] of the main item when the image is a scene (found at ingestion); its crop is "
        "what is embedded. Empty for a clean product shot, embedded whole.",
    )
    embedded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["product_id", "position", "id"]

    def __str__(self):
        return f"Image {self.pk} of product {self.product_id} ({self.status})"


class DuplicatePair(models.Model):
    """Two products whose images look near-identical (the same item listed twice), for a merchandiser to decide.

    Found by `webapp.catalog.duplicates.near_duplicates_find`; product_a has the lower id. A merged pair is kept as
    the record of the merge: the product merged away is deleted (its side becomes empty, `removed_product` says
    what it was).
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        MERGED = "merged", "Merged"
        DISMISSED = "dismissed", "Dismissed (not duplicates)"

    product_a = models.ForeignKey(
        Product, on_delete=models.SET_NULL, null=True, blank=True, related_name="duplicate_pairs_as_a"
    )
    product_b = models.ForeignKey(
        Product, on_delete=models.SET_NULL, null=True, blank=True, related_name="duplicate_pairs_as_b"
    )
    similarity = models.FloatField(help_text="Best cosine similarity between an image of A and an image of B.")
    model_version = models.CharField(max_length=120, help_text="The model version whose vectors were compared.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OPEN, db_index=True)
    removed_product = models.CharField(
        max_length=500, blank=True, help_text="The product merged away (id, SKU, title), kept after it is deleted."
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-similarity", "id"]
        constraints = [
            models.UniqueConstraint(fields=["product_a", "product_b"], name="duplicate_pair_once"),
            models.CheckConstraint(
                condition=models.Q(product_a__lt=models.F("product_b")), name="duplicate_pair_a_lt_b"
            ),
        ]

    def __str__(self):
        return f"Products {self.product_a_id} and {self.product_b_id} ({self.similarity:.3f}, {self.status})"
