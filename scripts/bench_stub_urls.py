"""Benchmark-only stand-in for GET /api/products/{id}/similar/ and POST /api/search/.

The real endpoints live in webapp/api; this stub mirrors their response shape
({"results": [{"score", "product"}], "count"}) by calling the same selectors, so
`scripts/bench.py --stub-api` can run before they exist. The product never imports it.
"""

from django.http import Http404, HttpResponseBadRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


def _product(product):
    image = product.primary_image
    return {
        "id": product.pk, "sku": product.sku, "title": product.title, "brand": product.brand,
        "price": str(product.price), "currency": product.currency, "in_stock": product.in_stock,
        "category": product.category.name,
        "thumbnail": (image.thumbnail.url if image is not None and image.thumbnail else None),
    }


def _payload(ranked):
    return {"results": [{"score": r.score, "product": _product(r.product)} for r in ranked], "count": len(ranked)}


def similar(request, pk):
    from webapp.catalog.models import Product
    from webapp.search.selectors import similar_products

    product = Product.objects.filter(pk=pk).first()
    if product is None:
        raise Http404
    return JsonResponse(_payload(similar_products(product=product, k=int(request.GET.get("k", 12)))))


@csrf_exempt
def search(request):
    from webapp.catalog.images import InvalidImage
    from webapp.search.selectors import search_by_image

    upload = request.FILES.get("image")
    if request.method != "POST" or upload is None:
        return HttpResponseBadRequest("POST an image")
    try:
        ranked = search_by_image(content=upload.read(), k=int(request.GET.get("k", 24)))
    except InvalidImage as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    return JsonResponse(_payload(ranked))


urlpatterns = [
    path("api/products/<int:pk>/similar/", similar),
    path("api/search/", search),
    path("", include("webapp.urls")),
]
