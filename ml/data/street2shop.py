"""A street-to-shop proxy benchmark built from Fashion-MNIST items composited into real photographs.

Shop images are Fashion-MNIST items exactly as the demo catalog shows them (dark item on white, RGB, 28x28).
Street photos are 320x320 crops of real background photographs (ml.data.backgrounds) with 1-3 items placed in
each: scaled (40-160 px), rotated (+-25 degrees), recoloured or kept grey, patterned, lit, shadowed, blurred,
noised, JPEG-compressed and sometimes partly occluded (by another item or a background patch, at most ~30% of the
item hidden). The item's own intensity is its alpha mask, so the background shows around and through the garment.
Every street item keeps its box and its exact shop item: the task is Exact Street2Shop's (Kiapour et al., ICCV
2015) - find the very product in a shop gallery full of same-category distractors.

Splits are by shop item: train and val items come from Fashion-MNIST's train split (disjoint, seeded), test items
from its test split; background photos are split into disjoint pools too. Shop indices follow the demo catalog's
order (0-9999: fmnist-test-00000.., 10000-69999: fmnist-train-00000..), so shop_keys are catalog SKUs.

Everything is seeded per photo (independent of the number of worker processes) and cached on disk under
var/street2shop/<size>-seed<seed>/ (VAR_DIR respected): photos/NNNNNN.jpg, annotations.json (every photo's
sha256 inside) and data_hash.txt (sha256 of annotations.json).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ml.data.backgrounds import LICENSES, load_background, split_backgrounds
from ml.data.fashion_mnist import load_fashion_mnist

FORMAT_VERSION = 2
PHOTO_SIZE = 320
ITEM_SIDE = (40, 160)
MAX_ROTATION = 25.0
MAX_OCCLUSION = 0.30
SPLITS = ("train", "val", "test")
N_TEST_SHOP = 10_000  # shop indices [0, 10000) are Fashion-MNIST test, [10000, 70000) Fashion-MNIST train
N_VAL_POOL = 6_000  # Fashion-MNIST train items reserved for val (the rest are the train pool)

# street items per split and the gallery size per split (None: the split's whole pool,
# i.e. all 10,000 Fashion-MNIST test items for test). train_extra: more train street items, drawn from the
# whole train pool by a separate random stream after everything else, so val and test stay exactly the same.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"train": 48, "val": 24, "test": 32, "gallery": 160},  # for unit tests
    "small": {"train": 1_000, "val": 200, "test": 200, "gallery": 1_000},
    "full": {"train": 20_000, "val": 2_000, "test": 3_000, "gallery": None, "train_extra": 60_000},
}
ITEMS_PER_PHOTO = ((1, 2, 3), (0.45, 0.35, 0.20))


def default_root(size: str, seed: int) -> Path:
    var_dir = Path(os.environ.get("VAR_DIR") or Path(__file__).resolve().parents[2] / "var")
    return var_dir / "street2shop" / f"{size}-seed{seed}"


@dataclass(frozen=True)
class StreetItem:
    photo_index: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in photo pixels, x1/y1 exclusive: the whole item's extent
    shop_index: int
    split: str


@dataclass(eq=False)
class Benchmark:
    root: Path
    size: str
    seed: int
    data_hash: str
    shop_pixels: np.ndarray  # uint8 [70000, 28, 28], Fashion-MNIST original (light item on black)
    shop_labels: np.ndarray  # uint8 [70000]
    shop_keys: list[str]  # catalog SKUs
    shop_split: np.ndarray  # "train" | "val" | "test" per shop item
    items: list[StreetItem]
    item_meta: list[dict] = field(default_factory=list)  # per item: rotation, side, colour mode, occlusion, ...
    photo_meta: list[dict] = field(default_factory=list)  # per photo: split, background, crop, jpeg quality, ...
    galleries: dict[str, np.ndarray] = field(default_factory=dict)
    backgrounds: dict[str, list[str]] = field(default_factory=dict)

    # -- images ---------------------------------------------------------------------------------------------
    def shop_image(self, index: int) -> Image.Image:
        """The catalog image: dark item on white, RGB 28x28 (webapp.catalog.demo.item_png)."""
        return Image.fromarray(255 - self.shop_pixels[index]).convert("RGB")

    def shop_images(self, indices) -> list[Image.Image]:
        return [self.shop_image(int(i)) for i in indices]

    def photo_path(self, photo_index: int) -> Path:
        return self.root / "photos" / f"{photo_index:06d}.jpg"

    def street_photo(self, photo_index: int) -> Image.Image:
        with Image.open(self.photo_path(photo_index)) as image:
            return image.convert("RGB")

    def street_crop(self, item: StreetItem, context: float = 0.1, square: bool = True,
                    photo: Image.Image | None = None) -> Image.Image:
        """The ground-truth box grown by `context` x its side on every side; square (like the shop framing),
        shifted to stay inside the photo, unless square=False."""
        photo = photo if photo is not None else self.street_photo(item.photo_index)
        return photo.crop(crop_box(item.box, photo.size, context, square))

    def street_crops(self, items: list[StreetItem], context: float = 0.1, square: bool = True) -> list[Image.Image]:
        """street_crop for many items, opening each photo once."""
        crops, cache = [], {}
        for item in items:
            if item.photo_index not in cache:
                cache = {item.photo_index: self.street_photo(item.photo_index)}
            crops.append(self.street_crop(item, context, square, photo=cache[item.photo_index]))
        return crops

    # -- splits ---------------------------------------------------------------------------------------------
    def queries(self, split: str) -> list[StreetItem]:
        _check_split(split)
        return [item for item in self.items if item.split == split]

    def query_indices(self, split: str) -> np.ndarray:
        """Positions in `items` of that split's queries (stable ids for caching features)."""
        _check_split(split)
        return np.array([i for i, item in enumerate(self.items) if item.split == split], dtype=np.int64)

    def gallery_indices(self, split: str, scope: str = "split") -> np.ndarray:
        """Shop indices searched for that split's queries. scope="split": the split's gallery (full size: the
        whole split pool, i.e. all 10,000 Fashion-MNIST test items for test); scope="all": all 70,000 items."""
        _check_split(split)
        if scope == "all":
            return np.arange(len(self.shop_keys), dtype=np.int64)
        if scope != "split":
            raise ValueError(f"scope must be 'split' or 'all', not {scope!r}")
        return self.galleries[split]

    def photos(self, split: str) -> list[int]:
        _check_split(split)
        return [i for i, meta in enumerate(self.photo_meta) if meta["split"] == split]

    def verify(self) -> None:
        """Re-hash annotations.json and every photo; raise if anything changed on disk."""
        if sha256_file(self.root / "annotations.json") != self.data_hash:
            raise ValueError(f"{self.root}: annotations.json does not match data_hash")
        for index, meta in enumerate(self.photo_meta):
            if sha256_file(self.photo_path(index)) != meta["sha256"]:
                raise ValueError(f"{self.photo_path(index)} changed")


