from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

from webapp.catalog import duplicates, services
from webapp.catalog.models import Category, DuplicatePair, Product, ProductImage


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


def _product_cell(product: Product | None, removed: str = ""):
    if product is None:
        return format_html('<div class="duplicate-side"><em>removed</em><br>{}</div>', removed or "-")
    image = product.primary_image
    url = reverse("admin:catalog_product_change", args=[product.pk])
    return format_html(
        '<div class="duplicate-side" style="display:inline-block;vertical-align:top;width:150px;margin-right:12px">'
        '<a href="{}">{}</a><br><a href="{}">#{} {}</a><br><small>{} · {} {} · {} image(s)</small></div>',
        url,
        _preview(image, 120) if image else "-",
        url,
        product.pk,
        product.title,
        product.sku,
        product.price,
        product.currency,
        len(product.images.all()),
    )


@admin.register(DuplicatePair)
class DuplicatePairAdmin(admin.ModelAdmin):
    """Near-duplicate products side by side; merge (keeping A or B) or dismiss, by action or by the row's buttons.

    Deciding needs the change_duplicatepair permission; view_duplicatepair alone shows the pairs.
    """

    list_display = ("pictures", "similarity_shown", "status", "decide", "model_version", "created_at", "decided")
    list_display_links = ("similarity_shown",)  # the pictures cell holds its own links to the products
    list_filter = ("status", "model_version")
    search_fields = ("product_a__title", "product_a__sku", "product_b__title", "product_b__sku", "removed_product")
    readonly_fields = (
        "pictures",
        "similarity",
        "status",
        "decide",
        "model_version",
        "removed_product",
        "decided_by",
        "decided_at",
        "created_at",
    )
    fields = readonly_fields
    actions = ["merge_keeping_a", "merge_keeping_b", "dismiss"]
    list_per_page = 25

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("product_a", "product_b", "decided_by")
            .prefetch_related("product_a__images", "product_b__images")
        )

    def has_add_permission(self, request):
        return False  # pairs are found by find_near_duplicates, not typed in

    @admin.display(description="Product A | Product B")
    def pictures(self, obj):
        return format_html(
            "{}{}",
            _product_cell(obj.product_a, obj.removed_product),
            _product_cell(obj.product_b, obj.removed_product),
        )

    @admin.display(description="Similarity", ordering="similarity")
    def similarity_shown(self, obj):
        return f"{obj.similarity:.3f}"

    @admin.display(description="Decided")
    def decided(self, obj):
        if obj.decided_at is None:
            return "-"
        return f"{obj.decided_by or 'someone'}, {obj.decided_at:%Y-%m-%d %H:%M}"

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if self.has_change_permission(request) else [name for name in shown if name != "decide"]

    def get_fields(self, request, obj=None):
        shown = super().get_fields(request, obj)
        return shown if self.has_change_permission(request, obj) else [name for name in shown if name != "decide"]

    @admin.display(description="Decide")
    def decide(self, obj):
        """Buttons (shown to those who may decide, see get_list_display and get_fields)."""
        if obj.status != DuplicatePair.Status.OPEN:
            return "-"
        # The buttons submit the page's own form (changelist or change form: it carries the CSRF token) to the
        # decision's URL, so no form is nested in another.
        buttons = [
            (reverse("admin:catalog_duplicatepair_merge", args=[obj.pk, "a"]), "Merge, keep A"),
            (reverse("admin:catalog_duplicatepair_merge", args=[obj.pk, "b"]), "Merge, keep B"),
            (reverse("admin:catalog_duplicatepair_dismiss", args=[obj.pk]), "Dismiss"),
        ]
        return format_html_join(
            " ",
            '<button type="submit" class="button" formaction="{}" formmethod="post" formnovalidate>{}</button>',
            buttons,
        )

    # Decisions --------------------------------------------------------------------------------------------
    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/merge/<str:keep>/",
                self.admin_site.admin_view(self.merge_view),
                name="catalog_duplicatepair_merge",
            ),
            path(
                "<path:object_id>/dismiss/",
                self.admin_site.admin_view(self.dismiss_view),
                name="catalog_duplicatepair_dismiss",
            ),
        ]
        return urls + super().get_urls()

    def _decide(self, request, object_id, decision):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        pair = self.get_object(request, object_id)
        if pair is None:
            raise Http404("No such pair.")
        if not self.has_change_permission(request, pair):
            raise PermissionDenied
        try:
            message = decision(pair)
        except (duplicates.DuplicatePairError, PermissionDenied) as exc:
            messages.error(request, str(exc) or "Not allowed.")
        else:
            messages.success(request, message)
        back = request.META.get("HTTP_REFERER", "")
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
            back = reverse("admin:catalog_duplicatepair_changelist")
        return HttpResponseRedirect(back)

    def merge_view(self, request, object_id, keep):
        if keep not in ("a", "b"):
            raise Http404("Keep a or b.")

        def merge(pair):
            product = pair.product_a if keep == "a" else pair.product_b
            if product is None:
                raise duplicates.DuplicatePairError("That product no longer exists.")
            kept = duplicates.duplicate_pair_merge(pair=pair, keep=product, user=request.user)
            return f"Merged: kept #{kept.pk} {kept.title} ({pair.removed_product or 'the other'} removed)."

        return self._decide(request, object_id, merge)

    def dismiss_view(self, request, object_id):
        def dismiss(pair):
            duplicates.duplicate_pair_dismiss(pair=pair, user=request.user)
            return f"Dismissed: products #{pair.product_a_id} and #{pair.product_b_id} are different items."

        return self._decide(request, object_id, dismiss)

    def _decide_many(self, request, queryset, decision, verb):
        done, skipped = 0, []
        for pair_id in list(queryset.values_list("pk", flat=True)):
            pair = DuplicatePair.objects.filter(pk=pair_id).first()  # an earlier merge may have changed it
            try:
                if pair is None:
                    raise duplicates.DuplicatePairError("it went with an earlier merge")
                decision(pair)
                done += 1
            except (duplicates.DuplicatePairError, PermissionDenied) as exc:
                skipped.append(f"pair {pair_id}: {exc}")
        if done:
            messages.success(request, f"{verb} {done} pair(s).")
        if skipped:
            messages.warning(request, "Skipped " + "; ".join(skipped))

    def _merge_keeping(self, request, queryset, side):
        def merge(pair):
            product = getattr(pair, f"product_{side}")
            if product is None:
                raise duplicates.DuplicatePairError("that product no longer exists")
            duplicates.duplicate_pair_merge(pair=pair, keep=product, user=request.user)

        self._decide_many(request, queryset, merge, f"Merged (kept {side.upper()})")

    @admin.action(description="Merge, keeping product A", permissions=["change"])
    def merge_keeping_a(self, request, queryset):
        self._merge_keeping(request, queryset, "a")

    @admin.action(description="Merge, keeping product B", permissions=["change"])
    def merge_keeping_b(self, request, queryset):
        self._merge_keeping(request, queryset, "b")

    @admin.action(description="Dismiss: not duplicates", permissions=["change"])
    def dismiss(self, request, queryset):
        self._decide_many(
            request,
            queryset,
            lambda pair: duplicates.duplicate_pair_dismiss(pair=pair, user=request.user),
            "Dismissed",
        )
