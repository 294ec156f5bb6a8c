from django.urls import path, re_path

from webapp.curation import views

app_name = "curation"
urlpatterns = [
    path("review/", views.review, name="review"),
    path("review/triplets/", views.review_batch, name="review-batch"),
    path("review/triplets/<int:pk>/decision/", views.review_decide, name="review-decide"),
    path("review/decisions/<int:pk>/undo/", views.review_undo, name="review-undo"),
    re_path(r"^refs/(?P<ref>.+)\.png$", views.ref_image, name="ref-image"),
]
