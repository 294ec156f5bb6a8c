"""The demo catalog: real Fashion-MNIST items (MIT licence) as products with seeded metadata."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image

from ml.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from webapp.catalog import services
from webapp.catalog.images import validate_image_bytes
from webapp.catalog.models import Product, ProductImage

BRANDS = ("Northwind", "Kestrel", "Lumen & Co", "Atelier Nova", "Urban Fable", "Marlow", "Sable", "Tidewater")
ADJECTIVES = ("Classic", "Relaxed", "Everyday", "Tailored", "Essential", "Vintage", "Soft", "Structured")
PRICE_RANGES = {  # (low, high) in USD per class, so price filters mean something.
    "T-shirt/top": (9, 45),
    "Trouser": (25, 120),
    "Pullover": (29, 140),
    "Dress": (30, 220),
    "Coat": (70, 400),
    "Sandal": (15, 90),
    "Shirt": (19, 110),
    "Sneaker": (40, 180),
    "Bag": (25, 350),
    "Ankle boot": (60, 260),
}
FULL_SIZE = 70_000


@dataclass(frozen=True)
class DemoItem:
    sku: str
    pixels: np.ndarray
    label: int


def demo_items(size: int) -> list[DemoItem]:
    """The first `size` items in a fixed order: the 10k test split, then the 60k train split."""
    items = []
    for split in ("test", "train"):
        images, labels = load_fashion_mnist(split)
        for index in range(len(images)):
            if len(items) >= size:
                return items
            items.append(DemoItem(f"fmnist-{split}-{index:05d}", images[index], int(labels[index])))
    return items


def item_png(pixels: np.ndarray) -> bytes:
    # Fashion-MNIST draws a light item on black; shop photos show a dark item on white.
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def demo_catalog_load(*, size: int, batch_size: int = 500, progress=None) -> list[int]:
    """Create the missing demo products and images; return the ids of the images created."""
    categories = {name: services.category_get_or_create(name=name) for name in CLASS_NAMES}
    items = demo_items(size)
    existing = set(Product.objects.filter(sku__startswith="fmnist-").values_list("sku", flat=True))
    todo = [item for item in items if item.sku not in existing]
    if progress is not None:
        progress.total = len(todo)
    created_image_ids: list[int] = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        with transaction.atomic():
            products = Product.objects.bulk_create([_product_for(item, categories) for item in chunk])
            images = []
            for product, item in zip(products, chunk, strict=True):
                validated = validate_image_bytes(item_png(item.pixels))
                image = ProductImage(
                    product=product, checksum=validated.checksum, width=validated.width, height=validated.height
                )
                image.image.save(f"{validated.checksum[:16]}.png", ContentFile(validated.content), save=False)
                images.append(image)
            created = ProductImage.objects.bulk_create(images)
            ids = [image.pk for image in created]
            transaction.on_commit(lambda ids=ids: services.product_images_queue_ingest(image_ids=ids))
        created_image_ids += ids
        if progress is not None:
            progress.update(len(chunk))
    return created_image_ids


def _product_for(item: DemoItem, categories: dict) -> Product:
    rng = random.Random(item.sku)
    class_name = CLASS_NAMES[item.label]
    low, high = PRICE_RANGES[class_name]
    return Product(
        sku=item.sku,
        title=f"{rng.choice(ADJECTIVES)} {class_name.replace('/', ' / ')}",
        brand=rng.choice(BRANDS),
        price=Decimal(rng.randint(low * 100, high * 100)) / 100,
        currency="USD",
        category=categories[class_name],
        attributes={"source": "Fashion-MNIST", "fashion_mnist_label": class_name},
        in_stock=rng.random() < 0.9,
    )
