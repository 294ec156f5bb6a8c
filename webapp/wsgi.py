import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_application = get_wsgi_application()

# Imported once Django is set up (it reads models and settings): cached similar-products GETs are answered before
# Django's middleware and DRF run; everything else, and every miss, goes to Django (conditions in its docstring).
from webapp.recommendations.fastpath import SimilarFastPath  # noqa: E402

application = SimilarFastPath(django_application)