class StaleBenchmarkError(ValueError):
    """The benchmark on disk was built by an older version of this module."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def crop_box(box, photo_size, context: float = 0.1, square: bool = True) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    width, height = photo_size
    w, h = x1 - x0, y1 - y0
    if not square:
        mx, my = round(context * w), round(context * h)
        return max(0, x0 - mx), max(0, y0 - my), min(width, x1 + mx), min(height, y1 + my)
    side = min(round(max(w, h) * (1 + 2 * context)), width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- shop side ----------------------------------------------------------------------------------------------

def load_shop() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All 70k Fashion-MNIST items in demo-catalog order (test then train) with their SKUs."""
    test_x, test_y = load_fashion_mnist("test")
    train_x, train_y = load_fashion_mnist("train")
    pixels = np.concatenate([test_x, train_x])
    labels = np.concatenate([test_y, train_y])
    keys = [f"fmnist-test-{i:05d}" for i in range(len(test_x))] + [f"fmnist-train-{i:05d}" for i in range(len(train_x))]
    return pixels, labels, keys


def _plan(size: str, seed: int, n_shop: int) -> dict:
    """Which shop items go to which split, gallery, street photo (no pixels touched)."""
    config = SIZES[size]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5275]))
    train_side = N_TEST_SHOP + rng.permutation(n_shop - N_TEST_SHOP)
    pools = {"test": np.arange(N_TEST_SHOP), "val": np.sort(train_side[:N_VAL_POOL]),
             "train": np.sort(train_side[N_VAL_POOL:])}
    galleries, street_items = {}, {}
    for split in SPLITS:
        pool = pools[split]
        n_gallery = config["gallery"]
        gallery = pool if n_gallery is None or n_gallery >= len(pool) else np.sort(rng.choice(pool, n_gallery, replace=False))
        galleries[split] = gallery
        street_items[split] = rng.choice(gallery, config[split], replace=config[split] > len(gallery))
    photos = []  # (split, [shop indices])
    for split in SPLITS:
        todo = list(map(int, street_items[split]))
        while todo:
            k = int(rng.choice(ITEMS_PER_PHOTO[0], p=ITEMS_PER_PHOTO[1]))
            photos.append((split, todo[:k]))
            todo = todo[k:]
    extra = int(config.get("train_extra", 0))
    if extra:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E47]))
        rounds = -(-extra // len(galleries["train"]))
        todo = [int(i) for i in np.concatenate([rng.permutation(galleries["train"]) for _ in range(rounds)])[:extra]]
        while todo:
            k = int(rng.choice(ITEMS_PER_PHOTO[0], p=ITEMS_PER_PHOTO[1]))
            photos.append(("train", todo[:k]))
            todo = todo[k:]
    return {"pools": pools, "galleries": galleries, "photos": photos}


# -- rendering ----------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _random_colour(rng) -> np.ndarray:
    hue = rng.random()
    saturation = rng.uniform(0.25, 0.95)
    value = rng.uniform(0.3, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def _render_item(pixels: np.ndarray, side: int, angle: float, rng) -> tuple[np.ndarray, np.ndarray, dict]:
    """An item as (rgb float32 [h,w,3] in 0..1, alpha float32 [h,w]) tightly cropped, plus what was done."""
    image = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
    image = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0)
    bbox = image.getbbox() or (0, 0, image.width, image.height)
    intensity = np.asarray(image.crop(bbox), dtype=np.float32) / 255.0
    alpha = np.clip(intensity / 0.25, 0.0, 1.0)  # the item's own intensity is its mask
    h, w = intensity.shape
    # Shading keeps the shop image's polarity (dark in the shop = darker here) so the texture survives recolouring.
    shade = np.clip(1.15 - 0.6 * intensity, 0.0, 1.0)[..., None]
    mode = str(rng.choice(["grey", "tint", "pattern"], p=[0.25, 0.5, 0.25]))
    meta: dict[str, Any] = {"mode": mode}
    if mode == "grey":
        level = rng.uniform(0.55, 1.0)
        rgb = np.repeat((1.0 - intensity)[..., None], 3, axis=2) * level + (1 - level) * 0.1
        meta["level"] = round(float(level), 3)
    else:
        colour = _random_colour(rng)
        meta["colour"] = [round(float(c), 3) for c in colour]
        base = np.broadcast_to(colour, (h, w, 3))
        if mode == "pattern":
            other = _random_colour(rng)
            period = rng.uniform(4, 14)
            theta = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period
            if rng.random() < 0.5:  # stripes, else checks
                stripe = (np.sin(2 * np.pi * phase) > 0).astype(np.float32)
            else:
                phase2 = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
                stripe = ((np.floor(phase) + np.floor(phase2)) % 2).astype(np.float32)
            base = base * (1 - stripe[..., None]) + other * stripe[..., None]
            meta["colour2"] = [round(float(c), 3) for c in other]
        rgb = base * shade
    # Light falling across the item and a little fabric grain.
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / max(w - 1, 1) - 0.5) * np.cos(direction) + (yy / max(h - 1, 1) - 0.5) * np.sin(direction))
    gain = rng.uniform(0.75, 1.15) * (1 + rng.uniform(0.0, 0.5) * ramp)
    rgb = rgb * gain[..., None] + rng.normal(0, 0.02, size=(h, w, 1)).astype(np.float32)
    return np.clip(rgb, 0, 1).astype(np.float32), alpha.astype(np.float32), meta


