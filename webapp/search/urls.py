from django.urls import path

from webapp.search import views

app_name = "search"
urlpatterns = [
    path("", views.visual_search, name="visual-search"),
]
