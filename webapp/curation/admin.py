import threading
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from webapp.catalog.models import Product
from webapp.curation import services
from webapp.curation.models import Triplet, TripletDecision
from webapp.curation.refs import ref_has_context

REVIEW_FILTERS = {"kind": "kind__exact", "category": "category", "status": "status__exact", "reviewer": "reviewer"}
_page = threading.local()  # the products of the shop references on the changelist page being rendered


def _shop_products(skus: set[str]) -> dict[str, Product]:
    products = Product.objects.filter(sku__in=skus).prefetch_related("images")
    return {product.sku: product for product in products}


def _review(request, queryset, status: str, verb: str) -> None:
    count = services.triplets_review(
        triplet_ids=queryset.values_list("pk", flat=True), status=status, reviewer=request.user
    )
    messages.success(request, f"{verb} {count} triplet(s).")


@admin.action(description="Approve the selected triplets", permissions=["change"])
def approve_triplets(modeladmin, request, queryset):
    _review(request, queryset, Triplet.Status.APPROVED, "Approved")


@admin.action(description="Reject the selected triplets", permissions=["change"])
def reject_triplets(modeladmin, request, queryset):
    _review(request, queryset, Triplet.Status.REJECTED, "Rejected")


@admin.action(description="Reset the selected triplets to pending", permissions=["change"])
def reset_triplets(modeladmin, request, queryset):
    _review(request, queryset, Triplet.Status.PENDING, "Reset")


@admin.action(description="Swap positive and negative of the selected triplets", permissions=["change"])
def swap_triplets(modeladmin, request, queryset):
    report = services.triplets_swap(triplet_ids=queryset.values_list("pk", flat=True), reviewer=request.user)
    if report.swapped:
        messages.success(request, f"Swapped {len(report.swapped)} triplet(s); they are pending again.")
    for _, reason in report.refused[:20]:
        messages.error(request, reason)


class ReviewerFilter(admin.SimpleListFilter):
    title = "reviewer"
    parameter_name = "reviewer"

    def lookups(self, request, model_admin):
        reviewers = (
            Triplet.objects.exclude(reviewed_by=None)
            .values_list("reviewed_by__username", flat=True)
            .distinct()
            .order_by("reviewed_by__username")
        )
        return [(name, name) for name in reviewers]

    def queryset(self, request, queryset):
        return queryset.filter(reviewed_by__username=self.value()) if self.value() else queryset


class CategoryFilter(admin.SimpleListFilter):
    title = "category"
    parameter_name = "category"

    def lookups(self, request, model_admin):
        categories = Triplet.objects.exclude(category="").values_list("category", flat=True).distinct()
        return [(name, name) for name in categories.order_by("category")]

    def queryset(self, request, queryset):
        return queryset.filter(category=self.value()) if self.value() else queryset


class TripletDecisionInline(admin.TabularInline):
    """Who decided what, and when: the whole log, newest first, read-only."""

    model = TripletDecision
    extra = 0
    can_delete = False
    fields = ("decided_at", "action", "reviewer")
    readonly_fields = fields
    ordering = ("-decided_at", "-id")
    verbose_name = "decision"
    verbose_name_plural = "decision history"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("curation.view_tripletdecision") or request.user.has_perm(
            "curation.change_triplet"
        )


@admin.register(Triplet)
class TripletAdmin(admin.ModelAdmin):
    change_list_template = "curation/admin_triplet_change_list.html"
    list_display = (
        "id",
        "anchor",
        "positive",
        "negative",
        "kind",
        "category",
        "source",
        "status",
        "reviewed_by",
        "reviewed_at",
    )
    list_filter = ("kind", CategoryFilter, "status", ReviewerFilter, "source")
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
        "category",
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
        "category",
        "source",
        "scores",
        "status",
        "reviewed_by",
        "reviewed_at",
        "created_at",
    )
    inlines = [TripletDecisionInline]
    actions = [approve_triplets, reject_triplets, swap_triplets, reset_triplets]
    list_per_page = 50

    def has_add_permission(self, request):
        return False  # triplets come from mining and imports, not from a form

    def get_changelist_instance(self, request):
        changelist = super().get_changelist_instance(request)
        skus = set()
        for triplet in changelist.result_list:
            for ref in (triplet.anchor_ref, triplet.positive_ref, triplet.negative_ref):
                if ref.startswith("shop:"):
                    skus.add(ref[5:])
        _page.products = _shop_products(skus)  # one query per page, not three per row
        return changelist

    def changelist_view(self, request, extra_context=None):
        # The review page opens on the same slice of triplets as the list's filters.
        chosen = {name: request.GET.get(param, "") for name, param in REVIEW_FILTERS.items()}
        review_url = reverse("curation:review") + "?" + urlencode({k: v for k, v in chosen.items() if v})
        extra_context = {**(extra_context or {}), "review_url": review_url.rstrip("?")}
        return super().changelist_view(request, extra_context=extra_context)

    def save_model(self, request, obj, form, change):
        if change and "status" in form.changed_data:
            # Through the service, so the decision is logged like any other.
            action = services.ACTION_OF_STATUS[Triplet.Status(obj.status)]
            services.triplet_decide(triplet=obj.pk, action=action, reviewer=request.user)
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)

    def _preview(self, ref: str):
        if ref_has_context(ref):
            url = reverse("curation:ref-image", args=[ref])
            return format_html(
                '<a href="{}?mode=photo" title="{}"><img src="{}?mode=crop" loading="lazy" '
                'style="height:64px;width:auto;border-radius:4px" alt="{}"></a>',
                url,
                ref,
                url,
                ref,
            )
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
            '<a href="{}" title="{}"><img src="{}" style="height:64px;width:auto;border-radius:4px;'
            'image-rendering:pixelated" alt="{}"></a>',
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