def _occlusions(full: list[np.ndarray], visible: list[np.ndarray]) -> list[float]:
    return [1.0 - float(v.sum()) / max(float(f.sum()), 1.0) for f, v in zip(full, visible)]


def _render_photo(task: tuple) -> tuple[int, None, dict, list[dict]]:
    photo_index, split, shop_indices = task
    seed = _WORKER["seed"]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9407, photo_index]))
    pool = _WORKER["backgrounds"][split]
    background_name = pool[int(rng.integers(len(pool)))]
    background = load_background(background_name)
    short = min(background.size)
    crop_side = int(rng.uniform(0.35, 1.0) * short)
    cx = int(rng.integers(0, background.width - crop_side + 1))
    cy = int(rng.integers(0, background.height - crop_side + 1))
    photo = background.crop((cx, cy, cx + crop_side, cy + crop_side)).resize((PHOTO_SIZE, PHOTO_SIZE),
                                                                            Image.Resampling.BILINEAR)
    flip = bool(rng.random() < 0.5)
    if flip:
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = np.asarray(photo, dtype=np.float32) / 255.0
    background_canvas = canvas.copy()
    photo_meta = {"split": split, "background": background_name, "crop": [cx, cy, crop_side], "flip": flip}

    full_masks: list[np.ndarray] = []
    visible_masks: list[np.ndarray] = []
    items: list[dict] = []
    n = len(shop_indices)
    for shop_index in shop_indices:
        side_hi = ITEM_SIDE[1] if n == 1 else (140 if n == 2 else 120)
        side = int(round(np.exp(rng.uniform(np.log(ITEM_SIDE[0]), np.log(side_hi)))))
        angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        rgb, alpha, meta = _render_item(_WORKER["pixels"][shop_index], side, angle, rng)
        h, w = alpha.shape
        mask_local = alpha > 0.5
        best: tuple[float, int, int] | None = None
        for _ in range(40):
            x = int(rng.integers(0, PHOTO_SIZE - w + 1))
            y = int(rng.integers(0, PHOTO_SIZE - h + 1))
            worst = 0.0
            for f, v in zip(full_masks, visible_masks):
                covered = (v[y:y + h, x:x + w] & mask_local).sum()
                worst = max(worst, 1.0 - (v.sum() - covered) / max(f.sum(), 1))
            if best is None or worst < best[0]:
                best = (worst, x, y)
            if worst <= MAX_OCCLUSION:
                best = (worst, x, y)
                break
        assert best is not None  # the placement loop runs at least once
        _, x, y = best
        # Soft contact shadow, then the item.
        if rng.random() < 0.6:
            blurred = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(2, 5)))
            shadow = np.asarray(blurred, dtype=np.float32) / 255.0 * rng.uniform(0.2, 0.45)
            dx, dy = int(rng.integers(-4, 5)), int(rng.integers(1, 6))
            sx0, sy0 = max(0, x + dx), max(0, y + dy)
            sx1, sy1 = min(PHOTO_SIZE, x + dx + w), min(PHOTO_SIZE, y + dy + h)
            if sx1 > sx0 and sy1 > sy0:
                s = shadow[sy0 - (y + dy):sy1 - (y + dy), sx0 - (x + dx):sx1 - (x + dx)]
                canvas[sy0:sy1, sx0:sx1] *= (1 - s)[..., None]
        region = canvas[y:y + h, x:x + w]
        canvas[y:y + h, x:x + w] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
        full = np.zeros((PHOTO_SIZE, PHOTO_SIZE), dtype=bool)
        full[y:y + h, x:x + w] = mask_local
        for v in visible_masks:
            v[y:y + h, x:x + w] &= ~mask_local
        full_masks.append(full)
        visible_masks.append(full.copy())
        meta.update({"side": side, "rotation": round(angle, 2)})
        items.append({"shop_index": int(shop_index), "box": [x, y, x + w, y + h], **meta})

    # Something in front: a background patch over part of one item.
    if rng.random() < 0.3:
        target = int(rng.integers(n))
        x0, y0, x1, y1 = items[target]["box"]
        edge = str(rng.choice(["left", "right", "top", "bottom"]))
        fraction = rng.uniform(0.15, 0.45)
        for _ in range(8):
            px0, py0, px1, py1 = x0, y0, x1, y1
            if edge == "left":
                px1 = x0 + int((x1 - x0) * fraction)
            elif edge == "right":
                px0 = x1 - int((x1 - x0) * fraction)
            elif edge == "top":
                py1 = y0 + int((y1 - y0) * fraction)
            else:
                py0 = y1 - int((y1 - y0) * fraction)
            trial = [v.copy() for v in visible_masks]
            for v in trial:
                v[py0:py1, px0:px1] = False
            if px1 > px0 and py1 > py0 and max(_occlusions(full_masks, trial)) <= MAX_OCCLUSION:
                # The patch comes from elsewhere in the background, so it looks like a real object in front.
                ph, pw = py1 - py0, px1 - px0
                sx = int(rng.integers(0, PHOTO_SIZE - pw + 1))
                sy = int(rng.integers(0, PHOTO_SIZE - ph + 1))
                patch = background_canvas[sy:sy + ph, sx:sx + pw] * rng.uniform(0.6, 1.1)
                canvas[py0:py1, px0:px1] = np.clip(patch, 0, 1)
                visible_masks = trial
                photo_meta["occluder"] = {"item": target, "box": [px0, py0, px1, py1]}
                break
            fraction *= 0.7

    # Camera: exposure, contrast, gamma, white balance, blur, sensor noise, JPEG.
    brightness = rng.uniform(0.7, 1.25)
    contrast = rng.uniform(0.7, 1.3)
    gamma = rng.uniform(0.75, 1.35)
    balance = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    mean = canvas.mean()
    canvas = np.clip((canvas - mean) * contrast + mean, 0, 1) * brightness * balance
    canvas = np.clip(canvas, 0, 1) ** gamma
    image = Image.fromarray((canvas * 255 + 0.5).astype(np.uint8))
    blur = float(rng.uniform(0.4, 1.6)) if rng.random() < 0.35 else 0.0
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    noise = float(rng.uniform(2, 10)) if rng.random() < 0.5 else 0.0
    if noise:
        array = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, size=(PHOTO_SIZE, PHOTO_SIZE, 3))
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8))
    quality = int(rng.integers(35, 96))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    data = buffer.getvalue()
    photo_meta.update({"brightness": round(brightness, 3), "contrast": round(contrast, 3), "gamma": round(gamma, 3),
                       "blur": round(blur, 3), "noise": round(noise, 3), "jpeg_quality": quality,
                       "sha256": hashlib.sha256(data).hexdigest()})
    for item, occlusion in zip(items, _occlusions(full_masks, visible_masks)):
        item["occlusion"] = round(occlusion, 4)
    (_WORKER["out"] / f"{photo_index:06d}.jpg").write_bytes(data)
    return photo_index, None, photo_meta, items


