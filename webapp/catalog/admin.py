from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html

from webapp.catalog import services
from webapp.catalog.models import Category, Product, ProductImage


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name",)


def _preview(image: ProductImage, size: int = 64):
    file = image.thumbnail or image.image
    if not file:
        return "-"
    return format_html('<img src="{}" style="height:{}px;width:auto;border-radius:4px" alt="">', file.url, size)


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 0
    fields = ("preview", "image", "position", "status", "error", "model_version", "embedded_at")
    readonly_fields = ("preview", "status", "error", "model_version", "embedded_at")

    @admin.display(description="Preview")
    def preview(self, obj):
        return _preview(obj)


@admin.action(description="Re-ingest the selected images")
def reingest_images(modeladmin, request, queryset):
    count = services.product_images_queue_ingest(image_ids=list(queryset.values_list("pk", flat=True)))
    messages.info(request, f"Queued {queryset.count()} image(s) in {count} task(s).")


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("preview", "title", "brand", "category", "price", "currency", "in_stock", "image_statuses")
    list_display_links = ("preview", "title")
    list_filter = ("category", "in_stock", "images__status")
    search_fields = ("title", "brand", "sku")
    list_select_related = ("category",)
    inlines = [ProductImageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("images")

    def save_formset(self, request, form, formset, change):
        instances = formset.save()
        changed = [img.pk for img in instances if isinstance(img, ProductImage)]
        if changed:
            transaction.on_commit(lambda: services.product_images_queue_ingest(image_ids=changed))

    @admin.display(description="Image")
    def preview(self, obj):
        image = obj.primary_image
        return _preview(image, 48) if image else "-"

    @admin.display(description="Ingestion")
    def image_statuses(self, obj):
        return ", ".join(sorted({img.status for img in obj.images.all()})) or "no images"


@admin.register(ProductImage)
class ProductImageAdmin(admin.ModelAdmin):
    list_display = ("id", "preview", "product", "status", "attempts", "model_version", "embedded_at", "short_error")
    list_filter = ("status", "model_version")
    search_fields = ("product__title", "product__sku")
    readonly_fields = (
        "preview",
        "checksum",
        "width",
        "height",
        "status",
        "error",
        "attempts",
        "model_version",
        "embedded_at",
        "thumbnail",
    )
    list_select_related = ("product",)
    actions = [reingest_images]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if "image" in form.changed_data:
            transaction.on_commit(lambda: services.product_images_queue_ingest(image_ids=[obj.pk]))

    @admin.display(description="Preview")
    def preview(self, obj):
        return _preview(obj, 96)

    @admin.display(description="Error")
    def short_error(self, obj):
        return (obj.error[:80] + "…") if len(obj.error) > 80 else obj.error
