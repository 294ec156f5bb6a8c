"""Input and output serializers of the public API.

Input serializers only parse and validate; the views hand the validated data to selectors and
services. Output serializers only shape rows for the wire (absolute URLs need the request in the
serializer context).
"""

from __future__ import annotations

import re

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from webapp.catalog.models import Category, Product, ProductImage
from webapp.search.models import ShopperEvent
from webapp.search.selectors import MAX_K
from webapp.search.vector_store import SearchFilters


def _absolute(context: dict, url: str) -> str:
    request = context.get("request")
    return request.build_absolute_uri(url) if request is not None else url


def _file_url(context: dict, field) -> str | None:
    return _absolute(context, field.url) if field else None


# Output ----------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="Category")
class CategoryOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    slug = serializers.SlugField(read_only=True)


@extend_schema_serializer(component_name="ProductImage")
class ProductImageOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField(help_text="Absolute URL of the original image.")
    thumbnail_url = serializers.SerializerMethodField(help_text="Absolute URL of the thumbnail; null until ingested.")
    status = serializers.ChoiceField(choices=ProductImage.Status.choices, read_only=True)

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, image: ProductImage) -> str:
        return _file_url(self.context, image.image)

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_thumbnail_url(self, image: ProductImage) -> str | None:
        return _file_url(self.context, image.thumbnail)


@extend_schema_serializer(component_name="Product")
class ProductOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    sku = serializers.CharField(read_only=True)
    title = serializers.CharField(read_only=True)
    brand = serializers.CharField(read_only=True)
    price = serializers.DecimalField(max_digits=12, decimal_places=2, read_only=True)
    currency = serializers.CharField(read_only=True)
    category = CategoryOutputSerializer(read_only=True)
    attributes = serializers.DictField(read_only=True)
    in_stock = serializers.BooleanField(read_only=True)
    url = serializers.SerializerMethodField(help_text="Absolute URL of the product page.")
    image = serializers.SerializerMethodField(
        help_text="Absolute URL of the primary image's thumbnail (the original until ingested); null without images."
    )
    images = ProductImageOutputSerializer(many=True, read_only=True)

    @extend_schema_field(OpenApiTypes.URI)
    def get_url(self, product: Product) -> str:
        return _absolute(self.context, product.get_absolute_url())

    @extend_schema_field({"type": "string", "format": "uri", "nullable": True})
    def get_image(self, product: Product) -> str | None:
        image = product.primary_image
        if image is None:
            return None
        return _file_url(self.context, image.thumbnail or image.image)


@extend_schema_serializer(component_name="RankedProduct")
class RankedProductOutputSerializer(serializers.Serializer):
    score = serializers.FloatField(read_only=True, help_text="Cosine similarity, higher is closer.")
    product = ProductOutputSerializer(read_only=True)


@extend_schema_serializer(component_name="RankedResults")
class RankedResultsOutputSerializer(serializers.Serializer):
    """The envelope of similar-products and search-by-photo results."""

    count = serializers.IntegerField(read_only=True)
    collection = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="The vector collection (one per embedding model version) that answered; null if none is active.",
    )
    results = RankedProductOutputSerializer(many=True, read_only=True)
    model_version = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="The model version that served these results: the active one, or a candidate under A/B test for a "
        "share of clients (sticky per client: session, signed-in user, `X-Client-Id` header or address).",
    )
    feedback_token = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="Give it back with `POST /api/feedback/not-similar/` or `/api/feedback/click/` to mark a result "
        "(signed; valid for a day). Null when there are no results.",
    )


@extend_schema_serializer(component_name="ImageSize")
class ImageSizeOutputSerializer(serializers.Serializer):
    width = serializers.IntegerField(read_only=True)
    height = serializers.IntegerField(read_only=True)


@extend_schema_serializer(component_name="ItemBox")
class ItemBoxOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField(read_only=True, help_text="Rank by score, 0 is the most confident item.")
    label = serializers.CharField(read_only=True, help_text="The detected class (a catalog category, or 'item').")
    score = serializers.FloatField(read_only=True, help_text="Detector confidence, 0-1.")
    box = serializers.ListField(
        child=serializers.IntegerField(),
        read_only=True,
        help_text="[x1, y1, x2, y2] in pixels of the upright photo (EXIF orientation applied), x2/y2 exclusive.",
    )


