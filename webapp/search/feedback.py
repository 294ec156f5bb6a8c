"""Shopper feedback: "not similar" marks become curation triplets for review, result clicks are counted.

Nothing here changes a model: a mark adds a pending Triplet (kind feedback) that merchandisers approve or reject
in the admin before any retraining sees it, and a ShopperEvent that the A/B comparison counts.

Every result list (a product page's similar row, a photo search) comes with a feedback token: the signed list of
what was shown (surface, serving version, ranked product ids, and for a product page its `shop:<sku>`, for a
photo search the photo's SHA-256 and the searched box). Feedback names the token and a product, so the server
trusts neither the version nor the results a client claims, and needs to keep nothing per search.

Shopper photos are not stored when they are searched. When a shopper marks a photo search's result, the client
sends the same photo again with the mark; it must hash to the token's checksum, and only then is it kept as a
QueryPhoto (upright, EXIF and other metadata dropped, at most QUERY_PHOTO_MAX_SIDE px, the searched box scaled to
it), which the triplet's anchor `query:<id>` names. The same photo searched at another box is another row: the box
is written into the stored JPEG's comment, so the bytes and their checksum differ.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from PIL import Image

from webapp.catalog.images import InvalidImage, open_normalised, validate_image_bytes
from webapp.catalog.models import Category, Product
from webapp.curation.models import QueryPhoto, Triplet
from webapp.search.experiments import served_record
from webapp.search.models import ModelVersion, ShopperEvent

logger = logging.getLogger(__name__)

Surface = ShopperEvent.Surface
TOKEN_SALT = "webapp.search.feedback-token"
FEEDBACK_SOURCE = "shopper-not-similar"
QUERY_PHOTO_MAX_SIDE = 1024
THANKS = "Thanks — sent for review"


class InvalidFeedback(ValueError):
    """Feedback that cannot be recorded; `field` names the input at fault and the message is safe to show."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class ShownResults:
    """What a feedback token says was shown."""

    surface: str
    model_version: str
    product_ids: tuple[int, ...]
    query_ref: str | None = None  # shop:<sku> of a product page
    photo_checksum: str | None = None  # SHA-256 of a searched photo's bytes
    box: tuple[int, int, int, int] | None = None  # the searched box, pixels of the upright photo; None: whole photo
    label: str | None = None  # the detected class of the searched item


@dataclass(frozen=True)
class NotSimilarOutcome:
    event: ShopperEvent
    created: bool
    triplet: Triplet | None  # None for a repeat, or when every other result is marked too (no positive left)


