"""The public JSON API: one APIView per resource, one method per operation, kept thin.

Reads are public; writes need an authenticated user (REST_FRAMEWORK's IsAuthenticatedOrReadOnly),
except search by photo, which is a read that happens to need a request body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

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
from webapp.search.localization import LocalizationUnavailable
from webapp.search.selectors import InvalidBox, RankedProduct, detect_in_photo, search_by_photo, similar_products
from webapp.search.vector_store import CollectionNotFound, VectorStoreUnavailable

logger = logging.getLogger(__name__)

BAD_IMAGE = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description='Not an acceptable image: {"detail": message}; or invalid input: {field: [messages]}.',
)
NOT_FOUND = OpenApiResponse(s.ErrorOutputSerializer, description="No such product.")
LOCALIZATION_UNAVAILABLE = OpenApiResponse(
    s.ErrorOutputSerializer,
    description="The localization workers are down or slow (the reason is in `detail`), or the vector store is "
    "unavailable; retry later.",
)
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
        description="Upload a photo. Every item the detector finds in it comes back boxed; the most confident one "
        "(or the region given as `box`, or the whole photo with `whole_photo=true`) is cropped, embedded and "
        "searched, and its look-alikes come back best first. A clean product shot on a plain background is "
        "searched whole. Filters apply inside the vector query.",
        request={"multipart/form-data": s.SearchByImageInputSerializer},
        responses={200: s.PhotoSearchOutputSerializer, 400: BAD_IMAGE, 503: LOCALIZATION_UNAVAILABLE},
    )
    def post(self, request):
        params = s.SearchByImageInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        try:
            found = search_by_photo(
                content=read_upload(data["image"]),
                k=data["k"],
                filters=params.to_filters(),
                box=data.get("box"),
                whole_photo=data["whole_photo"],
            )
        except InvalidBox as exc:
            return Response({"box": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except (InvalidImage, LocalizationUnavailable, VectorStoreUnavailable) as exc:
            return _failure(exc)
        response = Response(s.PhotoSearchOutputSerializer(_photo_search_data(found), context={"request": request}).data)
        # Where the time went, per stage, for browsers' dev tools and the benchmark (RFC: Server-Timing).
        response["Server-Timing"] = ", ".join(f"{stage};dur={ms}" for stage, ms in found.timings_ms.items())
        return response


def _failure(exc: Exception) -> Response:
    if isinstance(exc, InvalidImage):
        return _detail(str(exc), status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, LocalizationUnavailable):
        logger.warning("localization unavailable: %s", exc)
        return _detail(
            f"Item detection is temporarily unavailable ({exc}); please retry shortly, or search the "
            "whole photo (whole_photo=true).",
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    logger.warning("vector query failed: %s", exc)
    return _detail(
        "Visual search is temporarily unavailable; please retry shortly.", status.HTTP_503_SERVICE_UNAVAILABLE
    )


def _photo_search_data(found) -> dict:
    try:
        collection = registry.get_vector_store().active_collection()
    except VectorStoreUnavailable:
        collection = None
    query = found.query
    return {
        "image": {"width": found.width, "height": found.height},
        "boxes": [asdict(item) for item in found.boxes],
        "query": {
            "kind": query.kind,
            "index": query.index,
            "label": query.label,
            "box": list(query.box) if query.box else None,
            "note": query.note,
        },
        "count": len(found.results),
        "collection": collection,
        "results": [{"score": r.score, "product": r.product} for r in found.results],
    }


class DetectItemsApi(APIView):
    permission_classes = [AllowAny]
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="detect_items",
        summary="Find the items in a photo",
        description="Upload a photo; get a box (class, score, pixel coordinates of the upright photo) for every item "
        "the detector finds, most confident first. Nothing is searched.",
        request={"multipart/form-data": s.DetectInputSerializer},
        responses={200: s.DetectionsOutputSerializer, 400: BAD_IMAGE, 503: LOCALIZATION_UNAVAILABLE},
    )
    def post(self, request):
        params = s.DetectInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            width, height, boxes = detect_in_photo(content=read_upload(params.validated_data["image"]))
        except (InvalidImage, LocalizationUnavailable) as exc:
            return _failure(exc)
        data = {"image": {"width": width, "height": height}, "boxes": [asdict(item) for item in boxes]}
        return Response(s.DetectionsOutputSerializer(data).data)
