"""Admin for model versions (activate, A/B test, roll back, prune old collections) and retraining runs.

Every serving change goes through a service in webapp.search.activation and needs the permission
search.activate_modelversion; starting a retrain needs search.add_trainingrun. Buttons post to small views
registered in each ModelAdmin's get_urls; the pages reload themselves while work runs in the background.
"""

import json

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from webapp.search import activation, registry, training
from webapp.search.models import ModelVersion, TrainingRun
from webapp.search.vector_store import VectorStoreError

State = ModelVersion.State
ACTIVATE_PERMISSION = "search.activate_modelversion"
REFRESH_SECONDS = 3


@admin.action(description="Activate (re-embed the catalog, then swap the alias)", permissions=["activate"])
def activate_versions(modeladmin, request, queryset):
    if queryset.count() != 1:
        messages.error(request, "Select exactly one version to activate.")
        return
    modeladmin.run_activate(request, queryset.get())


@admin.action(description="Roll back to this version", permissions=["activate"])
def rollback_to_version(modeladmin, request, queryset):
    if queryset.count() != 1:
        messages.error(request, "Select exactly one standby version to roll back to.")
        return
    modeladmin.run_rollback(request, queryset.get())


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    change_form_template = "admin/search/modelversion/change_form.html"
    change_list_template = "admin/search/modelversion/change_list.html"
    list_display = (
        "model_version",
        "kind",
        "state",
        "ab_share_percent",
        "progress",
        "similar_lists",
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
        "ab_share",
        "embedded",
        "total",
        "progress",
        "similar_lists",
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
        return False  # versions come from `manage.py register_model DIR` or a training run (validated there)

    def has_activate_permission(self, request, obj=None):
        return request.user.has_perm(ACTIVATE_PERMISSION)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("similar_build")

    @admin.display(description="Similar lists")
    def similar_lists(self, obj):
        """The version's list build (activation runs it before the alias swap): state and done/total."""
        job = getattr(obj, "similar_build", None)
        if job is None:
            return "-"
        return f"{job.get_state_display().lower()} {job.progress}"

    @admin.display(description="A/B share")
    def ab_share_percent(self, obj):
        return f"{obj.ab_share:.0%}" if obj.ab_share else "-"

    @admin.display(description="Metrics")
    def headline_metrics(self, obj):
        scalars = [(k, v) for k, v in (obj.metrics or {}).items() if isinstance(v, (int, float))][:4]
        if not scalars:
            test = ((obj.metrics or {}).get("final") or {}).get("test") or {}
            scalars = [(k, test[k]) for k in training.COMPARED if isinstance(test.get(k), (int, float))]
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

    # Per-object buttons ----------------------------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/activate/", wrap(self.activate_view), name="search_modelversion_activate"),
            path("<int:pk>/ab-start/", wrap(self.ab_start_view), name="search_modelversion_ab_start"),
            path("<int:pk>/ab-end/", wrap(self.ab_end_view), name="search_modelversion_ab_end"),
            path("<int:pk>/rollback/", wrap(self.rollback_view), name="search_modelversion_rollback"),
            path("prune/", wrap(self.prune_view), name="search_modelversion_prune"),
            *super().get_urls(),
        ]

    def _guarded(self, request, pk=None) -> ModelVersion | None:
        if request.method != "POST" and pk is not None:
            raise PermissionDenied("use the buttons on the version's page")
        if not self.has_activate_permission(request):
            raise PermissionDenied("activating, A/B testing and rolling back need search.activate_modelversion")
        return get_object_or_404(ModelVersion, pk=pk) if pk is not None else None

    def _back(self, version: ModelVersion):
        return HttpResponseRedirect(reverse("admin:search_modelversion_change", args=[version.pk]))

    def run_activate(self, request, version: ModelVersion) -> None:
        try:
            outcome = activation.model_version_activate(version=version)
        except VectorStoreError as exc:
            messages.error(request, f"The vector store is unavailable: {exc}")
            return
        if outcome == "active":
            messages.info(request, f"{version.model_version} is already active.")
        else:
            messages.success(
                request,
                f"Re-embedding the catalog with {version.model_version} in the background; "
                "the alias swaps when it is done.",
            )

    def run_rollback(self, request, version: ModelVersion) -> None:
        try:
            version = activation.model_version_rollback(version=version)
        except (activation.VersionError, VectorStoreError) as exc:
            messages.error(request, str(exc))
            return
        messages.success(request, f"{version.model_version} is active again.")

    def activate_view(self, request, pk):
        version = self._guarded(request, pk)
        assert version is not None
        self.run_activate(request, version)
        return self._back(version)

    def rollback_view(self, request, pk):
        version = self._guarded(request, pk)
        assert version is not None
        self.run_rollback(request, version)
        return self._back(version)

    def ab_start_view(self, request, pk):
        version = self._guarded(request, pk)
        assert version is not None
        try:
            percent = float(request.POST.get("percent", ""))
        except ValueError:
            messages.error(request, "Give the A/B share as a percentage, e.g. 10.")
            return self._back(version)
        try:
            outcome = activation.model_version_prepare_candidate(version=version, share=percent / 100)
        except (activation.VersionError, VectorStoreError) as exc:
            messages.error(request, str(exc))
            return self._back(version)
        if outcome == "queued":
            messages.success(
                request,
                f"Embedding the catalog with {version.model_version} in the background; it then serves "
                f"{percent:g}% of shoppers. The active version keeps serving everyone else.",
            )
        else:
            messages.success(request, f"{version.model_version} now serves {percent:g}% of shoppers.")
        return self._back(version)

    def ab_end_view(self, request, pk):
        version = self._guarded(request, pk)
        assert version is not None
        try:
            version = activation.model_version_end_candidate(version=version)
        except activation.VersionError as exc:
            messages.error(request, str(exc))
            return self._back(version)
        messages.success(request, f"The A/B test of {version.model_version} ended; it serves nobody now.")
        return self._back(version)

    def prune_view(self, request):
        """GET: what would go (a confirmation page); POST: drop exactly the collections listed on that page."""
        self._guarded(request)
        try:
            keep = max(1, int(request.POST.get("keep") or request.GET.get("keep") or settings.MODEL_COLLECTIONS_KEEP))
        except ValueError:
            keep = settings.MODEL_COLLECTIONS_KEEP
        changelist = reverse("admin:search_modelversion_changelist")
        if request.method == "POST":
            confirmed = request.POST.getlist("collection")
            try:
                dropped = activation.collections_prune(keep=keep, only=confirmed)
            except VectorStoreError as exc:
                messages.error(request, f"The vector store is unavailable: {exc}")
                return HttpResponseRedirect(changelist)
            if dropped:
                messages.success(request, f"Dropped {len(dropped)} collection(s): {', '.join(dropped)}.")
            else:
                messages.info(request, "Nothing was dropped.")
            return HttpResponseRedirect(changelist)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET", "POST"])
        try:
            plan = activation.collections_prune_plan(keep=keep)
        except VectorStoreError as exc:
            messages.error(request, f"The vector store is unavailable: {exc}")
            return HttpResponseRedirect(changelist)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Prune old model collections",
            "plan": plan,
            "keep": keep,
        }
        return TemplateResponse(request, "admin/search/modelversion/prune_confirm.html", context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        version = ModelVersion.objects.filter(pk=object_id).first() if object_id else None
        if version is not None:
            extra_context.update(self._serving_context(request, version))
        return super().changeform_view(request, object_id, form_url, extra_context)

    def _serving_context(self, request, version: ModelVersion) -> dict:
        preparing = version.state == State.EMBEDDING
        in_ab = version.state == State.CANDIDATE or (preparing and version.ab_share > 0)
        return {
            "can_activate": self.has_activate_permission(request),
            "version": version,
            "show_activate": version.state != State.ACTIVE and not (preparing and version.ab_share <= 0),
            "show_ab_start": version.state in (State.REGISTERED, State.STANDBY, State.FAILED) or in_ab,
            "show_ab_end": in_ab,
            "show_rollback": version.state == State.STANDBY,
            "in_ab": in_ab,
            "ab_percent": f"{100 * version.ab_share:g}" if version.ab_share else "10",
            "auto_refresh": REFRESH_SECONDS if preparing else None,
            "percent_done": round(100 * version.embedded / version.total) if version.total else 0,
            "active": registry.active_version(fresh=True),
            "keep_default": settings.MODEL_COLLECTIONS_KEEP,
        }

    def changelist_view(self, request, extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["can_activate"] = self.has_activate_permission(request)
        extra_context["keep_default"] = settings.MODEL_COLLECTIONS_KEEP
        if ModelVersion.objects.filter(state=State.EMBEDDING).exists():
            extra_context["auto_refresh"] = REFRESH_SECONDS
        return super().changelist_view(request, extra_context)


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    change_form_template = "admin/search/trainingrun/change_form.html"
    change_list_template = "admin/search/trainingrun/change_list.html"
    list_display = (
        "id",
        "state",
        "progress_summary",
        "approved_triplets",
        "base_version",
        "model_version",
        "trigger",
        "requested_by",
        "created_at",
        "finished_at",
    )
    list_filter = ("state",)
    readonly_fields = (
        "state",
        "progress_summary",
        "approved_triplets",
        "base_version",
        "model_version",
        "requested_by",
        "pretty_config",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    )
    exclude = ("config", "progress", "metrics")

    def has_add_permission(self, request):
        return False  # started with the "Start a retrain" button (needs search.add_trainingrun)

    def has_change_permission(self, request, obj=None):
        return False  # a run is a record; nothing in it is edited by hand

    @admin.display(description="Progress")
    def progress_summary(self, obj):
        progress = obj.progress or {}
        stage = progress.get("stage", "-")
        if obj.state == TrainingRun.State.SUCCEEDED:
            return f"done: {progress.get('epoch', '?')} epoch(s)"
        if obj.state == TrainingRun.State.FAILED:
            return f"failed during {stage}"
        if stage == "training" and progress.get("epoch"):
            text = f"epoch {progress['epoch']}/{progress.get('epochs', '?')}, loss {progress.get('loss', 0):.4f}"
            if "recall@20" in progress:
                text += f", val R@1 {progress.get('recall@1', 0):.3f} R@20 {progress['recall@20']:.3f}"
            return text
        return stage

    @admin.display(description="Trigger")
    def trigger(self, obj):
        return (obj.config or {}).get("trigger", "-")

    @admin.display(description="Config")
    def pretty_config(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2, sort_keys=True))

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [path("start/", wrap(self.start_view), name="search_trainingrun_start"), *super().get_urls()]

    def _can_start(self, request) -> bool:
        return request.user.has_perm("search.add_trainingrun")

    def start_view(self, request):
        """GET: what a retrain would train on (a confirmation page); POST: queue it."""
        if not self._can_start(request):
            raise PermissionDenied("starting a retrain needs search.add_trainingrun")
        if request.method == "POST":
            config: dict = {"trigger": "admin"}
            epochs = (request.POST.get("epochs") or "").strip()
            if epochs:
                if not epochs.isdigit() or not 1 <= int(epochs) <= 100:
                    messages.error(request, "Epochs must be a whole number from 1 to 100 (or empty for the config's).")
                    return HttpResponseRedirect(reverse("admin:search_trainingrun_start"))
                config["epochs"] = int(epochs)
            try:
                run = training.training_run_start(requested_by=request.user, config=config)
            except training.TrainingBusy as exc:
                messages.error(request, str(exc))
                return HttpResponseRedirect(reverse("admin:search_trainingrun_changelist"))
            messages.success(request, f"Training run {run.pk} queued with {run.approved_triplets} approved triplet(s).")
            return HttpResponseRedirect(reverse("admin:search_trainingrun_change", args=[run.pk]))
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET", "POST"])
        from webapp.curation.models import Triplet

        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start a retrain",
            "approved": Triplet.objects.filter(status=Triplet.Status.APPROVED).count(),
            "new_approvals": training.approvals_since_last_run(),
            "active": registry.active_version(fresh=True),
            "busy": training.training_runs_in_progress().first(),
            "config_file": settings.RETRAIN_CONFIG or f"{training.CPU_CONFIG} (CPU) / {training.GPU_CONFIG} (GPU)",
        }
        return TemplateResponse(request, "admin/search/trainingrun/start.html", context)

    def changelist_view(self, request, extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["can_start"] = self._can_start(request)
        if training.training_runs_in_progress().exists():
            extra_context["auto_refresh"] = REFRESH_SECONDS
        return super().changelist_view(request, extra_context)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        run = TrainingRun.objects.select_related("model_version", "base_version").filter(pk=object_id).first()
        if run is not None:
            progress = run.progress or {}
            extra_context.update(
                {
                    "run": run,
                    "rows": [
                        {**row, "r1": row.get("recall@1"), "r5": row.get("recall@5"), "r20": row.get("recall@20")}
                        for row in progress.get("rows", [])
                    ],
                    "progress": progress,
                    "comparison": training.training_run_comparison(run=run),
                    "active": registry.active_version(fresh=True),
                    "auto_refresh": REFRESH_SECONDS if run.state in ("queued", "running") else None,
                    "can_activate": request.user.has_perm(ACTIVATE_PERMISSION),
                }
            )
        return super().changeform_view(request, object_id, form_url, extra_context)


from webapp.search import admin_experiments  # noqa: E402, F401  (the A/B comparison page)