def _init_worker(pixels, seed, backgrounds, out):
    _WORKER.update(pixels=pixels, seed=seed, backgrounds=backgrounds, out=Path(out))


# -- build / load -------------------------------------------------------------------------------------------

def build_benchmark(size: str = "small", seed: int = 0, root: Path | None = None, progress: bool = True,
                    workers: int | None = None, rebuild: bool = False) -> Benchmark:
    """Load the benchmark from `root` (default var/street2shop/<size>-seed<seed>/), building it first if needed."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    root = Path(root) if root is not None else default_root(size, seed)
    if not rebuild and (root / "data_hash.txt").exists():
        try:
            return load_benchmark(root, size=size, seed=seed)
        except StaleBenchmarkError:
            rebuild = True
    pixels, labels, keys = load_shop()
    plan = _plan(size, seed, len(pixels))
    backgrounds = split_backgrounds(seed)
    tasks = [(index, split, shop) for index, (split, shop) in enumerate(plan["photos"])]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "photos").mkdir(parents=True)
    started = time.monotonic()
    workers = workers if workers is not None else (min(os.cpu_count() or 1, 16) if len(tasks) >= 400 else 1)
    results: list = [None] * len(tasks)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=f"street2shop {size} seed {seed}", unit="photo")
    init_args = (pixels, seed, backgrounds, tmp / "photos")
    try:
        if workers > 1:
            context = multiprocessing.get_context("fork")
            with context.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
                for index, _, meta, items in pool.imap_unordered(_render_photo, tasks, chunksize=32):
                    results[index] = (meta, items)
                    if bar is not None:
                        bar.update()
        else:
            _init_worker(*init_args)
            for task in tasks:
                index, _, meta, items = _render_photo(task)
                results[index] = (meta, items)
                if bar is not None:
                    bar.update()
    finally:
        if bar is not None:
            bar.close()
        _WORKER.clear()
    photo_meta, item_records = [], []
    for index, (meta, items) in enumerate(results):
        photo_meta.append(meta)
        for item in items:
            item_records.append({"photo_index": index, "split": meta["split"], **item})
    annotations = {
        "format_version": FORMAT_VERSION,
        "size": size,
        "seed": seed,
        "photo_size": PHOTO_SIZE,
        "shop": "Fashion-MNIST, demo-catalog order: index i < 10000 is fmnist-test-i, else fmnist-train-(i-10000)",
        "val_pool": [int(i) for i in plan["pools"]["val"]],
        "galleries": {split: [int(i) for i in plan["galleries"][split]] for split in SPLITS},
        "backgrounds": backgrounds,
        "licenses": {**LICENSES, "fashion-mnist": "Fashion-MNIST (Zalando Research), MIT"},
        "photos": photo_meta,
        "items": item_records,
    }
    text = json.dumps(annotations, sort_keys=True, separators=(",", ":")).encode()
    (tmp / "annotations.json").write_bytes(text)
    data_hash = hashlib.sha256(text).hexdigest()
    (tmp / "data_hash.txt").write_text(data_hash + "\n")
    (tmp / "build.json").write_text(json.dumps({"seconds": round(time.monotonic() - started, 1),
                                                "workers": workers, "photos": len(tasks)}) + "\n")
    if rebuild and root.exists():
        shutil.rmtree(root)
    elif root.exists() and not (root / "data_hash.txt").exists():
        shutil.rmtree(root)  # an interrupted build
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # someone else finished the same build first
    return load_benchmark(root, size=size, seed=seed, shop=(pixels, labels, keys))


def load_benchmark(root: Path, size: str | None = None, seed: int | None = None, shop=None) -> Benchmark:
    root = Path(root)
    text = (root / "annotations.json").read_bytes()
    data = json.loads(text)
    if data["format_version"] != FORMAT_VERSION:
        raise StaleBenchmarkError(f"{root}: format {data['format_version']}, expected {FORMAT_VERSION}; rebuild it")
    if (size is not None and data["size"] != size) or (seed is not None and data["seed"] != seed):
        raise ValueError(f"{root} holds size={data['size']} seed={data['seed']}, not size={size} seed={seed}")
    data_hash = (root / "data_hash.txt").read_text().strip()
    if hashlib.sha256(text).hexdigest() != data_hash:
        raise ValueError(f"{root}: annotations.json does not match data_hash.txt")
    pixels, labels, keys = shop if shop is not None else load_shop()
    shop_split = np.full(len(keys), "train", dtype="<U5")
    shop_split[:N_TEST_SHOP] = "test"
    shop_split[np.asarray(data["val_pool"], dtype=np.int64)] = "val"
    items, item_meta = [], []
    for record in data["items"]:
        x0, y0, x1, y1 = (int(v) for v in record["box"])
        items.append(StreetItem(int(record["photo_index"]), (x0, y0, x1, y1),
                                int(record["shop_index"]), record["split"]))
        item_meta.append({k: v for k, v in record.items() if k not in ("photo_index", "box", "shop_index", "split")})
    return Benchmark(
        root=root, size=data["size"], seed=int(data["seed"]), data_hash=data_hash,
        shop_pixels=pixels, shop_labels=labels, shop_keys=keys, shop_split=shop_split,
        items=items, item_meta=item_meta, photo_meta=data["photos"],
        galleries={split: np.asarray(v, dtype=np.int64) for split, v in data["galleries"].items()},
        backgrounds=data["backgrounds"],
    )


def contact_sheet(benchmark: Benchmark, path: Path, split: str = "test", n_photos: int = 12, columns: int = 4,
                  seed: int = 0) -> Path:
    """A PNG of street photos with their ground-truth boxes, each followed by its items' shop images."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    photos = benchmark.photos(split)
    chosen = sorted(int(i) for i in rng.choice(photos, min(n_photos, len(photos)), replace=False))
    by_photo: dict[int, list[StreetItem]] = {}
    for item in benchmark.items:
        by_photo.setdefault(item.photo_index, []).append(item)
    thumb, pad = 64, 6
    tile_w, tile_h = PHOTO_SIZE + pad, PHOTO_SIZE + thumb + 3 * pad
    rows = (len(chosen) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile_w + pad, rows * tile_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    colours = ["#ff2d2d", "#2dff6a", "#2d9bff"]
    for n, photo_index in enumerate(chosen):
        x, y = pad + (n % columns) * tile_w, pad + (n // columns) * tile_h
        sheet.paste(benchmark.street_photo(photo_index), (x, y))
        for k, item in enumerate(by_photo[photo_index]):
            x0, y0, x1, y1 = item.box
            draw.rectangle((x + x0, y + y0, x + x1 - 1, y + y1 - 1), outline=colours[k % 3], width=2)
            shop = benchmark.shop_image(item.shop_index).resize((thumb, thumb), Image.Resampling.NEAREST)
            tx, ty = x + k * (thumb + pad), y + PHOTO_SIZE + pad
            sheet.paste(shop, (tx, ty))
            draw.rectangle((tx - 1, ty - 1, tx + thumb, ty + thumb), outline=colours[k % 3], width=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--contact-sheet", type=Path, default=None, help="also write a PNG of example test photos")
    args = parser.parse_args(argv)
    started = time.monotonic()
    benchmark = build_benchmark(args.size, args.seed, args.root, rebuild=args.rebuild)
    counts = {split: len(benchmark.queries(split)) for split in SPLITS}
    print(f"{benchmark.root}: {len(benchmark.photo_meta)} photos, street items {counts}, galleries "
          f"{ {s: len(g) for s, g in benchmark.galleries.items()} }, data_hash {benchmark.data_hash[:16]}, "
          f"{time.monotonic() - started:.1f} s")
    if args.contact_sheet:
        print(f"wrote {contact_sheet(benchmark, args.contact_sheet)}")


if __name__ == "__main__":
    main()
