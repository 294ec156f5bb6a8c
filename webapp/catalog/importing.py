"""Merchant catalog import from CSV or JSONL: one row, one product, all or nothing per row; rows written in
transactions of many rows and their images queued for ingestion in batches once each transaction commits."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlparse

import requests
from django.conf import settings
from django.core.files.storage import Storage
from django.db import DataError, IntegrityError, transaction

from webapp.catalog import services
from webapp.catalog.images import InvalidImage, read_chunks, read_limited, validate_image_bytes
from webapp.catalog.models import ProductImage
from webapp.search import dispatch

REQUIRED_FIELDS = ("sku", "title", "price", "category")
TRUE_WORDS = {"1", "true", "yes", "y", "in stock", "instock"}
FALSE_WORDS = {"0", "false", "no", "n", "out of stock", "outofstock", ""}
# Rows written per transaction (each in its own savepoint): 8 full ingest tasks of one-image rows. A transaction
# of 256 small rows takes well under a second, so SQLite's single writer (the worker marking images ready) waits
# little; the rows' image bytes held for it are capped too.
ROWS_PER_TRANSACTION = 8 * dispatch.INGEST_BATCH_SIZE
TRANSACTION_MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_LENGTHS = {"sku": 120, "title": 300, "brand": 120, "category": 120}  # the model fields' max_length
MAX_PRICE = Decimal(10) ** 10  # DecimalField(max_digits=12, decimal_places=2)


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


def import_catalog(path: Path, progress=None, *, rows_per_transaction: int = ROWS_PER_TRANSACTION) -> ImportReport:
    """Import every row of a CSV or JSONL catalog; a bad row is reported and never stops the others.

    Each row is checked and its images read (files or downloads) before any transaction opens. The good rows are
    then written `rows_per_transaction` at a time in one transaction, each row in its own savepoint: a row that
    fails while it is written rolls back alone, files included. Once a transaction commits, the images it stored are
    queued for ingestion together in tasks of INGEST_BATCH_SIZE; a transaction that rolls back queues nothing.
    `rows_per_transaction=1` writes and queues row by row (one task per row).
    """
    if rows_per_transaction < 1:
        raise ValueError("rows_per_transaction must be at least 1")
    report = ImportReport()
    waiting: list[PreparedRow] = []
    waiting_bytes = 0
    for number, row in read_rows(path):
        try:
            prepared = prepare_row(number, row, base_dir=path.parent)
        except (RowError, InvalidImage) as exc:
            report.errors.append((number, _sku_of(row), str(exc)))
            if progress is not None:
                progress.update(1)
            continue
        waiting.append(prepared)
        waiting_bytes += prepared.size
        if len(waiting) >= rows_per_transaction or waiting_bytes >= TRANSACTION_MAX_IMAGE_BYTES:
            _write_rows(waiting, report, progress)
            waiting, waiting_bytes = [], 0
    if waiting:
        _write_rows(waiting, report, progress)
    report.errors.sort(key=lambda error: error[0])
    return report


@dataclass
class PreparedRow:
    """A row that passed every check, with its images' bytes, ready to be written."""

    number: int
    sku: str
    fields: dict
    category: str
    images: list[tuple[bytes, str]]  # (content, source)

    @property
    def size(self) -> int:
        return sum(len(content) for content, _ in self.images)


