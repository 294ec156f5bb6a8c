"""Localization: the items in a photo, found by the detector running in the `localize` workers.

The web process never loads the detector: it sends the upright photo (shrunk to LOCALIZE_SEND_SIDE) to
a worker on the `localize` queue and waits for the boxes at most LOCALIZE_TIMEOUT_SECONDS. Workers
load the detector once per process (`registry.detector`). Catalog ingestion, already in a worker, calls
`detect_items` in process.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import time
from dataclasses import asdict, dataclass

from celery.exceptions import TimeoutError as CeleryTimeout
from django.conf import settings
from kombu.exceptions import OperationalError as BrokerError
from PIL import Image

from ml.artifacts import ArtifactInvalid
from webapp.search import dispatch, registry

logger = logging.getLogger(__name__)

LOCALIZE_SEND_SIDE = 640  # the detector sees at most 320-640 px; sending more only costs transfer and decoding


class LocalizationUnavailable(RuntimeError):
    """No localize worker answered in time, the broker is unreachable, or no detector is installed."""


@dataclass(frozen=True)
class ItemBox:
    """A detected item: `box` is (x1, y1, x2, y2) in pixels of the upright photo, x2/y2 exclusive."""

    index: int
    label: str
    score: float
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def detect_items(picture: Image.Image) -> list[ItemBox]:
    """Run the detector here (in a worker process); best first. Raises LocalizationUnavailable without a detector."""
    try:
        detector = registry.detector()
    except (ArtifactInvalid, FileNotFoundError) as exc:
        raise LocalizationUnavailable(f"no detector is installed ({exc})") from exc
    found = detector.detect(picture, min_score=settings.DETECTOR_MIN_SCORE, max_items=settings.DETECTOR_MAX_ITEMS)
    boxes: list[ItemBox] = []
    for detection in found:
        x1, y1, x2, y2 = (round(v) for v in detection.box)
        if x2 > x1 and y2 > y1:
            boxes.append(ItemBox(len(boxes), detection.label, round(float(detection.score), 4), (x1, y1, x2, y2)))
    return boxes


def encode_for_worker(picture: Image.Image) -> tuple[str, float]:
    """The photo as base64 JPEG at most LOCALIZE_SEND_SIDE on its long side, and the scale back to the original."""
    sent = picture.copy()
    sent.thumbnail((LOCALIZE_SEND_SIDE, LOCALIZE_SEND_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    sent.save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii"), picture.width / sent.width


def decode_from_web(payload: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


def _rescale(boxes: list[dict], scale: float, width: int, height: int) -> list[ItemBox]:
    items: list[ItemBox] = []
    for raw in boxes:
        x1, y1, x2, y2 = raw["box"]
        box = (
            max(0, min(width, round(x1 * scale))),
            max(0, min(height, round(y1 * scale))),
            max(0, min(width, round(x2 * scale))),
            max(0, min(height, round(y2 * scale))),
        )
        if box[2] > box[0] and box[3] > box[1]:
            items.append(ItemBox(len(items), str(raw["label"]), float(raw["score"]), box))
    return items


@dataclass(frozen=True)
class Localization:
    """The items found, with where the time went: the detector in the worker, and the whole round trip."""

    boxes: list[ItemBox]
    detect_ms: float
    round_trip_ms: float


def photo_localize(*, picture: Image.Image) -> Localization:
    """The items in an upright photo, best first, from a localize worker; raises LocalizationUnavailable."""
    started = time.perf_counter()
    payload, scale = encode_for_worker(picture)
    timeout = settings.LOCALIZE_TIMEOUT_SECONDS
    try:
        result = dispatch.localize_send(payload=payload, expires=timeout)
    except (BrokerError, ConnectionError, OSError) as exc:
        raise LocalizationUnavailable(f"the task broker is unreachable ({type(exc).__name__})") from exc
    try:
        answer = result.get(timeout=timeout, interval=0.01, propagate=True)
    except CeleryTimeout:
        raise LocalizationUnavailable(f"no localization worker answered within {timeout:g} s") from None
    except Exception as exc:  # the task's own failure, re-raised here by Celery
        raise LocalizationUnavailable(f"localization failed: {exc}") from exc
    finally:
        _forget(result)
    boxes = _rescale(answer["boxes"], scale, picture.width, picture.height)
    return Localization(boxes, float(answer["detect_ms"]), (time.perf_counter() - started) * 1000)


def _forget(result) -> None:
    """Drop the stored answer (a file or a Redis key); there is none when the worker never answered."""
    with contextlib.suppress(FileNotFoundError, OSError, BrokerError):
        result.forget()


def localize_payload(payload: str) -> dict:
    """The body of the localize task: decode what the web sent, detect, answer plain JSON with the time taken."""
    started = time.perf_counter()
    boxes = [asdict(item) for item in detect_items(decode_from_web(payload))]
    return {"boxes": boxes, "detect_ms": round((time.perf_counter() - started) * 1000, 2)}
