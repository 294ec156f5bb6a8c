"""The public JSON API: one APIView per resource, one method per operation, kept thin.

Reads are public; writes need an authenticated user (REST_FRAMEWORK's IsAuthenticatedOrReadOnly),
except search by photo, which is a read that happens to need a request body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from pymilvus.exceptions import ErrorCode, MilvusException
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from webapp.api import serializers as s
from webapp.catalog.images import InvalidImage
from webapp.catalog.models import Category, Product
from webapp.catalog.services import category_get_or_create, product_image_create, product_upsert
from webapp.search.runtime import get_vector_store
from webapp.search.selectors import RankedProduct, search_by_image, similar_products
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)

BAD_IMAGE = OpenApiResponse(OpenApiTypes.OBJECT, description='Not an acceptable image: {"detail": message}; '
                                                          "or invalid input: {field: [messages]}.")
NOT_FOUND = OpenApiResponse(s.ErrorOutputSerializer, description="No such product.")
UNAVAILABLE = OpenApiResponse(s.ErrorOutputSerializer, description="The vector store is unavailable; retry later.")
NOT_AUTHENTICATED = OpenApiResponse(s.ErrorOutputSerializer, description="Authentication required.")
INVALID = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: {field: [messages]}.")


def _product_queryset() -> QuerySet[Product]:
    return Product.objects.select_related("category").prefetch_related("images")


def _product_list(*, category: Category | None = None, max_price=None, in_stock: bool | None = None,
                  q: str = "") -> QuerySet[Product]:
    products = _product_queryset()
    if category is not None:
        products = products.filter(category=category)
    if max_price is not None:
        products = products.filter(price__lte=max_price)
    if in_stock is not None:
        products = products.filter(in_stock=in_stock)
    if q := q.strip():
        products = products.filter(Q(title__icontains=q) | Q(brand__icontains=q))
    return products.order_by("id")


def _read_upload(upload) -> bytes:
    """The bytes of an uploaded file, refusing an oversized one before reading it into memory."""
    limit = settings.IMAGE_MAX_BYTES
    if (upload.size or 0) > limit:
        raise InvalidImage(f"The file is {upload.size / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB.")
    upload.seek(0)
    return upload.read()


def _detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


def _ranked_response(request, query: Callable[[], list[RankedProduct]]) -> Response:
    """Run a vector query; 200 with ranked results, 400 for a bad image, 503 when Milvus is down."""
    store = get_vector_store()
    try:
        ranked = query()
    except InvalidImage as exc:
        return _detail(str(exc), status.HTTP_400_BAD_REQUEST)
    except VectorStoreUnavailable as exc:
        if not _nothing_indexed(exc):
            logger.warning("vector query failed: %s", exc)
            return _detail("Visual search is temporarily unavailable; please retry shortly.",
                           status.HTTP_503_SERVICE_UNAVAILABLE)
        # A fresh install: nothing has been ingested yet, so nothing is similar.
        return _results(request, [], collection=None)
    return _results(request, ranked, collection=store.active_collection())


def _results(request, ranked: list[RankedProduct], collection: str | None) -> Response:
    data = {"count": len(ranked), "collection": collection,
            "results": [{"score": r.score, "product": r.product} for r in ranked]}
    return Response(s.RankedResultsOutputSerializer(data, context={"request": request}).data)


def _nothing_indexed(exc: VectorStoreUnavailable) -> bool:
    """True when Milvus answered that the active alias does not exist yet (as opposed to an outage)."""
    cause = exc.__cause__
    return isinstance(cause, MilvusException) and cause.code == ErrorCode.COLLECTION_NOT_FOUND


class ProductListCreateApi(APIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="products_list",
        summary="List products",
        description="Products in id order, paginated, optionally filtered.",
        parameters=[s.ProductListFilterInputSerializer],
        responses={200: s.ProductOutputSerializer(many=True), 400: INVALID,
                   404: OpenApiResponse(s.ErrorOutputSerializer, description="No such page.")},
    )
    def get(self, request):
        filters = s.ProductListFilterInputSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        products = _product_list(**filters.validated_data)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(products, request, view=self)
        data = s.ProductOutputSerializer(page, many=True, context={"request": request}).data
        return paginator.get_paginated_response(data)

    @extend_schema(
        operation_id="products_create",
        summary="Create a product",
        description="Creates a product (and its category, by name, when new). Add images with "
                    "`POST /api/products/{id}/images/`.",
        request=s.ProductCreateInputSerializer,
        responses={201: s.ProductOutputSerializer, 400: INVALID, 401: NOT_AUTHENTICATED, 403: NOT_AUTHENTICATED},
    )
    def post(self, request):
        serializer = s.ProductCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        with transaction.atomic():
            category = category_get_or_create(name=data.pop("category"))
            product, _ = product_upsert(category=category, **data)
        product = _product_queryset().get(pk=product.pk)
        return Response(s.ProductOutputSerializer(product, context={"request": request}).data,
                        status=status.HTTP_201_CREATED)


class ProductDetailApi(APIView):
    @extend_schema(
        operation_id="products_retrieve",
        summary="Get a product",
        responses={200: s.ProductOutputSerializer, 404: NOT_FOUND},
    )
    def get(self, request, product_id: int):
        product = get_object_or_404(_product_queryset(), pk=product_id)
        return Response(s.ProductOutputSerializer(product, context={"request": request}).data)

    @extend_schema(
        operation_id="products_destroy",
        summary="Delete a product",
        description="Deletes the product, its images and (once the transaction commits) their vectors.",
        responses={204: None, 401: NOT_AUTHENTICATED, 403: NOT_AUTHENTICATED, 404: NOT_FOUND},
    )
    def delete(self, request, product_id: int):
        product = get_object_or_404(Product, pk=product_id)
        with transaction.atomic():
            product.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProductImageCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="products_images_create",
        summary="Add an image to a product",
        description="Validates and stores the image, then queues it for ingestion (status `pending`). "
                    "Returns 200 with the existing image when the same bytes are already on the product.",
        request={"multipart/form-data": s.ProductImageCreateInputSerializer},
        responses={201: s.ProductImageOutputSerializer, 200: s.ProductImageOutputSerializer, 400: BAD_IMAGE,
                   401: NOT_AUTHENTICATED, 403: NOT_AUTHENTICATED, 404: NOT_FOUND},
    )
    def post(self, request, product_id: int):
        product = get_object_or_404(Product, pk=product_id)
        serializer = s.ProductImageCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        existing = set(product.images.values_list("pk", flat=True))
        try:
            image = product_image_create(product=product, content=_read_upload(serializer.validated_data["image"]))
        except InvalidImage as exc:
            return _detail(str(exc), status.HTTP_400_BAD_REQUEST)
        code = status.HTTP_200_OK if image.pk in existing else status.HTTP_201_CREATED
        return Response(s.ProductImageOutputSerializer(image, context={"request": request}).data, status=code)


class ProductSimilarApi(APIView):
    @extend_schema(
        operation_id="products_similar",
        summary="Visually similar products",
        description="Products whose images look most like this product's, best first; the product itself is "
                    "excluded. Empty until the product's images are ingested.",
        parameters=[s.SimilarProductsInputSerializer],
        responses={200: s.RankedResultsOutputSerializer, 400: INVALID, 404: NOT_FOUND, 503: UNAVAILABLE},
    )
    def get(self, request, product_id: int):
        product = get_object_or_404(Product, pk=product_id)
        params = s.SimilarProductsInputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        k, filters = params.validated_data["k"], params.to_filters()
        return _ranked_response(request, lambda: similar_products(product=product, k=k, filters=filters))


class SearchByImageApi(APIView):
    permission_classes = [AllowAny]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="search_by_image",
        summary="Search by photo",
        description="Upload a photo; get the catalog products that look most like it, best first.",
        request={"multipart/form-data": s.SearchByImageInputSerializer},
        responses={200: s.RankedResultsOutputSerializer, 400: BAD_IMAGE, 503: UNAVAILABLE},
    )
    def post(self, request):
        params = s.SearchByImageInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        k, filters, upload = params.validated_data["k"], params.to_filters(), params.validated_data["image"]

        def query():
            return search_by_image(content=_read_upload(upload), k=k, filters=filters)

        return _ranked_response(request, query)


# Documentation ---------------------------------------------------------------------------------

METHODS = ("get", "post", "put", "patch", "delete")


@require_GET
def api_docs(request):
    """A self-contained, readable reference built from the OpenAPI schema (no CDN, no JavaScript)."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    info = schema.get("info", {})
    operations = [
        _operation_html(path, method, item[method])
        for path, item in schema.get("paths", {}).items()
        for method in METHODS
        if method in item
    ]
    components = sorted(schema.get("components", {}).get("schemas", {}).items())
    html = format_html(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} reference</title><style>{css}</style></head><body>"
        "<h1>{title} <small>{version}</small></h1><p>{description}</p>"
        '<p>Machine-readable schema: <a href="{schema_url}">{schema_url}</a> (OpenAPI 3, YAML; add '
        "<code>?format=json</code> for JSON). Reads are public; writes need an authenticated user "
        "(session or HTTP Basic). Errors are JSON: <code>{{\"detail\": message}}</code>, or "
        "<code>{{field: [messages]}}</code> for invalid input.</p>"
        "<h2>Endpoints</h2>{operations}<h2>Schemas</h2>{components}</body></html>",
        title=info.get("title", "API"), version=info.get("version", ""), description=info.get("description", ""),
        css=mark_safe(DOCS_CSS), schema_url=request.build_absolute_uri(reverse("api:schema")),
        operations=_join(operations), components=_join(_component_html(n, c) for n, c in components),
    )
    return HttpResponse(html)


