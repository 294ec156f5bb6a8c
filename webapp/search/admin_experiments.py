"""The admin's A/B comparison: what shoppers did with each model version's results, beside its offline recall.

Registered with the shopper events (Search › Shopper events, "Compare versions"), at
/admin/search/shopperevent/experiment/; staff with `search.view_shopperevent` see it. Its buttons run the model
version admin's own actions (activate, roll back, and whatever that admin offers), so permissions and messages
stay theirs.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import model_format_dict
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse

from webapp.search.experiments import experiment_compare, served_counts_flush
from webapp.search.models import ModelVersion, ShopperEvent

DEFAULT_DAYS = 14
MAX_DAYS = 365


@admin.register(ShopperEvent)
class ShopperEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "kind", "surface", "model_version", "product", "query_ref", "client")
    list_filter = ("kind", "surface", "model_version")
    search_fields = ("model_version", "query_ref", "product__sku")
    list_select_related = ("product",)
    date_hierarchy = "created_at"
    change_list_template = "search/admin/shopperevent_change_list.html"

    def has_add_permission(self, request):
        return False  # shoppers record these through the feedback API

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Client")
    def client(self, obj):
        return obj.client_key[:12]

    def get_urls(self):
        comparison = path(
            "experiment/", self.admin_site.admin_view(self.experiment_view), name="search_shopperevent_experiment"
        )
        return [comparison, *super().get_urls()]

    def experiment_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            days = min(max(int(request.GET.get("days", DEFAULT_DAYS)), 1), MAX_DAYS)
        except ValueError:
            days = DEFAULT_DAYS
        served_counts_flush()  # this process's latest counts; other processes add theirs every few seconds
        arms, differences, since = experiment_compare(days=days)
        context = {
            **self.admin_site.each_context(request),
            "title": "A/B comparison of model versions",
            "opts": self.model._meta,
            "arms": arms,
            "differences": differences,
            "since": since,
            "days": days,
            "day_choices": (1, 7, 14, 30, 90),
            "version_actions": self._version_actions(request),
            "version_changelist": reverse("admin:search_modelversion_changelist"),
        }
        return TemplateResponse(request, "search/admin/experiment.html", context)

    def _version_actions(self, request) -> list[tuple[str, str]]:
        """(name, description) of the model version admin's actions this user may run (delete left out)."""
        version_admin = self.admin_site._registry.get(ModelVersion)
        if version_admin is None:
            return []
        names = model_format_dict(version_admin.opts)
        return [
            (name, str(description) % names)
            for name, (_function, _name, description) in version_admin.get_actions(request).items()
            if name != "delete_selected"
        ]
