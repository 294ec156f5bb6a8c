from django.apps import AppConfig


class RecommendationsConfig(AppConfig):
    name = "webapp.recommendations"
    label = "recommendations"
    verbose_name = "Precomputed recommendations"