def prepare_row(number: int, row: dict, base_dir: Path) -> PreparedRow:
    """Check a row and read its images (files or downloads); writes nothing. Raises RowError or InvalidImage."""
    if "__error__" in row:
        raise RowError(row["__error__"])
    missing = [name for name in REQUIRED_FIELDS if not str(row.get(name, "") or "").strip()]
    if missing:
        raise RowError(f"missing required field(s): {', '.join(missing)}")
    try:
        price = Decimal(str(row["price"]).strip())
    except InvalidOperation:
        raise RowError(f"price {row['price']!r} is not a number") from None
    if not price.is_finite():
        raise RowError(f"price {row['price']!r} is not a number")
    if price < 0:
        raise RowError("price must not be negative")
    if price >= MAX_PRICE:
        raise RowError(f"price must be below {MAX_PRICE:,}")
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
    texts = {name: str(row.get(name) or "").strip() for name in MAX_LENGTHS}
    for name, limit in MAX_LENGTHS.items():
        if len(texts[name]) > limit:
            raise RowError(f"{name} is longer than {limit} characters")
    sources = _image_sources(row)
    if not sources:
        raise RowError("no image: give 'image' (a file path or an http(s) URL) or 'images'")
    contents = [(_fetch_image(source, base_dir), source) for source in sources]
    for content, source in contents:  # every image judged before anything is written: a row is all or nothing
        try:
            validate_image_bytes(content)
        except InvalidImage as exc:
            raise InvalidImage(f"image {source!r}: {exc}") from None
    return PreparedRow(
        number=number,
        sku=texts["sku"],
        category=texts["category"],
        fields={
            "title": texts["title"],
            "brand": texts["brand"],
            "price": price,
            "currency": currency,
            "attributes": attributes,
            "in_stock": _parse_bool(row.get("in_stock", True)),
        },
        images=contents,
    )


def write_row(row: PreparedRow, stored_files: list[tuple[Storage, str]]) -> tuple[bool, int]:
    """Write a prepared row's product and images (call it in a transaction); returns (created, image count).

    The names of the files it stores for new images are appended to `stored_files`, so that whoever rolls the
    transaction back can remove them: files are not part of a transaction.
    """
    category = services.category_get_or_create(name=row.category)
    product, created = services.product_upsert(sku=row.sku, category=category, **row.fields)
    kept = set(product.images.values_list("pk", flat=True))
    stored: list[ProductImage] = []
    try:
        for position, (content, source) in enumerate(row.images):
            is_url = urlparse(source).scheme in ("http", "https")
            stored.append(
                services.product_image_create(
                    product=product, content=content, source_url=source if is_url else "", position=position
                )
            )
    except BaseException:
        # The row's savepoint rolls back its rows; the files it stored are not part of it.
        _delete_files([(image.image.storage, image.image.name or "") for image in stored if image.pk not in kept])
        raise
    stored_files += [(image.image.storage, image.image.name or "") for image in stored if image.pk not in kept]
    return created, len(row.images)


def _write_rows(rows: list[PreparedRow], report: ImportReport, progress) -> None:
    """Write prepared rows in one transaction, one savepoint per row; queue their new images once it commits."""
    written = ImportReport()
    stored_files: list[tuple[Storage, str]] = []
    try:
        with transaction.atomic(), dispatch.ingest_batched_on_commit():
            for row in rows:
                files_before = len(stored_files)
                try:
                    with transaction.atomic():  # a savepoint: a row that fails here rolls back alone
                        created, image_count = write_row(row, stored_files)
                except (RowError, InvalidImage, IntegrityError, DataError) as exc:
                    _delete_files(stored_files[files_before:])  # the row's savepoint took its rows back
                    del stored_files[files_before:]
                    written.errors.append((row.number, row.sku, _row_error_message(exc)))
                    continue
                written.created += int(created)
                written.updated += int(not created)
                written.images += image_count
    except BaseException:
        # Nothing of this transaction was kept (and nothing queued): neither may its files be.
        _delete_files(stored_files)
        raise
    finally:
        if progress is not None:
            progress.update(len(rows))
    report.created += written.created
    report.updated += written.updated
    report.images += written.images
    report.errors += written.errors


def _row_error_message(exc: Exception) -> str:
    if isinstance(exc, IntegrityError | DataError):
        return f"the database refused the row ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return str(exc)


def _delete_files(files: list[tuple[Storage, str]]) -> None:
    for storage, name in files:
        if name:
            with contextlib.suppress(OSError):
                storage.delete(name)


def _sku_of(row: dict) -> str:
    return str(row.get("sku", "") or "").strip()


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
