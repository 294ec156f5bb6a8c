"""Query crops at serving time framed exactly like the street-to-shop benchmark's (Benchmark.street_crop):
the box grown by `context` x its longer side on every side, squared (the shop images' framing), shifted to
stay inside the photo. So a detected item is embedded the way VisNet was evaluated."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image


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
