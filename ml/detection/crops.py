"""Query crops at serving time framed exactly like the street-to-shop benchmark's (Benchmark.street_crop):
the box grown by `context` x its longer side on every side, squared (the shop images' framing), shifted to
stay inside the photo. So a detected item is embedded the way VisNet was evaluated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class Embeds(Protocol):
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def context_box(box: Sequence[float], image_size: tuple[int, int], context: float = 0.1) -> tuple[int, int, int, int]:
    """Integer crop box (left, top, right, bottom) for `box` (x1, y1, x2, y2, floats allowed) in an image of
    `image_size` (width, height): side = max(w, h) * (1 + 2 * context) capped by the image, centred on the box
    and shifted to lie inside the image. Matches ml.data.street2shop.crop_box(square=True) for integer boxes."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = int(image_size[0]), int(image_size[1])
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    side = max(1, min(round(max(w, h) * (1 + 2 * context)), width, height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def crop_with_context(image: Image.Image, box: Sequence[float], context: float = 0.1) -> Image.Image:
    """The square crop of `image` around `box` with `context` margin (see context_box)."""
    return image.crop(context_box(box, image.size, context))


def item_crops(image: Image.Image, box: Sequence[float] | None, contexts: Sequence[float]) -> list[Image.Image]:
    """What is embedded for one item: its crop at each context, or the whole image when there is no box."""
    return [image] if box is None else [crop_with_context(image, box, context) for context in contexts]


def embed_items(embedder: Embeds, groups: Sequence[Sequence[Image.Image]]) -> np.ndarray:
    """One L2-normalised vector per item: the mean of its crops' embeddings (one batch for all the crops).

    With the 5% and 10% crops this is the policy chosen on val (docs/localization.md), used alike by search,
    ingestion and re-embedding so query and catalog vectors are made the same way.
    """
    flat = [crop for group in groups for crop in group]
    if not flat:
        return np.zeros((0, 0), dtype=np.float32)
    vectors = np.asarray(embedder.embed(flat), dtype=np.float32)
    sums = np.add.reduceat(vectors, np.cumsum([0, *[len(group) for group in groups[:-1]]]), axis=0)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
