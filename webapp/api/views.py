"""The public JSON API: one APIView per resource, one method per operation, kept thin.

Reads are public; writes need a staff user with the model permission (webapp/api/permissions.py),
except search by photo, which is a read that happens to need a request body, and shopper feedback ("not
similar" marks and result clicks, rate-limited per client).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from webapp.api import serializers as s
from webapp.api.throttling import FeedbackRateThrottle
from webapp.catalog.images import InvalidImage, read_upload
from webapp.catalog.models import Product
from webapp.catalog.selectors import product_list, product_queryset
from webapp.catalog.services import product_create, product_delete, product_image_create
from webapp.limits import ScopedCacheThrottle
from webapp.recommendations.serving import (
    ab_test_running,
    similar_body_build,
    similar_cache_control,
    similar_cached,
    similar_served,
    similar_variant,
)
from webapp.search import registry
from webapp.search.experiments import client_key_for, serving_version_for
from webapp.search.feedback import (
    THANKS,
    InvalidFeedback,
    click_query_ref,
    not_similar_mark,
    photo_checksum,
    result_click_record,
    results_served,
    results_token_read,
    searched_photo,
)
from webapp.search.localization import LocalizationUnavailable
from webapp.search.models import ModelVersion, ShopperEvent
from webapp.search.selectors import InvalidBox, RankedProduct, detect_in_photo, search_by_photo
from webapp.search.vector_store import VectorStoreUnavailable

logger = logging.getLogger(__name__)
Surface = ShopperEvent.Surface

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


def _collection(version: ModelVersion | None) -> str | None:
    return registry.get_vector_store().collection_name(version.model_version) if version is not None else None


def _feedback_fields(version: ModelVersion | None, ranked: list[RankedProduct], surface: str, **token) -> dict:
    """Which version served a result list and its feedback token (counting the list served, for the A/B rates)."""
    return {
        "model_version": version.model_version if version is not None else None,
        "feedback_token": results_served(
            version=version, surface=surface, product_ids=[r.product.pk for r in ranked], **token
        ),
    }


class ProductListCreateApi(APIView):
    write_permissions = {"POST": "catalog.add_product"}
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
    write_permissions = {"DELETE": "catalog.delete_product"}

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
    write_permissions = {"POST": "catalog.add_productimage"}
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [ScopedCacheThrottle]
    throttle_scope = "upload"

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


NO_PRODUCT = f"No {Product._meta.object_name} matches the given query."  # as get_object_or_404 says


class ProductSimilarApi(APIView):
    @extend_schema(
        operation_id="products_similar",
        summary="Visually similar products",
        description="Products whose images look most like this product's, best first; the product itself is "
        "excluded. Empty until the product's images are ingested. `model_version` says which model answered "
        "(a candidate version under A/B test serves a sticky share of clients); `feedback_token` lets the client "
        'mark a result "not similar" or record a click.',
        parameters=[s.SimilarProductsInputSerializer],
        responses={200: s.RankedResultsOutputSerializer, 400: INVALID, 404: NOT_FOUND, 503: UNAVAILABLE},
    )
    def get(self, request, product_id: int):
        # A cached body (webapp/recommendations/serving.py) was stored only after the product was found and these
        # parameters validated, so a hit answers what the full path below would.
        version = serving_version_for(client_key=client_key_for(request))
        variant = similar_variant(params=request.query_params, scheme_host=f"{request.scheme}://{request.get_host()}")
        found = similar_cached(version=version, product_id=product_id, variant=variant, environ=request.META)
        if found is not None:
            similar_served(version=version, found=found)
        else:
            params = s.SimilarProductsInputSerializer(data=request.query_params)
            if not params.is_valid():
                get_object_or_404(Product.objects.only("pk"), pk=product_id)  # an unknown product answers 404 first
                params.is_valid(raise_exception=True)
            try:
                found = similar_body_build(
                    product_id=product_id,
                    k=params.validated_data["k"],
                    filters=params.to_filters(),
                    version=version,
                    absolute=request.build_absolute_uri,
                    variant=variant,
                    environ=request.META,
                )
            except Product.DoesNotExist as exc:
                raise Http404(NO_PRODUCT) from exc
            except VectorStoreUnavailable as exc:
                return _failure(exc)
        headers = {"Cache-Control": similar_cache_control(private=ab_test_running())}
        renderer, media_type = request.accepted_renderer, request.accepted_media_type or ""
        if not isinstance(renderer, JSONRenderer) or renderer.get_indent(media_type, {}) is not None:
            return Response(json.loads(found.body), headers=headers)  # the browsable API, or indented JSON
        headers.update({"ETag": found.etag, "Last-Modified": http_date(found.last_modified)})
        response = HttpResponse(found.body, content_type="application/json", headers=headers)
        return get_conditional_response(request, etag=found.etag, last_modified=found.last_modified, response=response)


class SearchByImageApi(APIView):
    permission_classes = [AllowAny]
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [ScopedCacheThrottle]
    throttle_scope = "search"  # the search page's POSTs count against the same budget

    @extend_schema(
        operation_id="search_by_image",
        summary="Search by photo",
        description="Upload a photo. Every item the detector finds in it comes back boxed; the most confident one "
        "(or the region given as `box`, or the whole photo with `whole_photo=true`) is cropped, embedded and "
        "searched, and its look-alikes come back best first. A clean product shot on a plain background is "
        "searched whole. Filters apply inside the vector query. `model_version` says which model answered; "
        '`feedback_token` lets the client mark a result "not similar" (sending the same photo again) or record '
        "a click. The photo is not stored.",
        request={"multipart/form-data": s.SearchByImageInputSerializer},
        responses={200: s.PhotoSearchOutputSerializer, 400: BAD_IMAGE, 503: LOCALIZATION_UNAVAILABLE},
    )
    def post(self, request):
        params = s.SearchByImageInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        version = serving_version_for(client_key=client_key_for(request))
        try:
            content = read_upload(data["image"])
            found = search_by_photo(
                content=content,
                k=data["k"],
                filters=params.to_filters(),
                box=data.get("box"),
                whole_photo=data["whole_photo"],
                version=version,
            )
        except InvalidBox as exc:
            return Response({"box": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except (InvalidImage, LocalizationUnavailable, VectorStoreUnavailable) as exc:
            return _failure(exc)
        body = _photo_search_data(found, version)
        body.update(
            _feedback_fields(
                version,
                found.results,
                Surface.SEARCH,
                photo=photo_checksum(content),
                box=found.query.box,
                label=found.query.label,
            )
        )
        response = Response(s.PhotoSearchOutputSerializer(body, context={"request": request}).data)
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


def _photo_search_data(found, version: ModelVersion | None) -> dict:
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
        "collection": _collection(version) if found.results else None,
        "results": [{"score": r.score, "product": r.product} for r in found.results],
    }


class DetectItemsApi(APIView):
    permission_classes = [AllowAny]
    throttle_classes = [ScopedCacheThrottle]
    throttle_scope = "search"  # detection costs what a search costs
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


# Shopper feedback ------------------------------------------------------------------------------------------
FEEDBACK_INVALID = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description="Invalid feedback: {field: [messages]} — a bad or expired token, an unknown product, a product "
    "that was not among the results, a missing or different photo.",
)
THROTTLED = OpenApiResponse(s.ErrorOutputSerializer, description="Too many requests from this client; retry later.")


class _FeedbackApi(APIView):
    permission_classes = [AllowAny]  # anonymous shoppers give feedback; a signed-in one sends the CSRF token
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    throttle_classes = [FeedbackRateThrottle]

    @staticmethod
    def _invalid(exc: InvalidFeedback) -> Response:
        return Response({exc.field: [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)


class NotSimilarApi(_FeedbackApi):
    throttle_scope = "feedback"

    @extend_schema(
        operation_id="feedback_not_similar",
        summary='Mark a result "not similar"',
        description="Tells the curators that a shown product does not look like the query (the product page's "
        "product, or the searched photo: send that photo again as `image`, multipart). It is recorded once per "
        "client, query and product and becomes a pending training triplet for review (anchor: the query, "
        "positive: the best-ranked result this client did not mark, negative: this product); the model never "
        "changes directly. 201 when recorded, 200 with `created: false` for a repeat. Rate-limited per client.",
        request={"application/json": s.FeedbackInputSerializer, "multipart/form-data": s.NotSimilarInputSerializer},
        responses={
            201: s.NotSimilarOutputSerializer,
            200: s.NotSimilarOutputSerializer,
            400: FEEDBACK_INVALID,
            429: THROTTLED,
        },
    )
    def post(self, request):
        params = s.NotSimilarInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        try:
            shown = results_token_read(data["token"])
            photo = searched_photo(shown, read_upload(data["image"]) if data.get("image") else None)
            outcome = not_similar_mark(
                client_key=client_key_for(request),
                surface=shown.surface,
                model_version=shown.model_version,
                product_id=data["product"],
                shown=shown.product_ids,
                query_ref=shown.query_ref,
                photo=photo,
                box=shown.box,
                label=shown.label,
            )
        except InvalidImage as exc:
            return Response({"image": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except InvalidFeedback as exc:
            return self._invalid(exc)
        body = {
            "created": outcome.created,
            "surface": outcome.event.surface,
            "model_version": outcome.event.model_version,
            "query_ref": outcome.event.query_ref,
            "triplet": outcome.triplet.pk if outcome.triplet is not None else None,
            "message": THANKS if outcome.created else "Already sent for review — thanks.",
        }
        code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
        return Response(s.NotSimilarOutputSerializer(body).data, status=code)


class ResultClickApi(_FeedbackApi):
    throttle_scope = "feedback-click"

    @extend_schema(
        operation_id="feedback_click",
        summary="Record a click on a result",
        description="Counts a click on a shown result for the model version that served it (the A/B comparison's "
        "click-through rate). Pages send it with `navigator.sendBeacon` as the shopper follows the link. "
        "Rate-limited per client.",
        request={"application/json": s.ResultClickInputSerializer, "multipart/form-data": s.ResultClickInputSerializer},
        responses={201: s.ResultClickOutputSerializer, 400: FEEDBACK_INVALID, 429: THROTTLED},
    )
    def post(self, request):
        params = s.ResultClickInputSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        try:
            shown = results_token_read(data["token"])
            event = result_click_record(
                client_key=client_key_for(request),
                surface=shown.surface,
                model_version=shown.model_version,
                product_id=data["product"],
                shown=shown.product_ids,
                query_ref=click_query_ref(shown),
            )
        except InvalidFeedback as exc:
            return self._invalid(exc)
        body = {"surface": event.surface, "model_version": event.model_version}
        return Response(s.ResultClickOutputSerializer(body).data, status=status.HTTP_201_CREATED)
