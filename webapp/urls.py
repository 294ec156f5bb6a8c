from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve

from webapp.ops import views as ops_views


def serve_media(request, path):
    return serve(request, path, document_root=settings.MEDIA_ROOT)


urlpatterns = [
    path("health/", ops_views.health, name="health"),
    path("admin/operations/", ops_views.operations, name="ops-operations"),
    path("admin/", admin.site.urls),
    path("api/", include("webapp.api.urls")),
    path("search/", include("webapp.search.urls")),
    path("curation/", include("webapp.curation.urls")),
    path("", include("webapp.catalog.urls")),
    # Uploaded and thumbnail images; production puts a CDN or the web server in front.
    re_path(r"^media/(?P<path>.*)$", serve_media),
]
