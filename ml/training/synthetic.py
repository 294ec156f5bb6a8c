"""A small synthetic street-to-shop benchmark with the same API as ml.data.street2shop.Benchmark.

Used by tests and tiny configs (data.source: synthetic) so training runs without the real builder.
Shop images: Fashion-MNIST items (dark on white). Street photos: the item recoloured, rescaled and
pasted on a cluttered background, slightly blurred.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps


@dataclass(frozen=True)
class StreetItem:
    photo_index: int
    box: tuple[int, int, int, int]
    shop_index: int
    split: str


class SyntheticBenchmark:
    def __init__(self, n_shop: int = 300, queries_per_split: dict | None = None, seed: int = 0, photo_size: int = 96):
        from ml.data.fashion_mnist import load_fashion_mnist

        rng = np.random.default_rng(seed)
        images, labels = load_fashion_mnist("test")
        pick = rng.choice(len(images), n_shop, replace=False)
        self.root = Path(".")
        self.size = f"synthetic-{n_shop}"
        self.seed = seed
        self.shop_pixels = images[pick]
        self.shop_labels = labels[pick].astype(np.int64)
        self.shop_keys = [f"fm-test-{int(i):05d}" for i in pick]
        fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
        split = np.array(["train"] * n_shop, dtype=object)
        order = rng.permutation(n_shop)
        n_train = int(n_shop * fractions["train"])
        n_val = int(n_shop * fractions["val"])
        split[order[n_train : n_train + n_val]] = "val"
        split[order[n_train + n_val :]] = "test"
        self.shop_split = split.astype(str)
        queries_per_split = queries_per_split or {"train": 1.0, "val": 0.5, "test": 0.5}
        self.items: list[StreetItem] = []
        self._photos: list[tuple[int, int]] = []  # (seed, shop_index) per photo
        self.photo_size = photo_size
        for s in ("train", "val", "test"):
            members = np.flatnonzero(self.shop_split == s)
            count = int(round(len(members) * queries_per_split.get(s, 0.5)))
            for shop_index in rng.choice(members, count, replace=False):
                photo_index = len(self._photos)
                photo_seed = int(rng.integers(1 << 31))
                self._photos.append((photo_seed, int(shop_index)))
                box = self._layout(photo_seed)
                self.items.append(StreetItem(photo_index, box, int(shop_index), s))
        self.data_hash = hashlib.sha256(
            self.shop_pixels.tobytes() + "|".join(self.shop_keys).encode() + repr(self.items).encode()
        ).hexdigest()[:16]

    def _layout(self, photo_seed: int) -> tuple[int, int, int, int]:
        rng = np.random.default_rng(photo_seed)
        side = int(rng.integers(40, 64))
        x0 = int(rng.integers(0, self.photo_size - side))
        y0 = int(rng.integers(0, self.photo_size - side))
        return (x0, y0, x0 + side, y0 + side)

    def shop_image(self, index: int) -> Image.Image:
        return ImageOps.invert(Image.fromarray(self.shop_pixels[int(index)]).convert("RGB"))

    def street_photo(self, photo_index: int) -> Image.Image:
        photo_seed, shop_index = self._photos[photo_index]
        rng = np.random.default_rng(photo_seed)
        x0, y0, x1, y1 = self._layout(photo_seed)
        rng.integers(0, 2, size=3)  # keep the stream aligned with _layout's draws
        size = self.photo_size
        base = rng.integers(60, 200, size=3)
        noise = rng.normal(0, 25, size=(size // 8, size // 8, 3))
        bg = np.clip(base + np.kron(noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
        photo = Image.fromarray(bg)
        mask = Image.fromarray(self.shop_pixels[shop_index]).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        colour = tuple(int(c) for c in rng.integers(0, 255, size=3))
        shade = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        item = np.clip(np.array(colour, dtype=np.float32) * (0.5 + 0.5 * shade), 0, 255).astype(np.uint8)
        photo.paste(Image.fromarray(item), (x0, y0), mask.point(lambda v: 255 if v > 20 else int(v * 12)))
        return photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))

    def street_crop(self, item: StreetItem, context: float = 0.1) -> Image.Image:
        photo = self.street_photo(item.photo_index)
        x0, y0, x1, y1 = item.box
        dx, dy = (x1 - x0) * context, (y1 - y0) * context
        box = (
            max(0, int(x0 - dx)),
            max(0, int(y0 - dy)),
            min(photo.width, int(x1 + dx)),
            min(photo.height, int(y1 + dy)),
        )
        return photo.crop(box)

    def queries(self, split: str) -> list[StreetItem]:
        return [item for item in self.items if item.split == split]

    def gallery_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.shop_split == split)


def build_synthetic_benchmark(size: str = "tiny", seed: int = 0, **kwargs) -> SyntheticBenchmark:
    n_shop = {"tiny": 300, "small": 2000}.get(size, 300) if not kwargs.get("n_shop") else kwargs.pop("n_shop")
    return SyntheticBenchmark(n_shop=n_shop, seed=seed, **kwargs)
