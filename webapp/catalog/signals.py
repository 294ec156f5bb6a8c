"""Keep the vector store in step with catalog deletes and edits (after the transaction commits)."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from webapp.catalog.models import Product, ProductImage
from webapp.search import dispatch

VECTOR_FIELDS = ("price", "category_id", "in_stock")


@receiver(post_delete, sender=ProductImage)
def remove_vectors_of_deleted_image(sender, instance, **kwargs):
    image_id = instance.pk
    storage, names = instance.image.storage, [f.name for f in (instance.image, instance.thumbnail) if f]
    dispatch.image_vectors_removal_on_commit(image_ids=[image_id])
    transaction.on_commit(lambda: [storage.delete(name) for name in names])


@receiver(pre_save, sender=Product)
def remember_vector_fields(sender, instance, **kwargs):
    if instance.pk:
        previous = Product.objects.filter(pk=instance.pk).values(*VECTOR_FIELDS).first()
        instance._previous_vector_fields = previous


@receiver(post_save, sender=Product)
def refresh_vectors_of_edited_product(sender, instance, created, **kwargs):
    previous = getattr(instance, "_previous_vector_fields", None)
    if created or previous is None:
        return
    if any(previous[field] != getattr(instance, field) for field in VECTOR_FIELDS):
        dispatch.product_vectors_sync_on_commit(product_id=instance.pk)