def _join(parts) -> SafeString:
    return format_html_join("", "{}", ((part,) for part in parts))


def _type_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _type_name(schema["allOf"][0])
    if schema.get("type") == "array":
        return f"array of {_type_name(schema.get('items', {}))}"
    kind = schema.get("type", "any")
    if schema.get("format"):
        kind += f" ({schema['format']})"
    if schema.get("enum"):
        kind += " — one of " + ", ".join(str(v) for v in schema["enum"] if v is not None)
    if schema.get("nullable"):
        kind += ", nullable"
    for key in ("minimum", "maximum", "default"):
        if key in schema:
            kind += f"; {key} {json.dumps(schema[key])}"
    return kind


def _ref_of(schema: dict) -> str | None:
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _ref_of(schema["allOf"][0])
    return schema.get("$ref")


def _type_html(schema: dict) -> SafeString:
    """The type, linked to its schema section when it is (an array of) a named component."""
    name = _type_name(schema)
    ref = _ref_of(schema) or _ref_of(schema.get("items", {}))
    if ref:
        target = ref.rsplit("/", 1)[-1]
        return format_html('{}<a href="#schema-{}">{}</a>', name.removesuffix(target), target, target)
    return escape(name)


def _operation_html(path: str, method: str, operation: dict) -> SafeString:
    parameters = operation.get("parameters", [])
    params_html = format_html(
        "<table><tr><th>Parameter</th><th>In</th><th>Required</th><th>Type</th><th>Description</th></tr>{}</table>",
        format_html_join("", "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (p["name"], p["in"], "yes" if p.get("required") else "no", _type_html(p.get("schema", {})),
             p.get("description", ""))
            for p in parameters
        )),
    ) if parameters else ""
    content = operation.get("requestBody", {}).get("content", {})
    body_html = format_html(
        "<p><b>Request body</b>: {}</p>",
        format_html_join("; ", "<code>{}</code> {}", ((media, _type_html(spec.get("schema", {})))
                                                       for media, spec in content.items())),
    ) if content else ""
    responses = format_html_join("", "<li><b>{}</b> {} {}</li>", (
        (code, _type_html(next(iter(response["content"].values())).get("schema", {}))
         if response.get("content") else "", response.get("description", ""))
        for code, response in operation.get("responses", {}).items()
    ))
    anchor = f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", "")
    return format_html(
        '<section class="op" id="{}"><h3><span class="method {}">{}</span> <code>{}</code> {}</h3><p>{}</p>'
        "{}{}<p><b>Responses</b></p><ul>{}</ul></section>",
        anchor, method, method.upper(), path, operation.get("summary", ""), operation.get("description", ""),
        params_html, body_html, responses,
    )