def photo_checksum(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# Tokens -----------------------------------------------------------------------------------------------
def results_token_issue(
    *,
    surface: str,
    model_version: str,
    product_ids: list[int],
    query_ref: str | None = None,
    photo: str | None = None,
    box: tuple[int, int, int, int] | None = None,
    label: str | None = None,
) -> str:
    """The signed feedback token of a result list (photo: the photo's checksum)."""
    payload = {"s": surface, "v": model_version, "r": [int(pid) for pid in product_ids]}
    if query_ref:
        payload["q"] = query_ref
    if photo:
        payload["p"] = photo
    if box:
        payload["b"] = [int(x) for x in box]
    if label:
        payload["l"] = label
    return signing.dumps(payload, salt=TOKEN_SALT, compress=True)


def results_served(*, version: ModelVersion | None, surface: str, product_ids: list[int], **token_fields) -> str | None:
    """Count a result list as served by `version` (the A/B rates' denominator) and return its feedback token;
    None when there is nothing to give feedback on (no version, no results)."""
    if version is None or not product_ids:
        return None
    served_record(version=version, surface=surface)
    return results_token_issue(
        surface=surface, model_version=version.model_version, product_ids=product_ids, **token_fields
    )


def results_token_read(token: str) -> ShownResults:
    """The results a token describes; InvalidFeedback("token", ...) when it is forged, damaged or too old."""
    max_age = settings.FEEDBACK_TOKEN_MAX_AGE_SECONDS
    try:
        payload = signing.loads(token, salt=TOKEN_SALT, max_age=max_age)
    except signing.SignatureExpired as exc:
        raise InvalidFeedback(
            "token",
            f"These results are more than {max_age // 3600 or 1} hour(s) old; search again to give feedback on them.",
        ) from exc
    except signing.BadSignature as exc:
        raise InvalidFeedback("token", "This feedback token is not valid (damaged or not issued here).") from exc
    try:
        surface = payload["s"]
        if surface not in Surface.values:
            raise ValueError(surface)
        box = payload.get("b")
        return ShownResults(
            surface=surface,
            model_version=str(payload["v"]),
            product_ids=tuple(int(pid) for pid in payload["r"]),
            query_ref=payload.get("q"),
            photo_checksum=payload.get("p"),
            box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])) if box else None,
            label=payload.get("l"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # signed by us, so only an old format lands here
        raise InvalidFeedback("token", "This feedback token is not valid (damaged or not issued here).") from exc


def searched_photo(shown: ShownResults, content: bytes | None) -> bytes | None:
    """The photo sent with feedback on a photo search, checked against the token (None for other surfaces)."""
    if shown.surface != Surface.SEARCH:
        return None
    if not content:
        raise InvalidFeedback("image", "These results came from a photo search: send the same photo as `image`.")
    if photo_checksum(content) != shown.photo_checksum:
        raise InvalidFeedback("image", "This is not the photo these results were searched with.")
    return content


# Marks and clicks ------------------------------------------------------------------------------------
def _shown_product(product_id: int, shown: tuple[int, ...]) -> Product:
    product = Product.objects.select_related("category").filter(pk=product_id).first()
    if product is None:
        raise InvalidFeedback("product", f"No product with id {product_id}.")
    if product_id not in shown:
        raise InvalidFeedback("product", f"Product {product_id} was not among these results.")
    return product


def not_similar_mark(
    *,
    client_key: str,
    surface: str,
    model_version: str,
    product_id: int,
    shown: tuple[int, ...] | list[int],
    query_ref: str | None = None,
    photo: bytes | None = None,
    box: tuple[int, int, int, int] | None = None,
    label: str | None = None,
) -> NotSimilarOutcome:
    """Record that a shopper found `product_id` not similar to the query (a product page's `shop:<sku>`, or a
    searched photo and box): one ShopperEvent per client, query and product, and a pending feedback Triplet
    (anchor: the query, positive: the best-ranked other result this shopper has not marked, negative: the marked
    product) for a reviewer to judge. Raises InvalidFeedback (unknown product, not shown, bad photo)."""
    shown = tuple(int(pid) for pid in shown)
    product = _shown_product(product_id, shown)
    if surface == Surface.SEARCH:
        if photo is None:
            raise InvalidFeedback("image", "A mark on a photo search needs the searched photo.")
        query_ref = query_photo_ensure(content=photo, box=box).ref
    elif not query_ref:
        raise InvalidFeedback("token", "These results name no query product.")
    try:
        with transaction.atomic():
            event = ShopperEvent.objects.create(
                kind=ShopperEvent.Kind.NOT_SIMILAR,
                surface=surface,
                model_version=model_version,
                client_key=client_key,
                query_ref=query_ref,
                product=product,
            )
    except IntegrityError:  # this shopper already marked it (the unique constraint decides, races included)
        event = ShopperEvent.objects.get(
            kind=ShopperEvent.Kind.NOT_SIMILAR, client_key=client_key, query_ref=query_ref, product=product
        )
        return NotSimilarOutcome(event, False, None)
    triplet = _feedback_triplet(event, shown, label)
    logger.info("shopper marked %s not similar to %s (%s, %s)", product.pk, query_ref, surface, model_version)
    return NotSimilarOutcome(event, True, triplet)


def _feedback_triplet(event: ShopperEvent, shown: tuple[int, ...], label: str | None) -> Triplet | None:
    marked = set(
        ShopperEvent.objects.filter(
            kind=ShopperEvent.Kind.NOT_SIMILAR, client_key=event.client_key, query_ref=event.query_ref
        ).values_list("product_id", flat=True)
    )
    products = Product.objects.select_related("category").in_bulk(shown)
    positive = next((products[pid] for pid in shown if pid not in marked and pid in products), None)
    if positive is None:
        return None
    negative = event.product
    category = _anchor_category(event.query_ref, label) or positive.category.name
    scores = {
        "marks": 1,
        "surface": event.surface,
        "model_version": event.model_version,
        "positive_rank": shown.index(positive.pk) + 1,
        "negative_rank": shown.index(negative.pk) + 1,
    }
    with transaction.atomic():
        triplet, created = Triplet.objects.select_for_update().get_or_create(
            anchor_ref=event.query_ref,
            positive_ref=f"shop:{positive.sku}",
            negative_ref=f"shop:{negative.sku}",
            defaults={
                "kind": Triplet.Kind.FEEDBACK,
                "source": FEEDBACK_SOURCE,
                "category": category[:120],
                "scores": scores,
                "status": Triplet.Status.PENDING,
            },
        )
        if not created:  # another shopper said the same: the reviewer sees how many did
            triplet.scores = {**(triplet.scores or {}), "marks": int((triplet.scores or {}).get("marks", 1)) + 1}
            triplet.save(update_fields=["scores"])
    return triplet


def _anchor_category(query_ref: str, label: str | None) -> str | None:
    """The anchor's category: the product page's product's, or the searched item's detected class when it names
    a catalog category."""
    kind, _, rest = query_ref.partition(":")
    if kind == "shop":
        return Category.objects.filter(products__sku=rest).values_list("name", flat=True).first()
    if label:
        return Category.objects.filter(name__iexact=label).values_list("name", flat=True).first()
    return None


def result_click_record(
    *,
    client_key: str,
    surface: str,
    model_version: str,
    product_id: int,
    shown: tuple[int, ...] | list[int],
    query_ref: str,
) -> ShopperEvent:
    """Record a click on a shown result (for a photo search, query_ref is `photo:<checksum prefix>`: clicks keep
    no photo). Raises InvalidFeedback (unknown product, not shown)."""
    product = _shown_product(product_id, tuple(int(pid) for pid in shown))
    return ShopperEvent.objects.create(
        kind=ShopperEvent.Kind.CLICK,
        surface=surface,
        model_version=model_version,
        client_key=client_key,
        query_ref=query_ref,
        product=product,
    )


def click_query_ref(shown: ShownResults) -> str:
    if shown.surface == Surface.SEARCH:
        return f"photo:{(shown.photo_checksum or '')[:16]}"
    return shown.query_ref or ""


# The shopper's photo, kept only for a mark ---------------------------------------------------------------
def query_photo_ensure(*, content: bytes, box: tuple[int, int, int, int] | None) -> QueryPhoto:
    """The QueryPhoto of this photo and searched box, stored once (upright, no metadata, at most
    QUERY_PHOTO_MAX_SIDE px, box scaled). Raises InvalidFeedback for bytes that are not an acceptable image."""
    try:
        validate_image_bytes(content)
        picture = open_normalised(content)
    except InvalidImage as exc:
        raise InvalidFeedback("image", str(exc)) from exc
    scale = min(1.0, QUERY_PHOTO_MAX_SIDE / max(picture.width, picture.height))
    if scale < 1.0:
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    stored_box = None
    if box is not None:
        x1, y1, x2, y2 = (round(v * scale) for v in box)
        stored_box = [max(0, x1), max(0, y1), min(picture.width, max(x2, x1 + 1)), min(picture.height, max(y2, y1 + 1))]
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90, comment=f"box={stored_box}".encode())
    stored = buffer.getvalue()
    checksum = photo_checksum(stored)
    existing = QueryPhoto.objects.filter(checksum=checksum).first()
    if existing is not None:
        return existing
    row = QueryPhoto(checksum=checksum, box=stored_box, width=picture.width, height=picture.height)
    row.image.save(f"{checksum[:32]}.jpg", ContentFile(stored), save=False)
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:  # the same photo and box stored by a concurrent mark
        row.image.delete(save=False)
        return QueryPhoto.objects.get(checksum=checksum)
    return row
