"""Hostile uploads at scale: the corpus of tests/hostile_corpus.py (1,100+ malformed, adversarial and awkward but
valid images) through the search page, the API (search and image upload) and `manage.py import_catalog`.

Every refused case must get a clear 4xx (or a per-row error) with the same message on every route, and leave no
row or file behind; every accepted case must be accepted and normalised to the colours it was made with; nothing
may answer 5xx. The search path is real except for the two heavy stand-ins of tests/fakes.py (the pixel embedder
and the in-memory vector store) and a localization that answers "no worker" at once (the detector is not what is
tested here, and a YOLO pass per case would take minutes).

`python -m tests.hostile_corpus --report` runs the route test and writes its table into docs/reliability.md.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from tests.conftest import make_catalog_manager
from tests.fakes import FakeVectorStore, PixelEmbedder
from tests.hostile_corpus import (
    CLASSES,
    REPORT_ENV,
    ROUTES,
    Case,
    Tally,
    digest,
    encode,
    generate,
    report_json,
    report_table,
    write_report,
)
from webapp.catalog import services as catalog_services
from webapp.catalog.images import InvalidImage, open_normalised, validate_image_bytes
from webapp.catalog.models import Product, ProductImage
from webapp.curation.models import QueryPhoto
from webapp.search import localization, registry, selectors
from webapp.search import services as search_services

SEARCH_ERROR = re.compile(r'id="search-error"[^>]*>(.*?)</div>', re.S)


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return generate()


def test_the_corpus_is_large_deterministic_and_covers_every_class(corpus):
    assert len(corpus) >= 1000
    assert len({case.id for case in corpus}) == len(corpus)
    counts = Counter(case.cls for case in corpus)
    assert set(counts) == {c.name for c in CLASSES} and min(counts.values()) >= 2, counts
    assert {c.name for c in CLASSES if c.accept} >= {"cmyk", "16-bit", "palette-transparency", "animated"}
    assert {c.name for c in CLASSES if not c.accept} >= {
        "truncated", "polyglot", "decompression-bomb", "huge-dimensions", "zero-size", "wrong-type", "exif-bomb",
    }  # fmt: skip
    assert all(case.probes and case.size for case in corpus if case.accept)
    accepted = [case.content for case in corpus if case.accept]
    assert len(set(accepted)) == len(accepted), "each accepted case is different bytes (one upload, one row)"
    assert digest(generate()) == digest(corpus), "the corpus must be the same bytes on every run"


def probe_errors(case: Case, picture: Image.Image) -> list[str]:
    errors = [] if picture.mode == "RGB" else [f"mode {picture.mode}"]
    if case.size and picture.size != tuple(case.size):
        errors.append(f"size {picture.size}, made {case.size}")
    for fx, fy, expected in case.probes:
        xy = (min(int(fx * picture.width), picture.width - 1), min(int(fy * picture.height), picture.height - 1))
        found = picture.getpixel(xy)
        if max(abs(a - b) for a, b in zip(found, expected, strict=True)) > case.tolerance:
            errors.append(f"at {xy} {found}, made {expected}")
    return errors


def test_the_one_image_rule_accepts_and_normalises_or_refuses_each_case(corpus):
    """webapp/catalog/images.py alone: accepted cases become the upright RGB picture they were made as (16-bit
    scaled, not clipped; CMYK converted; transparency on white; the first frame; EXIF orientation applied)."""
    wrong, vague = [], []
    for case in corpus:
        try:
            validated = validate_image_bytes(case.content)
        except InvalidImage as exc:
            if case.accept:
                wrong.append(f"{case.id}: refused ({exc})")
            elif len(str(exc)) < 25 or not str(exc).endswith((".", ")")):
                vague.append(f"{case.id}: {exc!r}")
            continue
        if not case.accept:
            wrong.append(f"{case.id}: accepted as {validated.format} {validated.width}x{validated.height}")
            continue
        errors = probe_errors(case, open_normalised(case.content))
        if errors:
            wrong.append(f"{case.id}: {'; '.join(errors)}")
    assert not wrong, f"{len(wrong)} cases judged wrongly:\n" + "\n".join(wrong[:40])
    assert not vague, "\n".join(vague[:20])


def test_awkward_valid_images_need_the_fixes_they_test():
    """The checks above are not vacuous: Pillow's plain conversion clips 16-bit grey to white and ignores an RGB
    colour key, which is what the normaliser corrects."""
    import numpy as np

    grey16 = Image.fromarray(np.full((16, 16), 32768, np.uint16))
    assert grey16.convert("RGB").getpixel((8, 8)) == (255, 255, 255)
    assert open_normalised(encode(grey16, "PNG")).getpixel((8, 8)) == (128, 128, 128)
    keyed = encode(Image.new("RGB", (16, 16), (10, 20, 30)), "PNG", transparency=(10, 20, 30))
    assert Image.open(io.BytesIO(keyed)).convert("RGB").getpixel((8, 8)) == (10, 20, 30)
    assert open_normalised(keyed).getpixel((8, 8)) == (255, 255, 255)


# Every route -----------------------------------------------------------------------------------------------
@pytest.fixture
def light_search(monkeypatch, serving_version):
    """The real search path with the pixel embedder, the in-memory vector store and no localization worker."""
    store, embedder = FakeVectorStore(), PixelEmbedder(serving_version.model_version)
    monkeypatch.setattr(registry, "get_vector_store", lambda: store)
    monkeypatch.setattr(registry, "embedder_for", lambda version: embedder)

    def no_worker(**kwargs):
        raise localization.LocalizationUnavailable("no localization worker in this test")

    monkeypatch.setattr(selectors, "photo_localize", no_worker)
    monkeypatch.setattr(search_services, "detect_items", lambda picture: [])
    registry.reset_active_version_cache()
    cache.clear()
    yield SimpleNamespace(store=store)
    registry.reset_active_version_cache()


def media_files(media_root: Path) -> set[str]:
    found = set()
    for folder, _, names in os.walk(media_root):
        found.update(os.path.relpath(os.path.join(folder, name), media_root) for name in names)
    return found


def state(media_root: Path) -> tuple[int, int, int]:
    return (
        ProductImage.objects.count(),
        QueryPhoto.objects.count(),
        sum(len(names) for *_, names in os.walk(media_root)),
    )


def page_message(response) -> str:
    if response["Content-Type"].startswith("text/plain"):
        return response.content.decode()
    found = SEARCH_ERROR.search(response.content.decode())
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split()) if found else ""


def api_message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else str(body)


class Recorder:
    def __init__(self):
        self.tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
        self.messages: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        self.seconds: Counter = Counter()

    def record(self, case: Case, route: str, *, ok: bool, refused: bool, message: str, left: int) -> None:
        tally = self.tallies[(case.cls, route)]
        tally.requests += 1
        tally.ok += ok
        tally.refused += refused
        tally.errors += not ok and not refused
        tally.left_behind += left
        if refused:
            tally.messages[message] += 1
            self.messages[(case.id, route)] = message
        if not ok and not refused:
            self.problems.append(f"{route} {case.id}: server error or no clear answer ({message[:200]})")
        elif ok != case.accept:
            tally.wrong += 1
            self.problems.append(f"{route} {case.id}: {'accepted' if ok else 'refused'} ({message[:160]})")
        elif refused and (len(message) < 25 or "Traceback" in message):
            self.problems.append(f"{route} {case.id}: unclear message {message!r}")
        if left:
            self.problems.append(f"{route} {case.id}: {left} rows or files left behind")


def send(recorder: Recorder, case: Case, route: str, request, media_root: Path, expect_stored: int = 0) -> None:
    """One request; `left` counts rows and files beyond what an accepted case is meant to store."""
    before = state(media_root)
    started = time.perf_counter()
    response = request(case)
    recorder.seconds[route] += time.perf_counter() - started
    after = state(media_root)
    images, photos, files = (a - b for a, b in zip(after, before, strict=True))
    allowed = expect_stored if 200 <= response.status_code < 300 else 0
    left = max(0, images - allowed) + photos + max(0, files - allowed)
    message = page_message(response) if route == "page" else api_message(response)
    recorder.record(
        case,
        route,
        ok=200 <= response.status_code < 300,
        refused=400 <= response.status_code < 500,
        message=message or f"HTTP {response.status_code}",
        left=left,
    )
    return response


def run_import(recorder: Recorder, cases: list[Case], work: Path, media_root: Path) -> None:
    """One catalog file per class; a refused case's row first lists a good image, so a row that stored part of
    itself before failing would leave that file behind."""
    folder = work / "files"
    folder.mkdir(parents=True, exist_ok=True)
    by_class: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_class[case.cls].append(case)
    for cls, members in by_class.items():
        rows = []
        for number, case in enumerate(members):
            path = folder / f"{case.id}-{case.filename}"
            path.write_bytes(case.content)
            images = f"{folder.name}/{path.name}"  # relative to the catalog file, as merchants write them
            if not case.accept:
                good = folder / f"{case.id}-good.png"
                good.write_bytes(encode(Image.new("RGB", (24, 24), (number % 256, 90, 200)), "PNG"))
                images = f"{folder.name}/{good.name}|{images}"
            rows.append({"sku": case.id, "title": case.id, "price": "10", "category": "Hostile", "images": images})
        catalog, errors = work / f"{cls}.csv", work / f"{cls}-errors.csv"
        with catalog.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["sku", "title", "price", "category", "images"])
            writer.writeheader()
            writer.writerows(rows)
        before_files = media_files(media_root)
        started = time.perf_counter()
        try:
            call_command("import_catalog", str(catalog), "--errors", str(errors), stdout=io.StringIO())
        except Exception as exc:  # the command itself must never fail on bad rows
            for case in members:
                recorder.record(case, "import", ok=False, refused=False, message=repr(exc), left=0)
            continue
        recorder.seconds["import"] += time.perf_counter() - started
        reported = {row["sku"]: row["error"] for row in csv.DictReader(errors.open())}
        imported = dict(Product.objects.filter(sku__in=[c.id for c in members]).values_list("sku", "pk"))
        rows = ProductImage.objects.filter(product__sku__in=[c.id for c in members])
        stored = set(rows.values_list("image", flat=True))
        orphans = len(media_files(media_root) - before_files - stored)
        for case in members:
            refused_rows = int(case.id in imported and not case.accept)
            recorder.record(
                case,
                "import",
                ok=case.id in imported and case.id not in reported,
                refused=case.id in reported and case.id not in imported,
                message=reported.get(case.id, ""),
                left=refused_rows,
            )
        if orphans:  # files no row refers to: attributed to the class
            recorder.tallies[(cls, "import")].left_behind += orphans
            recorder.problems.append(f"import {cls}: {orphans} files left behind")


def test_the_corpus_through_every_route(corpus, light_search, settings, tmp_path):
    started = time.monotonic()
    media_root = Path(settings.MEDIA_ROOT)
    staff = make_catalog_manager("catalog-manager")
    uploader = APIClient(raise_request_exception=False)
    uploader.force_authenticate(staff)
    shopper, browser = APIClient(raise_request_exception=False), Client(raise_request_exception=False)
    category = catalog_services.category_get_or_create(name="Hostile")
    product, _ = catalog_services.product_upsert(sku="target", title="Upload target", price=10, category=category)
    recorder = Recorder()

    def upload(case: Case) -> SimpleUploadedFile:
        return SimpleUploadedFile(case.filename, case.content, content_type=case.content_type)

    def page(case: Case):
        return browser.post("/search/", {"image": upload(case)})

    def api_search(case: Case):
        return shopper.post("/api/search/", {"image": upload(case), "whole_photo": "true"}, format="multipart")

    def api_upload(case: Case):
        return uploader.post(f"/api/products/{product.pk}/images/", {"image": upload(case)}, format="multipart")

    for case in corpus:
        send(recorder, case, "page", page, media_root)
    for case in corpus:
        search = send(recorder, case, "api-search", api_search, media_root)
        if case.accept and search.status_code == 200:
            size = search.json()["image"]
            if (size["width"], size["height"]) != tuple(case.size):
                recorder.problems.append(f"api-search {case.id}: searched as {size}, made {case.size}")
    uploaded: set[int] = set()
    for case in corpus:
        response = send(recorder, case, "api-upload", api_upload, media_root, expect_stored=1)
        if response.status_code in (200, 201):
            uploaded.add(response.json()["id"])
    run_import(recorder, corpus, tmp_path / "import", media_root)

    # The same rule speaks on every route: the page, the API and the import say the same thing.
    for case in corpus:
        said = {route: recorder.messages.get((case.id, route)) for route in ROUTES}
        http = {said["page"], said["api-search"], said["api-upload"]}
        if not case.accept and None not in http and len(http) > 1 and case.cls != "oversize":
            recorder.problems.append(f"{case.id}: the routes disagree: {said}")
        imported, uploaded_as = said["import"], said["api-upload"]
        if not case.accept and imported and uploaded_as and case.cls != "oversize" and uploaded_as not in imported:
            recorder.problems.append(f"{case.id}: import says {imported!r}, the API {uploaded_as!r}")

    # What was accepted is ingested: validated again, normalised, thumbnailed and embedded.
    report = search_services.images_ingest(image_ids=sorted(uploaded))
    accepted = sum(case.accept for case in corpus)
    assert len(uploaded) == accepted and sorted(report.ready) == sorted(uploaded), report.failed
    assert light_search.store.count() == accepted
    assert all(ProductImage.objects.filter(pk__in=uploaded).values_list("thumbnail", flat=True))

    seconds = time.monotonic() - started
    table = report_table(recorder.tallies, seconds, corpus)
    if os.environ.get(REPORT_ENV):
        write_report(table, Path(os.environ[REPORT_ENV]), report_json(recorder.tallies, corpus))
    print(table, {route: round(seconds) for route, seconds in recorder.seconds.items()})
    assert not recorder.problems, f"{len(recorder.problems)} problems:\n" + "\n".join(recorder.problems[:60])
    server_errors = sum(t.errors for t in recorder.tallies.values())
    left_behind = sum(t.left_behind for t in recorder.tallies.values())
    assert (server_errors, left_behind) == (0, 0)
    assert sum(t.requests for t in recorder.tallies.values()) == len(corpus) * len(ROUTES)


@pytest.mark.django_db
@pytest.mark.parametrize("checked_first", [True, False], ids=["checked-before-writing", "cleaned-up-after"])
def test_a_catalog_row_with_one_bad_image_stores_nothing(tmp_path, settings, monkeypatch, checked_first):
    """All or nothing per row, files included: the images are judged before anything is written, and should a
    later step fail anyway, the files the row already stored are removed with its rolled-back rows."""
    from webapp.catalog import importing

    if not checked_first:  # the second line of defence alone
        monkeypatch.setattr(importing, "validate_image_bytes", lambda content: None)
    (tmp_path / "good.png").write_bytes(encode(Image.new("RGB", (32, 32), (10, 200, 10)), "PNG"))
    (tmp_path / "cut.png").write_bytes(encode(Image.new("RGB", (64, 64), (200, 10, 10)), "PNG")[:100])
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,title,price,category,images\nmixed,Mixed,10,Shirt,good.png|cut.png\n")
    report = importing.import_catalog(catalog)
    assert report.ok == 0 and len(report.errors) == 1 and "damaged or truncated" in report.errors[0][2]
    assert Product.objects.count() == 0 and ProductImage.objects.count() == 0
    assert media_files(Path(settings.MEDIA_ROOT)) == set()