@extend_schema_serializer(component_name="PhotoQuery")
class PhotoQueryOutputSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["detected", "client", "whole_photo"],
        read_only=True,
        help_text="What was searched: the best detected item, the client's `box`, or the whole photo.",
    )
    index = serializers.IntegerField(read_only=True, allow_null=True, help_text="The detected box searched, if any.")
    label = serializers.CharField(read_only=True, allow_null=True)
    box = serializers.ListField(child=serializers.IntegerField(), read_only=True, allow_null=True)
    note = serializers.CharField(read_only=True, help_text="Why the whole photo was searched, when it was.")


@extend_schema_serializer(component_name="PhotoSearchResults")
class PhotoSearchOutputSerializer(RankedResultsOutputSerializer):
    """Every item found in the photo, what was searched, and the ranked products for it."""

    image = ImageSizeOutputSerializer(read_only=True)
    boxes = ItemBoxOutputSerializer(many=True, read_only=True)
    query = PhotoQueryOutputSerializer(read_only=True)


@extend_schema_serializer(component_name="Detections")
class DetectionsOutputSerializer(serializers.Serializer):
    image = ImageSizeOutputSerializer(read_only=True)
    boxes = ItemBoxOutputSerializer(many=True, read_only=True)


@extend_schema_serializer(component_name="NotSimilarMark")
class NotSimilarOutputSerializer(serializers.Serializer):
    created = serializers.BooleanField(
        read_only=True, help_text="false: this client had already marked this result for this query (nothing new)."
    )
    surface = serializers.ChoiceField(choices=ShopperEvent.Surface.choices, read_only=True)
    model_version = serializers.CharField(read_only=True, help_text="The version that served the marked result.")
    query_ref = serializers.CharField(
        read_only=True, help_text="shop:<sku> of the product page, or query:<id> of the stored search photo."
    )
    triplet = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The curation triplet sent for review (null for a repeat)."
    )
    message = serializers.CharField(read_only=True)


@extend_schema_serializer(component_name="ResultClick")
class ResultClickOutputSerializer(serializers.Serializer):
    surface = serializers.ChoiceField(choices=ShopperEvent.Surface.choices, read_only=True)
    model_version = serializers.CharField(read_only=True)


@extend_schema_serializer(component_name="Error")
class ErrorOutputSerializer(serializers.Serializer):
    detail = serializers.CharField(read_only=True)


# Input -----------------------------------------------------------------------------------------


class CategoryRefField(serializers.CharField):
    """A category given by id or slug; validates to the Category."""

    default_error_messages = {"does_not_exist": "No category with id or slug {value!r}."}

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "Category id or slug.")
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        category = None
        if re.fullmatch(r"[0-9]{1,18}", value):
            category = Category.objects.filter(pk=int(value)).first()
        if category is None:
            category = Category.objects.filter(slug=value).first()
        if category is None:
            self.fail("does_not_exist", value=value)
        return category


@extend_schema_field({"type": "number", "minimum": 0})
class PriceFilterField(serializers.DecimalField):
    """A non-negative price bound; a number on the wire, a Decimal once validated."""

    def __init__(self, **kwargs):
        super().__init__(max_digits=14, decimal_places=4, min_value=0, **kwargs)


def _optional_bool(help_text: str) -> serializers.BooleanField:
    # allow_null keeps an absent flag absent with QueryDict input (DRF would read it as False).
    return serializers.BooleanField(required=False, allow_null=True, default=None, help_text=help_text)


class VectorFilterInputSerializer(serializers.Serializer):
    category = CategoryRefField(required=False)
    max_price = PriceFilterField(required=False, help_text="Only products at or below this price.")
    in_stock = _optional_bool("true: only products in stock; false: only products out of stock.")

    def to_filters(self) -> SearchFilters:
        data = self.validated_data
        category, max_price = data.get("category"), data.get("max_price")
        return SearchFilters(
            category_id=category.pk if category is not None else None,
            max_price=float(max_price) if max_price is not None else None,
            in_stock=data.get("in_stock"),
        )


class ProductListFilterInputSerializer(VectorFilterInputSerializer):
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Words in the title or brand (case-insensitive)."
    )


