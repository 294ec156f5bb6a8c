import threading

from django.contrib import admin, messages
from django.utils.html import format_html

from webapp.catalog.models import Product
from webapp.curation import services
from webapp.curation.models import Triplet

_page = threading.local()  # the products of the shop references on the changelist page being rendered


def _shop_products(skus: set[str]) -> dict[str, Product]:
    products = Product.objects.filter(sku__in=skus).prefetch_related("images")
    return {product.sku: product for product in products}


@admin.action(description="Approve the selected triplets")
def approve_triplets(modeladmin, request, queryset):
    count = services.triplets_review(
        triplet_ids=queryset.values_list("pk", flat=True), status="approved", reviewer=request.user
    )
    messages.success(request, f"Approved {count} triplet(s).")


@admin.action(description="Reject the selected triplets")
def reject_triplets(modeladmin, request, queryset):
    count = services.triplets_review(
        triplet_ids=queryset.values_list("pk", flat=True), status="rejected", reviewer=request.user
    )
    messages.success(request, f"Rejected {count} triplet(s).")


@admin.register(Triplet)
class TripletAdmin(admin.ModelAdmin):
    list_display = ("id", "anchor", "positive", "negative", "kind", "source", "status", "reviewed_by", "reviewed_at")
    list_filter = ("status", "kind", "source")
    search_fields = ("anchor_ref", "positive_ref", "negative_ref")
    list_select_related = ("reviewed_by",)
    readonly_fields = (
        "anchor",
        "positive",
        "negative",
        "anchor_ref",
        "positive_ref",
        "negative_ref",
        "kind",
        "source",
        "scores",
        "reviewed_by",
        "reviewed_at",
        "created_at",
    )
    fields = (
        ("anchor", "positive", "negative"),
        "anchor_ref",
        "positive_ref",
        "negative_ref",
        "kind",
        "source",
        "scores",
        "status",
        "reviewed_by",
        "reviewed_at",
        "created_at",
    )
    actions = [approve_triplets, reject_triplets]
    list_per_page = 50

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        skus = set()
        for triplet in changelist.result_list:
            for ref in (triplet.anchor_ref, triplet.positive_ref, triplet.negative_ref):
                if ref.startswith("shop:"):
                    skus.add(ref[5:])
        _page.products = _shop_products(skus)  # one query per page, not three per row
        return changelist

    def save_model(self, request, obj, form, change):
        if "status" in form.changed_data:
            reviewed = obj.status != Triplet.Status.PENDING
            obj.reviewed_by = request.user if reviewed else None
            from django.utils import timezone

            obj.reviewed_at = timezone.now() if reviewed else None
        super().save_model(request, obj, form, change)

    def _preview(self, ref: str):
        if not ref.startswith("shop:"):
            return format_html('<span title="{}">{}</span>', ref, ref)
        sku = ref[5:]
        products = getattr(_page, "products", None)
        product = products.get(sku) if products is not None and sku in products else None
        if product is None:
            product = Product.objects.filter(sku=sku).prefetch_related("images").first()
        if product is None:
            return format_html('<span title="not in the catalog">{} (unknown SKU)</span>', ref)
        image = product.primary_image
        file = image and (image.thumbnail or image.image)
        if not file:
            return format_html('<a href="{}">{}</a>', product.get_absolute_url(), ref)
        return format_html(
            '<a href="{}" title="{}"><img src="{}" style="height:64px;width:auto;border-radius:4px" alt="{}"></a>',
            product.get_absolute_url(),
            ref,
            file.url,
            product.title,
        )

    @admin.display(description="Anchor")
    def anchor(self, obj):
        return self._preview(obj.anchor_ref)

    @admin.display(description="Positive")
    def positive(self, obj):
        return self._preview(obj.positive_ref)

    @admin.display(description="Negative")
    def negative(self, obj):
        return self._preview(obj.negative_ref)
