"""The public JSON API: one APIView per resource, one method per operation, kept thin.

Reads are public; writes need an authenticated user (REST_FRAMEWORK's IsAuthenticatedOrReadOnly),
except search by photo, which is a read that happens to need a request body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from webapp.api import serializers as s
from webapp.catalog.images import InvalidImage, read_upload
from webapp.catalog.models import Product
from webapp.catalog.selectors import product_list, product_queryset
from webapp.catalog.services import product_create, product_delete, product_image_create
from webapp.search import registry
from webapp.search.selectors import RankedProduct, search_by_image, similar_products
from webapp.search.vector_store import CollectionNotFound, VectorStoreUnavailable

logger = logging.getLogger(__name__)

BAD_IMAGE = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description='Not an acceptable image: {"detail": message}; or invalid input: {field: [messages]}.',
)
NOT_FOUND = OpenApiResponse(s.ErrorOutputSerializer, description="No such product.")
UNAVAILABLE = OpenApiResponse(s.ErrorOutputSerializer, description="The vector store is unavailable; retry later.")
NOT_AUTHENTICATED = OpenApiResponse(s.ErrorOutputSerializer, description="Authentication required.")
INVALID = OpenApiResponse(OpenApiTypes.OBJECT, description="Invalid input: {field: [messages]}.")


def _detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


def _ranked_response(request, query: Callable[[], list[RankedProduct]]) -> Response:
    """Run a vector query; 200 with ranked results, 400 for a bad image, 503 when the vector store is down."""
    try:
        ranked = query()
    except InvalidImage as exc:
        return _detail(str(exc), status.HTTP_400_BAD_REQUEST)
    except CollectionNotFound:
        return _results(request, [], collection=None)  # a fresh install: nothing is indexed yet
    except VectorStoreUnavailable as exc:
        logger.warning("vector query failed: %s", exc)
        return _detail(
            "Visual search is temporarily unavailable; please retry shortly.", status.HTTP_503_SERVICE_UNAVAILABLE
        )
    try:
        collection = registry.get_vector_store().active_collection()
    except VectorStoreUnavailable:
        collection = None
    return _results(request, ranked, collection=collection)


def _results(request, ranked: list[RankedProduct], collection: str | None) -> Response:
    data = {
        "count": len(ranked),
        "collection": collection,
        "results": [{"score": r.score, "product": r.product} for r in ranked],
    }
    return Response(s.RankedResultsOutputSerializer(data, context={"request": request}).data)


class ProductListCreateApi(APIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS
    parser_classes = [JSONParser]

    @extend_schema(
        operation_id="products_list",
        summary="List products",
        description="Products in id order, paginated, optionally filtered.",
        parameters=[s.ProductListFilterInputSerializer],
        responses={
            200: s.ProductOutputSerializer(many=True),
            400: INVALID,
            404: OpenApiResponse(s.ErrorOutputSerializer, description="No such page."),
        },
    )
    def get(self, request):
        filters = s.ProductListFilterInputSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        products = product_list(**filters.validated_data)
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
        product = product_create(category_name=data.pop("category"), **data)
        product = product_queryset().get(pk=product.pk)
        return Response(
            s.ProductOutputSerializer(product, context={"request": request}).data, status=status.HTTP_201_CREATED
        )


class ProductDetailApi(APIView):
    @extend_schema(
        operation_id="products_retrieve",
        summary="Get a product",
        responses={200: s.ProductOutputSerializer, 404: NOT_FOUND},
    )
    def get(self, request, product_id: int):
        product = get_object_or_404(product_queryset(), pk=product_id)
        return Response(s.ProductOutputSerializer(product, context={"request": request}).data)

    @extend_schema(
        operation_id="products_destroy",
        summary="Delete a product",
        description="Deletes the product, its images and (once the transaction commits) their vectors.",
        responses={204: None, 401: NOT_AUTHENTICATED, 403: NOT_AUTHENTICATED, 404: NOT_FOUND},
    )
    def delete(self, request, product_id: int):
        product_delete(product=get_object_or_404(Product, pk=product_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ProductImageCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="products_images_create",
        summary="Add an image to a product",
        description="Validates and stores the image, then queues it for ingestion (status `pending`). "
        "Returns 200 with the existing image when the same bytes are already on the product.",
        request={"multipart/form-data": s.ProductImageCreateInputSerializer},
        responses={
            201: s.ProductImageOutputSerializer,
            200: s.ProductImageOutputSerializer,
            400: BAD_IMAGE,
            401: NOT_AUTHENTICATED,
            403: NOT_AUTHENTICATED,
            404: NOT_FOUND,
        },
    )
    def post(self, request, product_id: int):
        product = get_object_or_404(Product, pk=product_id)
        serializer = s.ProductImageCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        existing = set(product.images.values_list("pk", flat=True))
        try:
            image = product_image_create(product=product, content=read_upload(serializer.validated_data["image"]))
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
            return search_by_image(content=read_upload(upload), k=k, filters=filters)

        return _ranked_response(request, query)