class SimilarProductsInputSerializer(VectorFilterInputSerializer):
    k = serializers.IntegerField(min_value=1, max_value=MAX_K, default=12, help_text="How many products to return.")


class ImageUploadField(serializers.FileField):
    """Any uploaded file: the bytes are judged by the image validator, not by name or content type."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_empty_file", True)  # the image validator gives the clearer message
        kwargs.setdefault("use_url", False)
        super().__init__(**kwargs)


@extend_schema_field({"type": "string", "example": "40,32,180,210"})
class BoxField(serializers.CharField):
    """A box "x1,y1,x2,y2" in whole pixels of the upright photo; validates to a tuple of four ints."""

    default_error_messages = {"format": 'Give the box as four whole numbers "x1,y1,x2,y2" (pixels).'}

    def to_internal_value(self, data) -> tuple[int, int, int, int]:
        value = super().to_internal_value(data)
        parts = [part.strip() for part in value.split(",")]
        if len(parts) != 4 or not all(re.fullmatch(r"-?[0-9]{1,6}", part) for part in parts):
            self.fail("format")
        x1, y1, x2, y2 = (int(part) for part in parts)
        return x1, y1, x2, y2


@extend_schema_serializer(component_name="SearchByImage")
class SearchByImageInputSerializer(VectorFilterInputSerializer):
    image = ImageUploadField(help_text="The photo to search with (JPEG, PNG, WebP, GIF, BMP or TIFF).")
    k = serializers.IntegerField(min_value=1, max_value=MAX_K, default=24, help_text="How many products to return.")
    box = BoxField(
        required=False,
        help_text="Search this region instead of the best detected item: x1,y1,x2,y2 in pixels of the upright photo. "
        "Sending back a detected box searches that item (query.kind detected, with its label).",
    )
    whole_photo = serializers.BooleanField(
        required=False, default=False, help_text="true: search the whole photo instead of the best detected item."
    )

    def validate(self, attrs):
        if attrs.get("box") is not None and attrs.get("whole_photo"):
            raise serializers.ValidationError({"box": ["Give either a box or whole_photo=true, not both."]})
        return attrs


@extend_schema_serializer(component_name="DetectItems")
class DetectInputSerializer(serializers.Serializer):
    image = ImageUploadField(help_text="The photo whose items to find (JPEG, PNG, WebP, GIF, BMP or TIFF).")


@extend_schema_serializer(component_name="ProductImageUpload")
class ProductImageCreateInputSerializer(serializers.Serializer):
    image = ImageUploadField(help_text="The product photo (JPEG, PNG, WebP, GIF, BMP or TIFF).")


@extend_schema_serializer(component_name="ProductCreate")
class ProductCreateInputSerializer(serializers.Serializer):
    sku = serializers.CharField(max_length=120, help_text="The merchant's own product id; unique.")
    title = serializers.CharField(max_length=300)
    brand = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
    price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0)
    currency = serializers.CharField(
        max_length=3, min_length=3, required=False, default="USD", help_text="ISO 4217 code."
    )
    category = serializers.CharField(max_length=120, help_text="Category name; created when new.")
    attributes = serializers.DictField(required=False, default=dict)
    in_stock = serializers.BooleanField(required=False, default=True)

    def validate_sku(self, value: str) -> str:
        if Product.objects.filter(sku=value).exists():
            raise serializers.ValidationError("A product with this SKU already exists.")
        return value

    def validate_currency(self, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z]{3}", value):
            raise serializers.ValidationError("Use a three-letter ISO 4217 code.")
        return value.upper()


class FeedbackInputSerializer(serializers.Serializer):
    token = serializers.CharField(
        max_length=8000, trim_whitespace=True, help_text="`feedback_token` of the results the product was shown in."
    )
    product = serializers.IntegerField(min_value=1, help_text="Id of the result's product.")


@extend_schema_serializer(component_name="NotSimilar")
class NotSimilarInputSerializer(FeedbackInputSerializer):
    image = ImageUploadField(
        required=False,
        help_text="For results of a photo search only: the same photo again (it is kept for the reviewers only now, "
        "never when searching). Send the request as multipart/form-data then.",
    )


@extend_schema_serializer(component_name="Click")
class ResultClickInputSerializer(FeedbackInputSerializer):
    pass
