from django.contrib import admin, messages
from django.utils.html import format_html_join

from webapp.recommendations import services
from webapp.recommendations.models import SimilarList, SimilarListBuild


@admin.register(SimilarListBuild)
class SimilarListBuildAdmin(admin.ModelAdmin):
    list_display = ("version", "state", "progress", "rate", "started_at", "finished_at", "short_error")
    list_filter = ("state",)
    readonly_fields = [f.name for f in SimilarListBuild._meta.fields]
    actions = ["rebuild", "drop"]

    def has_add_permission(self, request):
        return False

    @admin.display(description="products/s")
    def rate(self, job):
        if not job.started_at or not job.done:
            return "-"
        seconds = ((job.finished_at or job.updated_at) - job.started_at).total_seconds()
        return f"{job.done / seconds:.0f}" if seconds > 0 else "-"

    @admin.display(description="error")
    def short_error(self, job):
        return job.error[:120]

    @admin.action(description="Rebuild the similar lists of the selected versions (in the background)")
    def rebuild(self, request, queryset):
        for job in queryset.select_related("version"):
            services.similar_lists_build_start(version=job.version)
        self.message_user(request, f"Queued {queryset.count()} build(s).", messages.SUCCESS)

    @admin.action(description="Drop the similar lists of the selected versions")
    def drop(self, request, queryset):
        jobs = queryset.select_related("version")
        deleted = sum(services.similar_lists_drop(model_version=job.version) for job in jobs)
        self.message_user(request, f"Dropped {deleted} list(s).", messages.SUCCESS)


@admin.register(SimilarList)
class SimilarListAdmin(admin.ModelAdmin):
    list_display = ("product_id", "version", "size", "exhaustive", "computed_at")
    list_filter = ("version",)
    search_fields = ("=product_id",)
    list_select_related = ("version",)
    show_full_result_count = False  # millions of rows: no COUNT(*) per page
    fields = ("version", "product_id", "size", "exhaustive", "computed_at", "neighbour_scores")
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="neighbours (product id: score)")
    def neighbour_scores(self, row):
        ids, scores = row.unpacked()
        pairs = ((int(pid), f"{score:.4f}") for pid, score in zip(ids, scores, strict=True))
        return format_html_join(", ", "{}: {}", pairs)
