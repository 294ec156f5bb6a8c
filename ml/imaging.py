"""Image helpers shared by the models and the basic image similarity scorers (PIL and numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def pad_to_square(image: Image.Image) -> Image.Image:
    """RGB, padded to a square with the median border colour (a catalog image's background), centred."""
    image = image.convert("RGB")
    width, height = image.size
    if width == height:
        return image
    arr = np.asarray(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    fill = tuple(int(v) for v in np.median(border, axis=0))
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
