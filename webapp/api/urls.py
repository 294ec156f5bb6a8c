from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from webapp.api import docs, views

app_name = "api"
urlpatterns = [
    path("products/", views.ProductListCreateApi.as_view(), name="product-list"),
    path("products/<int:product_id>/", views.ProductDetailApi.as_view(), name="product-detail"),
    path("products/<int:product_id>/images/", views.ProductImageCreateApi.as_view(), name="product-images"),
    path("products/<int:product_id>/similar/", views.ProductSimilarApi.as_view(), name="product-similar"),
    path("search/", views.SearchByImageApi.as_view(), name="search"),
    path("detect/", views.DetectItemsApi.as_view(), name="detect"),
    path("feedback/not-similar/", views.NotSimilarApi.as_view(), name="feedback-not-similar"),
    path("feedback/click/", views.ResultClickApi.as_view(), name="feedback-click"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", docs.api_docs, name="docs"),
]
