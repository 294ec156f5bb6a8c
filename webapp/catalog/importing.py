"""Merchant catalog import from CSV or JSONL: one row, one product, all or nothing per row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlparse

import requests
from django.conf import settings
from django.db import transaction

from webapp.catalog import services
from webapp.catalog.images import InvalidImage, read_chunks, read_limited, validate_image_bytes
from webapp.catalog.models import ProductImage

REQUIRED_FIELDS = ("sku", "title", "price", "category")
TRUE_WORDS = {"1", "true", "yes", "y", "in stock", "instock"}
FALSE_WORDS = {"0", "false", "no", "n", "out of stock", "outofstock", ""}


class RowError(ValueError):
    pass


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    images: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (row number, sku, message)

    @property
    def ok(self) -> int:
        return self.created + self.updated


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (row number, raw dict). CSV rows are numbered from 2 (after the header), JSONL from 1."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.DictReader(handle), start=2):
                yield number, row
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, {"__error__": f"invalid JSON: {exc.msg} at column {exc.colno}"}
                    continue
                yield number, row if isinstance(row, dict) else {"__error__": "each line must be a JSON object"}
    else:
        raise ValueError(f"{path.name}: expected a .csv or .jsonl file")


def import_catalog(path: Path, progress=None) -> ImportReport:
    report = ImportReport()
    for number, row in read_rows(path):
        sku = str(row.get("sku", "") or "").strip()
        try:
            with transaction.atomic():
                created, image_count = import_row(row, base_dir=path.parent)
            report.created += int(created)
            report.updated += int(not created)
            report.images += image_count
        except (RowError, InvalidImage) as exc:
            report.errors.append((number, sku, str(exc)))
        if progress is not None:
            progress.update(1)
    return report


def import_row(row: dict, base_dir: Path) -> tuple[bool, int]:
    if "__error__" in row:
        raise RowError(row["__error__"])
    missing = [name for name in REQUIRED_FIELDS if not str(row.get(name, "") or "").strip()]
    if missing:
        raise RowError(f"missing required field(s): {', '.join(missing)}")
    try:
        price = Decimal(str(row["price"]).strip())
    except InvalidOperation:
        raise RowError(f"price {row['price']!r} is not a number") from None
    if price < 0:
        raise RowError("price must not be negative")
    currency = str(row.get("currency") or "USD").strip().upper()
    if len(currency) != 3 or not currency.isalpha():
        raise RowError(f"currency {currency!r} is not a 3-letter code")
    attributes = row.get("attributes") or {}
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except json.JSONDecodeError:
            raise RowError("attributes must be a JSON object") from None
    if not isinstance(attributes, dict):
        raise RowError("attributes must be a JSON object")
    sources = _image_sources(row)
    if not sources:
        raise RowError("no image: give 'image' (a file path or an http(s) URL) or 'images'")
    contents = [(_fetch_image(source, base_dir), source) for source in sources]
    for content, source in contents:  # every image judged before anything is written: a row is all or nothing
        try:
            validate_image_bytes(content)
        except InvalidImage as exc:
            raise InvalidImage(f"image {source!r}: {exc}") from None

    category = services.category_get_or_create(name=str(row["category"]))
    product, created = services.product_upsert(
        sku=str(row["sku"]).strip(),
        title=str(row["title"]).strip(),
        brand=str(row.get("brand") or "").strip(),
        price=price,
        currency=currency,
        category=category,
        attributes=attributes,
        in_stock=_parse_bool(row.get("in_stock", True)),
    )
    kept = set(product.images.values_list("pk", flat=True))
    stored: list[ProductImage] = []
    try:
        for position, (content, source) in enumerate(contents):
            is_url = urlparse(source).scheme in ("http", "https")
            stored.append(
                services.product_image_create(
                    product=product, content=content, source_url=source if is_url else "", position=position
                )
            )
    except BaseException:
        # The row's transaction rolls back its rows; the files it stored are not part of it.
        for image in stored:
            if image.pk not in kept and image.image.name:
                image.image.storage.delete(image.image.name)
        raise
    return created, len(contents)


def _image_sources(row: dict) -> list[str]:
    images = row.get("images")
    if isinstance(images, list):
        sources = [str(s) for s in images]
    elif isinstance(images, str) and images.strip():
        sources = images.split("|")
    else:
        sources = [str(row.get("image") or row.get("image_url") or "")]
    return [s.strip() for s in sources if s and s.strip()]


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise RowError(f"in_stock {value!r} is not yes/no")


def _fetch_image(source: str, base_dir: Path) -> bytes:
    scheme = urlparse(source).scheme
    if scheme in ("http", "https"):
        return _download(source)
    if scheme and len(scheme) > 1:
        raise RowError(f"image {source!r}: only http(s) URLs and file paths are accepted")
    path = Path(source)
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise RowError(f"image file {source!r} not found")
    with path.open("rb") as handle:
        return read_limited(handle, path.stat().st_size, name=f"image file {source!r}")


def _download(url: str) -> bytes:
    try:
        with requests.get(url, stream=True, timeout=settings.IMPORT_DOWNLOAD_TIMEOUT_SECONDS) as response:
            if response.status_code != 200:
                raise RowError(f"image {url}: HTTP {response.status_code}")
            return read_chunks(response.iter_content(64 * 1024), name=f"image {url}")
    except requests.RequestException as exc:
        raise RowError(f"image {url}: download failed ({type(exc).__name__})") from None
