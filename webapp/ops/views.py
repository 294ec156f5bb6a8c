from dataclasses import asdict

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.cache import never_cache

from webapp.ops.health import health_checks, ingestion_lag, queue_depths


@never_cache
def health(request):
    """200 when the database, the broker, the vector store and the active model all answer; else 503 and why."""
    checks = health_checks()
    healthy = all(check.ok for check in checks)
    body = {"status": "ok" if healthy else "unhealthy", "checks": {c.name: asdict(c) for c in checks}}
    return JsonResponse(body, status=200 if healthy else 503)


@never_cache
@staff_member_required
def operations(request):
    """Queue depth and ingestion lag for operators, inside the admin."""
    context = {
        **admin.site.each_context(request),
        "title": "Operations: health, queues and ingestion lag",
        "checks": health_checks(),
        "queues": queue_depths(),
        "lag": ingestion_lag(),
    }
    return TemplateResponse(request, "ops/operations.html", context)
