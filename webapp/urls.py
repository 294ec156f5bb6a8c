from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve


def serve_media(request, path):
    return serve(request, path, document_root=settings.MEDIA_ROOT)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("webapp.api.urls")),
    path("search/", include("webapp.search.urls")),
    path("", include("webapp.catalog.urls")),
    # Uploaded and thumbnail images; production puts a CDN or the web server in front.
    re_path(r"^media/(?P<path>.*)$", serve_media),
]