def _component_html(name: str, component: dict) -> SafeString:
    properties = component.get("properties", {})
    required = set(component.get("required", []))
    if not properties:
        return format_html('<section id="schema-{}"><h3>{}</h3><p>{}</p></section>', name, name,
                           _type_html(component))
    rows = format_html_join("", "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>", (
        (prop, "yes" if prop in required else "no", _type_html(spec), spec.get("description", ""))
        for prop, spec in properties.items()
    ))
    return format_html(
        '<section id="schema-{}"><h3>{}</h3><table><tr><th>Field</th><th>Required</th><th>Type</th>'
        "<th>Description</th></tr>{}</table></section>",
        name, name, rows,
    )


DOCS_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 960px; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 small { color: #777; font-size: 60%; } h2 { border-bottom: 1px solid #ddd; margin-top: 2.5rem; }
section.op { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0 1rem; margin: 1rem 0; }
.method { display: inline-block; min-width: 4.5em; padding: 0 .4em; border-radius: 4px; color: #fff;
          font-size: 80%; text-align: center; }
.get { background: #2f7d32; } .post { background: #1565c0; } .delete { background: #c62828; }
.put, .patch { background: #ef6c00; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0; font-size: 90%; }
th, td { border: 1px solid #e3e3e3; padding: .25rem .5rem; text-align: left; vertical-align: top; }
code { background: #f5f5f5; padding: 0 .2em; border-radius: 3px; }
"""
