from django.urls import path

from webapp.catalog import views

app_name = "catalog"
urlpatterns = [
    path("", views.product_list, name="product-list"),
    path("products/<int:pk>/", views.product_detail, name="product-detail"),
]
