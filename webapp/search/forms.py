"""The visual search form: the shopper's photo plus optional filters."""

from __future__ import annotations

import base64

from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from webapp.catalog.images import ALLOWED_FORMATS, InvalidImage, make_thumbnail, open_normalised, read_upload
from webapp.catalog.models import Category
from webapp.search.vector_store import SearchFilters

PREVIEW_SIZE = 320


class VisualSearchForm(forms.Form):
    # A plain FileField: the bytes are judged by webapp.catalog.images (via the selector), never by
    # the name or declared type, and an empty file must reach that check to get its message.
    image = forms.FileField(
        label="Photo",
        allow_empty_file=True,
        widget=forms.FileInput(attrs={"accept": "image/*"}),
        error_messages={"required": "Choose a photo to search with."},
    )
    category = forms.ModelChoiceField(
        queryset=Category.objects.all(),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
        error_messages={"invalid_choice": "Unknown category."},
    )
    max_price = forms.DecimalField(
        label="Max price",
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0", "placeholder": "Any"}),
    )
    in_stock = forms.BooleanField(label="In stock only", required=False)
    # Without JavaScript the page searches the most confident item; this asks for the whole photo instead.
    # (With JavaScript the page has its own "Search the whole photo" button and hides this box.)
    whole_photo = forms.BooleanField(label="Search the whole photo", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        formats = ", ".join(sorted(ALLOWED_FORMATS))
        self.fields["image"].help_text = f"{formats}; up to {filesizeformat(settings.IMAGE_MAX_BYTES)}."

    def clean_image(self) -> bytes:
        """The uploaded bytes; an oversized file is refused before it is read (webapp.catalog.images)."""
        try:
            return read_upload(self.cleaned_data["image"])
        except InvalidImage as exc:
            raise forms.ValidationError(str(exc), code="too_large") from None

    def filters(self) -> SearchFilters:
        data = self.cleaned_data
        category = data.get("category")
        max_price = data.get("max_price")
        return SearchFilters(
            category_id=category.pk if category is not None else None,
            max_price=float(max_price) if max_price is not None else None,
            in_stock=True if data.get("in_stock") else None,
        )


def preview_data_url(content: bytes, size: int = PREVIEW_SIZE) -> str:
    """A small WEBP data: URL of an image that has already passed validation (for the results page)."""
    thumbnail = make_thumbnail(open_normalised(content), size)
    return "data:image/webp;base64," + base64.b64encode(thumbnail).decode("ascii")
