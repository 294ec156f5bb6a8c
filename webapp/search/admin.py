import json

from django.contrib import admin, messages
from django.utils.html import format_html

from webapp.search import activation
from webapp.search.models import ModelVersion


@admin.action(description="Activate (re-embed the catalog, then swap the alias)")
def activate_versions(modeladmin, request, queryset):
    if queryset.count() != 1:
        messages.error(request, "Select exactly one version to activate.")
        return
    version = queryset.get()
    outcome = activation.model_version_activate(version=version)
    if outcome == "active":
        messages.info(request, f"{version.model_version} is already active.")
    else:
        messages.success(
            request,
            f"Re-embedding the catalog with {version.model_version} in the background; "
            "the alias swaps when it is done.",
        )


@admin.action(description="Roll back to this version")
def rollback_to_version(modeladmin, request, queryset):
    if queryset.count() != 1:
        messages.error(request, "Select exactly one standby version to roll back to.")
        return
    try:
        version = activation.model_version_rollback(version=queryset.get())
    except activation.VersionError as exc:
        messages.error(request, str(exc))
        return
    messages.success(request, f"{version.model_version} is active again.")


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "model_version",
        "kind",
        "state",
        "progress",
        "dim",
        "headline_metrics",
        "data_hash_short",
        "created_at",
        "activated_at",
    )
    list_filter = ("state", "kind")
    search_fields = ("model_version", "data_hash", "artifact_dir")
    readonly_fields = (
        "model_version",
        "kind",
        "artifact_dir",
        "pretty_config",
        "pretty_metrics",
        "data_hash",
        "dim",
        "state",
        "embedded",
        "total",
        "progress",
        "reembed_cursor",
        "reembed_started_at",
        "error",
        "created_at",
        "updated_at",
        "activated_at",
        "deactivated_at",
    )
    exclude = ("config", "metrics", "task_token")
    actions = [activate_versions, rollback_to_version]

    def has_add_permission(self, request):
        return False  # versions come from `manage.py register_model DIR` (the artifact is validated there)

    @admin.display(description="Metrics")
    def headline_metrics(self, obj):
        scalars = [(k, v) for k, v in (obj.metrics or {}).items() if isinstance(v, (int, float))][:4]
        return ", ".join(f"{k}={v:.4g}" for k, v in scalars) or "-"

    @admin.display(description="Data hash")
    def data_hash_short(self, obj):
        return obj.data_hash[:12] or "-"

    @admin.display(description="Config")
    def pretty_config(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2, sort_keys=True))

    @admin.display(description="Metrics")
    def pretty_metrics(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.metrics, indent=2, sort_keys=True))
