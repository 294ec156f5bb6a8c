"""Near-duplicate listings: the same item listed twice, found by the cosine similarity of its stored vectors.

    nice python -m ml.evaluation.near_duplicates [--visnet models/visnet-default] [--catalog 20000] [--relisted 2000]

The catalog is the demo catalog's first `catalog` items (Fashion-MNIST test, then train) as the product shows them
(a dark item on white, 28x28; see webapp.catalog.demo.item_png), split at random into a val half and a test
half. In each half a sample of items is listed a second time the way a merchant re-lists an item
(`sample_relisting`): re-framed (a small crop or a white margin), resized to the platform's size (mostly
upscaled, sometimes stretched), re-levelled (gamma, contrast, a colour cast; white stays white), sometimes
watermarked, and re-encoded as JPEG or WebP at a random quality. Each listing is embedded with the shipped
VisNet exactly as ingestion stores it (a clean product shot is embedded whole).

A pair of listings is a duplicate when both come from the same pixels (an item and its re-listing, and the few
items Fashion-MNIST itself holds twice). Precision counts every pair of listings in the half that scores at or
above the threshold (all items are distractors, same class or not), so it holds against the whole catalog, not
a single negative per item. The threshold is the lowest (highest recall) at which val precision >= 0.99; test
reports precision, recall and F1 at it. Hard negatives (each re-listed item's most similar other item of its
class) and the false pairs of the whole catalog (originals only) are reported beside.

Vectors are cached under var/near-duplicates/features/ (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ml.data.fashion_mnist import CLASS_NAMES
from ml.data.street2shop import load_shop
from ml.feature_cache import EmbeddingCache
from ml.machine import describe_machine

REPO = Path(__file__).resolve().parents[2]
RECIPE_VERSION = 1  # part of the re-listings' cache name: bump when sample_relisting or relist changes
TARGET_PRECISION = 0.99
SCORE_FLOOR = 0.5  # pairs below this are never near-duplicates; the histograms start here
BIN_WIDTH = 0.001  # thresholds are chosen on this grid
WATERMARK_TEXTS = ("SALE", "NEW IN", "© Northwind", "shop.example.com", "-30%", "BEST PRICE")
RESAMPLERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# -- re-listing an item ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relisting:
    """How one item is listed again (every field recorded, so misses can be broken down by what was done)."""

    frame: str  # "none" | "crop" | "pad"
    sides: tuple[float, float, float, float]  # left, top, right, bottom: fraction cut (crop) or added (pad)
    side: int  # longer side of the new image in pixels (28 = the catalog's own size)
    stretch: float  # width scaled by this relative to height (1.0 = aspect kept)
    resample: str
    gamma: float  # on the ink (1 - value), so white stays white; 1.0 = unchanged
    contrast: float  # ink multiplied by this; 1.0 = unchanged
    tint: tuple[float, float, float]  # per-channel ink factor (a colour cast); (1, 1, 1) = none
    watermark: str  # "" | "corner" | "centre"
    watermark_text: str
    watermark_alpha: float
    codec: str  # "jpeg" | "webp"
    quality: int
    subsampling: int  # JPEG chroma subsampling: 0 = 4:4:4, 2 = 4:2:0


def sample_relisting(rng: np.random.Generator) -> Relisting:
    """A random re-listing. Each step is something a merchant's tools do to a photo they upload again:

    * re-framing: platforms ask for a margin around the item (white padding of 2-15% a side: the item still fills
      at least 77% of the frame, where marketplace guidelines ask for about 85%), or the merchant trims the frame
      (a crop up to 6% a side; more would cut the item itself, which makes a different photo);
    * resizing: platforms want a minimum size, so a 28 px catalog image comes back upscaled (48-800 px, any
      resampler), 15% of the time at its own size, 20% of the time slightly stretched (+-8%);
    * re-levelling (half of them): auto-levels and filters change gamma and contrast and add a cast, but a
      product shot keeps its white background (marketplaces require it), so white stays white;
    * a watermark (30% of those at least 96 px): the shop's name or a sale badge, semi-transparent, in a
      corner (70%) or across the middle (30%);
    * re-encoding, always: JPEG at quality 35-95 (4:2:0 or 4:4:4) or, 15% of the time, WebP at 50-90.
    """
    frame = str(rng.choice(["none", "crop", "pad"], p=[0.4, 0.3, 0.3]))
    if frame == "crop":
        sides = tuple(float(x) for x in rng.uniform(0.0, 0.06, 4))
    elif frame == "pad":
        sides = tuple(float(x) for x in rng.uniform(0.02, 0.15, 4))
    else:
        sides = (0.0, 0.0, 0.0, 0.0)
    side = 28 if rng.random() < 0.15 else int(round(np.exp(rng.uniform(np.log(48), np.log(800)))))
    stretch = float(rng.uniform(0.92, 1.08)) if rng.random() < 0.2 and side > 28 else 1.0
    resample = str(rng.choice(list(RESAMPLERS)))
    levelled = rng.random() < 0.5
    gamma = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33)))) if levelled else 1.0
    contrast = float(rng.uniform(0.85, 1.2)) if levelled else 1.0
    tint = tuple(float(x) for x in rng.uniform(0.9, 1.1, 3)) if levelled and rng.random() < 0.3 else (1.0, 1.0, 1.0)
    watermark = ""
    if side >= 96 and rng.random() < 0.3:
        watermark = "corner" if rng.random() < 0.7 else "centre"
    text = str(rng.choice(WATERMARK_TEXTS))
    alpha = float(rng.uniform(0.25, 0.6))
    webp = rng.random() < 0.15
    quality = int(rng.integers(50, 91)) if webp else int(rng.integers(35, 96))
    return Relisting(
        frame=frame,
        sides=sides,  # type: ignore[arg-type]
        side=side,
        stretch=stretch,
        resample=resample,
        gamma=gamma,
        contrast=contrast,
        tint=tint,  # type: ignore[arg-type]
        watermark=watermark,
        watermark_text=text,
        watermark_alpha=alpha,
        codec="webp" if webp else "jpeg",
        quality=quality,
        subsampling=int(rng.choice([0, 2])),
    )


def relisting_for(seed: int, index: int) -> Relisting:
    """The re-listing of catalog item `index`: fixed by (seed, index), whatever else is sampled."""
    return sample_relisting(np.random.default_rng([seed, 0x2E11, index]))


def catalog_image(pixels: np.ndarray) -> Image.Image:
    """An item as the catalog shows it: dark on white (webapp.catalog.demo.item_png), decoded to RGB."""
    return Image.fromarray(255 - pixels).convert("RGB")


def relist(image: Image.Image, how: Relisting) -> Image.Image:
    """The re-listed image, decoded again as ingestion decodes it (RGB)."""
    width, height = image.size
    left, top, right, bottom = how.sides
    if how.frame == "crop":
        box = (left * width, top * height, width * (1 - right), height * (1 - bottom))
        margins = (0.0, 0.0, 0.0, 0.0)
    else:
        box = (0.0, 0.0, float(width), float(height))
        margins = how.sides if how.frame == "pad" else (0.0, 0.0, 0.0, 0.0)
    content_w, content_h = (box[2] - box[0]) * how.stretch, box[3] - box[1]
    canvas_w, canvas_h = content_w * (1 + margins[0] + margins[2]), content_h * (1 + margins[1] + margins[3])
    scale = how.side / max(canvas_w, canvas_h)
    size = (max(1, round(content_w * scale)), max(1, round(content_h * scale)))
    content = image.resize(size, RESAMPLERS[how.resample], box=box)
    if how.frame == "pad":
        canvas = Image.new("RGB", (max(1, round(canvas_w * scale)), max(1, round(canvas_h * scale))), "white")
        canvas.paste(content, (round(margins[0] * content_w * scale), round(margins[1] * content_h * scale)))
        content = canvas
    if (how.gamma, how.contrast, how.tint) != (1.0, 1.0, (1.0, 1.0, 1.0)):
        ink = 1.0 - np.asarray(content, dtype=np.float32) / 255.0
        ink = np.clip(how.contrast * ink**how.gamma * np.asarray(how.tint, dtype=np.float32), 0.0, 1.0)
        content = Image.fromarray(np.round(255.0 * (1.0 - ink)).astype(np.uint8))
    if how.watermark:
        content = _watermarked(content, how)
    buffer = io.BytesIO()
    if how.codec == "jpeg":
        content.save(buffer, format="JPEG", quality=how.quality, subsampling=how.subsampling)
    else:
        content.save(buffer, format="WEBP", quality=how.quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _watermarked(image: Image.Image, how: Relisting) -> Image.Image:
    width, height = image.size
    font = ImageFont.load_default(size=max(8, round(0.09 * height)))
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = draw.textbbox((0, 0), how.watermark_text, font=font)
    margin = round(0.06 * min(width, height))
    if how.watermark == "corner":
        position = (width - (x1 - x0) - margin - x0, height - (y1 - y0) - margin - y0)
    else:
        position = ((width - (x1 - x0)) // 2 - x0, (height - (y1 - y0)) // 2 - y0)
    draw.text(position, how.watermark_text, font=font, fill=(40, 40, 40, round(255 * how.watermark_alpha)))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


# -- scoring pairs -----------------------------------------------------------------------------------------------


@dataclass
class PairCounts:
    """Pairs of listings above SCORE_FLOOR, as counts per score bin (edges[k] <= score < edges[k + 1])."""

    edges: np.ndarray
    false: np.ndarray  # pairs of different items
    true_scores: np.ndarray  # every duplicate pair's score (below the floor too)
    top_false: list[tuple[float, int, int]] = field(default_factory=list)  # (score, row a, row b), best first

    def at(self, threshold: float) -> tuple[int, int]:
        """(duplicate pairs, false pairs) scoring at least `threshold` (a bin edge)."""
        k = int(np.searchsorted(self.edges, threshold - BIN_WIDTH / 2))
        return int((self.true_scores >= self.edges[k]).sum()), int(self.false[k:].sum())


def score_edges(floor: float = SCORE_FLOOR, width: float = BIN_WIDTH) -> np.ndarray:
    steps = int(round((1.0 - floor) / width))
    return np.concatenate([np.round(floor + width * np.arange(steps + 1), 6), [1.01]])


def duplicate_pair_scores(vectors: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The score of every pair of listings in the same group (the same source pixels)."""
    order = np.argsort(groups, kind="stable")
    starts = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    scores = []
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            rows = order[start:end]
            block = vectors[rows] @ vectors[rows].T
            scores.append(block[np.triu_indices(len(rows), 1)])
    return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, dtype=np.float32)


def count_pairs(
    vectors: np.ndarray, groups: np.ndarray, keep_top: int = 0, block: int = 2048, progress: Callable | None = None
) -> PairCounts:
    """Every pair of listings (upper triangle of the cosine matrix, in blocks): false pairs binned above the floor,
    duplicate pairs scored exactly, and the `keep_top` best-scoring false pairs."""
    edges = score_edges()
    x = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32))
    g = torch.as_tensor(groups.astype(np.int64))
    bounds = torch.as_tensor(edges, dtype=torch.float32)
    false = torch.zeros(len(edges) - 1, dtype=torch.int64)
    top: list[tuple[float, int, int]] = []
    with torch.inference_mode():
        for start in range(0, len(x), block):
            end = min(start + block, len(x))
            scores = x[start:end] @ x[start:].T  # columns from `start`: the upper triangle only
            rows = torch.arange(start, end)[:, None]
            cols = torch.arange(start, len(x))[None, :]
            mask = (cols > rows) & (scores >= edges[0]) & (g[start:end, None] != g[None, start:])
            values = scores[mask]
            bins = torch.bucketize(values, bounds, right=True) - 1
            false += torch.bincount(bins, minlength=len(false))[: len(false)]
            if keep_top and len(values):
                best = torch.topk(values, min(keep_top, len(values)))
                where = mask.nonzero()[best.indices]
                top += [
                    (float(v), start + int(i), start + int(j)) for v, (i, j) in zip(best.values, where, strict=True)
                ]
                top = sorted(top, reverse=True)[:keep_top]
            if progress is not None:
                progress(end - start)
    return PairCounts(edges, false.numpy(), duplicate_pair_scores(vectors, groups), top)


def hardest_negatives(
    query_rows: np.ndarray, vectors: np.ndarray, labels: np.ndarray, groups: np.ndarray, block: int = 2048
) -> np.ndarray:
    """For each query row: the best score of another item of the same class (different pixels)."""
    x = torch.as_tensor(np.ascontiguousarray(vectors, dtype=np.float32))
    lab, grp = torch.as_tensor(labels.astype(np.int64)), torch.as_tensor(groups.astype(np.int64))
    best = []
    with torch.inference_mode():
        for start in range(0, len(query_rows), block):
            rows = torch.as_tensor(query_rows[start : start + block])
            scores = x[rows] @ x.T
            other = (lab[None, :] == lab[rows, None]) & (grp[None, :] != grp[rows, None])
            best.append(scores.masked_fill(~other, -2.0).max(dim=1).values)
    return torch.cat(best).numpy() if best else np.zeros(0, dtype=np.float32)


# -- choosing and reporting the threshold ------------------------------------------------------------------------


def operating_point(counts: PairCounts, threshold: float) -> dict[str, float]:
    duplicates, false = counts.at(threshold)
    total = len(counts.true_scores)
    precision = duplicates / (duplicates + false) if duplicates + false else 1.0
    recall = duplicates / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "threshold": round(float(threshold), 6),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "flagged_pairs": duplicates + false,
        "false_pairs": false,
        "duplicate_pairs_found": duplicates,
        "duplicate_pairs": total,
    }


def choose_threshold(counts: PairCounts, target_precision: float = TARGET_PRECISION) -> tuple[float, bool]:
    """The lowest threshold on the grid (the highest recall) whose precision is at least the target, and whether
    one reached it (if none did: the most precise threshold, highest recall among equals)."""
    points = [operating_point(counts, float(t)) for t in counts.edges[:-1]]
    eligible = [p for p in points if p["precision"] >= target_precision and p["duplicate_pairs_found"] > 0]
    if eligible:
        return min(p["threshold"] for p in eligible), True
    best = max(points, key=lambda p: (p["precision"], p["recall"]))
    return best["threshold"], False


# -- the study ---------------------------------------------------------------------------------------------------


@dataclass
class _Images:
    """What EmbeddingCache reads images from: a root for its files and a loader of images by id."""

    root: Path
    load: Callable[[list[int]], list[Image.Image]]

    def shop_images(self, ids: Sequence[int]) -> list[Image.Image]:
        return self.load([int(i) for i in ids])


def default_root() -> Path:
    return Path(os.environ.get("VAR_DIR") or REPO / "var") / "near-duplicates"


def reencode_rms(pixels: np.ndarray, quality: int = 75, sample: int = 500, seed: int = 0) -> float:
    """The 95th percentile of the RMS grey-level change that one JPEG round trip at `quality` makes to a catalog
    image: two items closer than this are the same photo by any standard."""
    rng = np.random.default_rng([seed, quality])
    changes = []
    for index in rng.choice(len(pixels), min(sample, len(pixels)), replace=False):
        buffer = io.BytesIO()
        catalog_image(pixels[index]).save(buffer, format="JPEG", quality=quality)
        back = 255 - np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"), dtype=np.float64)
        changes.append(np.sqrt(np.mean((back - pixels[index]) ** 2)))
    return float(np.percentile(changes, 95))


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def same_class_rms(pixels: np.ndarray, labels: np.ndarray, pairs: int = 2000, seed: int = 0) -> dict[str, float]:
    """How much two random items of one class differ (RMS grey levels): the scale for 'near-identical'."""
    rng = np.random.default_rng([seed, 0x5C])
    a, b = rng.integers(0, len(pixels), (2, pairs * 10))
    keep = (labels[a] == labels[b]) & (a != b)
    changes = [_rms(pixels[i], pixels[j]) for i, j in list(zip(a[keep], b[keep], strict=True))[:pairs]]
    return {f"p{q}": round(float(np.percentile(changes, q)), 1) for q in (1, 50)} if changes else {}


def same_photo_groups(pixels: np.ndarray, labels: np.ndarray, max_rms: float, block: int = 2048) -> np.ndarray:
    """A group id per item: items with identical pixels, or of one class whose pixels differ by at most `max_rms`
    (RMS, grey levels), are one photo (transitively). Fashion-MNIST holds such near-identical items."""
    flat = pixels.reshape(len(pixels), -1)
    _, parent = np.unique(flat, axis=0, return_inverse=True)
    parent = parent.reshape(-1).astype(np.int64)
    first: dict[int, int] = {}
    roots = np.empty(len(parent), dtype=np.int64)
    for index, group in enumerate(parent.tolist()):
        roots[index] = first.setdefault(group, index)

    def find(i: int) -> int:
        while roots[i] != i:
            roots[i] = roots[roots[i]]
            i = int(roots[i])
        return i

    limit = max_rms**2 * flat.shape[1]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        x = torch.as_tensor(flat[members], dtype=torch.float32)
        norms = (x * x).sum(dim=1)
        for start in range(0, len(members), block):
            distances = (
                norms[start : start + block, None] + norms[None, start:] - 2 * x[start : start + block] @ x[start:].T
            )
            rows, cols = torch.nonzero(distances <= limit, as_tuple=True)
            for i, j in zip((rows + start).tolist(), (cols + start).tolist(), strict=True):
                if j > i:
                    a, b = find(int(members[i])), find(int(members[j]))
                    if a != b:
                        roots[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(roots))], dtype=np.int64)


def _bucket(how: Relisting) -> dict[str, str]:
    quality = "< 50" if how.quality < 50 else ("50-74" if how.quality < 75 else ">= 75")
    size = "28 (own size)" if how.side == 28 else ("48-127" if how.side < 128 else "128-800")
    share = float(np.mean(how.sides))
    frame = {
        "none": "none",
        "crop": "crop, < 3% a side (mean)" if share < 0.03 else "crop, 3-6% a side (mean)",
        "pad": "margin, < 5% a side (mean)" if share < 0.05 else ("margin, 5-10%" if share < 0.1 else "margin, >= 10%"),
    }[how.frame]
    return {
        "re-framing": frame,
        "size (px, longer side)": size,
        "codec and quality": f"{how.codec} {quality}",
        "re-levelled": "yes" if how.gamma != 1.0 or how.contrast != 1.0 else "no",
        "watermark": how.watermark or "none",
    }


def study(
    visnet: str | Path = "models/visnet-default",
    catalog: int = 20_000,
    relisted: int = 2_000,
    seed: int = 0,
    root: Path | None = None,
    thresholds: Sequence[float] = (),
    progress: bool = True,
    embedder: Any = None,
) -> dict:
    from ml.inference.visnet import load_visnet_embedder

    started = time.perf_counter()
    root = Path(root or default_root())
    pixels, labels, _ = load_shop()
    rng = np.random.default_rng([seed, 0xD0B1E])
    items = np.arange(min(catalog, len(pixels)))  # the demo catalog's first items (load_demo_catalog's order)
    halves = {"val": np.sort(rng.permutation(items)[: len(items) // 2])}
    halves["test"] = np.setdiff1d(items, halves["val"])
    relisted_items = {
        split: np.sort(rng.permutation(members)[: min(relisted // 2, len(members))])
        for split, members in halves.items()
    }
    embedder = embedder or load_visnet_embedder(visnet, device="auto", batch_size=256)
    originals = EmbeddingCache(
        _Images(root, lambda ids: [catalog_image(pixels[i]) for i in ids]), embedder, "catalog", progress=progress
    )
    relistings = EmbeddingCache(
        _Images(root, lambda ids: [relist(catalog_image(pixels[i]), relisting_for(seed, i)) for i in ids]),
        embedder,
        f"relisted-v{RECIPE_VERSION}-seed{seed}",
        progress=progress,
    )
    t0 = time.perf_counter()
    original_vectors = originals.shop(items)
    relisted_vectors = {split: relistings.shop(ids) for split, ids in relisted_items.items()}
    embed_seconds = time.perf_counter() - t0
    row_of_item = {int(item): row for row, item in enumerate(items)}
    same_photo_rms = reencode_rms(pixels[items], seed=seed)
    groups = np.arange(len(pixels), dtype=np.int64)  # listing -> photo; only the catalog's items can share one
    groups[items] = items[same_photo_groups(pixels[items], labels[items], same_photo_rms)]

    t0 = time.perf_counter()
    splits: dict[str, dict] = {}
    counts: dict[str, PairCounts] = {}
    listing_index: dict[str, np.ndarray] = {}
    for split, members in halves.items():
        member_rows = np.array([row_of_item[int(i)] for i in members], dtype=np.int64)
        vectors = np.concatenate([original_vectors[member_rows], relisted_vectors[split]])
        sources = np.concatenate([members, relisted_items[split]])  # listing -> Fashion-MNIST index
        listing_index[split] = sources
        counts[split] = count_pairs(vectors, groups[sources], keep_top=12)
        hard = hardest_negatives(
            np.searchsorted(members, relisted_items[split]),  # the re-listed items' rows among the members
            original_vectors[member_rows],
            labels[members],
            groups[members],
        )
        relist_scores = np.sum(
            original_vectors[[row_of_item[int(i)] for i in relisted_items[split]]] * relisted_vectors[split], axis=1
        )
        splits[split] = {
            "catalog_items": int(len(members)),
            "relisted_items": int(len(relisted_items[split])),
            "listings": int(len(sources)),
            "hard_negative_scores": hard,
            "relisted_scores": relist_scores,
        }
    threshold, target_met = choose_threshold(counts["val"])
    pair_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    whole = count_pairs(original_vectors, groups[items])
    whole_seconds = time.perf_counter() - t0

    grid = sorted({round(float(t), 3) for t in thresholds} | _default_grid(threshold))
    table = []
    for t in grid:
        row: dict[str, Any] = {"threshold": t}
        for split in ("val", "test"):
            point = operating_point(counts[split], t)
            hard = splits[split]["hard_negative_scores"]
            positives = splits[split]["relisted_scores"]
            row[split] = {
                **point,
                "relisted_recall": float((positives >= t).mean()) if len(positives) else 0.0,
                "hard_negatives_above": float((hard >= t).mean()) if len(hard) else 0.0,
            }
        _, whole_false = whole.at(t)
        row["catalog_false_pairs"] = whole_false
        table.append(row)

    test_items = relisted_items["test"]
    test_scores = splits["test"]["relisted_scores"]
    breakdown: dict[str, dict[str, dict]] = {}
    for item, score in zip(test_items, test_scores, strict=True):
        for factor, value in _bucket(relisting_for(seed, int(item))).items():
            cell = breakdown.setdefault(factor, {}).setdefault(value, {"relisted": 0, "found": 0})
            cell["relisted"] += 1
            cell["found"] += int(score >= threshold)
    embedded = originals.images + relistings.images
    embedded_seconds = originals.seconds + relistings.seconds
    result = {
        "model_version": embedder.model_version,
        "visnet": str(visnet),
        "seed": seed,
        "recipe_version": RECIPE_VERSION,
        "target_precision": TARGET_PRECISION,
        "threshold": threshold,
        "target_met_on_val": target_met,
        "val": operating_point(counts["val"], threshold),
        "test": operating_point(counts["test"], threshold),
        "catalog_items": int(len(items)),
        "same_photo_rms": round(same_photo_rms, 2),
        "same_class_rms": same_class_rms(pixels[items], labels[items], seed=seed),
        "fashion_mnist_same_photo_items": int(len(items) - len(np.unique(groups[items]))),
        "catalog_false_pairs_at_threshold": whole.at(threshold)[1],
        "one_percent": _at_one_percent(
            len(items), operating_point(counts["test"], threshold)["recall"], whole.at(threshold)[1]
        ),
        "splits": {
            split: {key: value for key, value in info.items() if key not in ("hard_negative_scores", "relisted_scores")}
            | {
                "hard_negatives_above_threshold": float((info["hard_negative_scores"] >= threshold).mean()),
                "relisted_recall": float((info["relisted_scores"] >= threshold).mean()),
                "relisted_score_quantiles": _quantiles(info["relisted_scores"]),
                "hard_negative_score_quantiles": _quantiles(info["hard_negative_scores"]),
            }
            for split, info in splits.items()
        },
        "table": table,
        "breakdown_test": breakdown,
        "examples_test": [
            {"item": int(test_items[k]), "score": float(test_scores[k])}
            for k in sorted(np.random.default_rng(seed).permutation(len(test_items))[:8].tolist())
        ],
        "top_false_pairs_test": [
            {
                "score": score,
                "items": [int(listing_index["test"][a]), int(listing_index["test"][b])],
                "relisted": [
                    bool(a >= splits["test"]["catalog_items"]),
                    bool(b >= splits["test"]["catalog_items"]),
                ],
                "pixel_rms": round(_rms(pixels[listing_index["test"][a]], pixels[listing_index["test"][b]]), 2),
                "classes": [
                    CLASS_NAMES[int(labels[listing_index["test"][a]])],
                    CLASS_NAMES[int(labels[listing_index["test"][b]])],
                ],
            }
            for score, a, b in counts["test"].top_false
        ],
        "seconds": {
            "embedding": round(embed_seconds, 1),
            "ms_per_image": round(1000 * embedded_seconds / embedded if embedded else 0.0, 2),
            "pairs_halves": round(pair_seconds, 1),
            "pairs_whole_catalog": round(whole_seconds, 1),
            "images_embedded": embedded,
            "images_in_a_first_run": int(len(items) + sum(len(ids) for ids in relisted_items.values())),
            "total": round(time.perf_counter() - started, 1),
        },
        "machine": describe_machine(),
    }
    return result


def _at_one_percent(catalog: int, recall: float, false_pairs: int) -> dict[str, float]:
    """Expected precision on this catalog were 1% of its products listed twice (the test recall, its false pairs)."""
    duplicates = max(1, round(0.01 * catalog))
    found = recall * duplicates
    return {
        "duplicates": duplicates,
        "found": found,
        "precision": found / (found + false_pairs) if found + false_pairs else 1.0,
    }


def _default_grid(threshold: float) -> set[float]:
    around = {round(threshold + delta, 3) for delta in (-0.05, -0.02, -0.01, 0.0, 0.01, 0.02)}
    return {t for t in around | {0.8, 0.9, 0.95} if SCORE_FLOOR <= t < 1.0}


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    if not len(scores):
        return {}
    return {f"p{q}": round(float(np.percentile(scores, q)), 4) for q in (1, 5, 50, 95, 99)}


# -- the report --------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_markdown(result: dict, command: str, sheet: str | None) -> str:
    machine, test, val = result["machine"], result["test"], result["val"]
    split_val, split_test = result["splits"]["val"], result["splits"]["test"]
    lines = [
        "# Near-duplicate products: the threshold",
        "",
        "Generated by `ml/evaluation/near_duplicates.py`:",
        "",
        "```",
        command,
        "```",
        "",
        f"**Threshold {result['threshold']:.3f}** (cosine similarity of two products' image vectors, model "
        f"`{result['model_version']}`): test precision **{_pct(test['precision'])}%**, recall "
        f"**{_pct(test['recall'])}%**, F1 {_pct(test['f1'])}% ({test['duplicate_pairs_found']:,} of "
        f"{test['duplicate_pairs']:,} duplicate pairs found, {test['false_pairs']:,} false pairs among "
        f"{test['flagged_pairs']:,} flagged). It is the lowest threshold (the highest recall) at which the val half "
        f"reached precision >= {result['target_precision']:.2f} "
        + ("(reached)." if result["target_met_on_val"] else "(NOT reached: the most precise threshold instead).")
        + f" Val at that threshold: precision {_pct(val['precision'])}%, recall {_pct(val['recall'])}%.",
        "",
        "The product reads it from `settings.NEAR_DUPLICATE_THRESHOLD` (env `NEAR_DUPLICATE_THRESHOLD`); "
        "`manage.py find_near_duplicates` and the nightly task `catalog.find_near_duplicates` flag every pair of "
        "products whose image vectors score at or above it.",
        "",
        "## The benchmark",
        "",
        f"* Catalog: the demo catalog's first {result['catalog_items']:,} items (Fashion-MNIST test, then train: what "
        "`load_demo_catalog` loads) as the product shows them (dark item on white, 28x28 PNG), split at random "
        f"into a val half ({split_val['catalog_items']:,}) and a test half ({split_test['catalog_items']:,}). "
        f"Two items are the same photo when their pixels differ by at most {result['same_photo_rms']:.1f} grey levels "
        "(RMS): what one JPEG re-encode at quality 75 changes in 95% of the catalog's images. "
        f"{result['fashion_mnist_same_photo_items']:,} of the catalog's items are such a copy of another in "
        "Fashion-MNIST itself; pairs of them count as duplicates.",
        f"* Listed twice: {split_val['relisted_items']:,} val and {split_test['relisted_items']:,} test items get a "
        f"second listing ({split_val['listings']:,} and {split_test['listings']:,} listings per half), made the way "
        "a merchant re-lists an item (`sample_relisting`, recipe version "
        f"{result['recipe_version']}, seed {result['seed']}):",
        "  * re-framed: no change (40%), a crop of up to 6% a side (30%: more cuts the item itself, which makes a "
        "different photo), or a white margin of 2-15% a side (30%: platforms ask for a margin; the item still "
        "fills at least 77% of the frame, where marketplace guidelines ask for about 85%);",
        "  * resized to the platform's size: the longer side log-uniform in 48-800 px with any resampler (nearest, "
        "bilinear, bicubic, Lanczos), 15% kept at 28 px, 20% stretched by up to 8%;",
        "  * re-levelled (50%): gamma 0.75-1.33 and contrast 0.85-1.2 on the ink, a colour cast 30% of those; white "
        "stays white, as marketplaces require a white background (so a re-listing is still a clean product shot, "
        "embedded whole, as ingestion does; `tests/test_near_duplicates.py` checks this against the product's rule);",
        "  * a watermark (30% of those at least 96 px): a shop name or sale badge, semi-transparent (alpha "
        "0.25-0.6), in a corner (70%) or across the middle (30%);",
        "  * re-encoded, always: JPEG quality 35-95 (4:2:0 or 4:4:4), or WebP quality 50-90 (15%).",
        "  A re-shoot of the item (another photo) is not a near-identical image and is not in the benchmark.",
        "* Vectors: the shipped VisNet through `ml.inference` (what ingestion stores for a clean product shot).",
        "* Precision counts **every** pair of listings in the half that scores at or above the threshold: all "
        "items are distractors (same class or not), not one negative per item. A pair is a duplicate when both "
        "listings come from the same pixels. Recall is over all duplicate pairs of the half.",
        "* Hard negatives: each re-listed item's most similar other item of its class (by VisNet) in its half.",
        "* Precision depends on how many products are listed twice: here "
        f"{_pct(split_test['relisted_items'] / split_test['catalog_items'])}% of the items. The false pairs of the "
        "whole catalog (below) do not: they are what a catalog with no duplicate at all would raise.",
        "",
        "## Precision and recall by threshold",
        "",
        "| threshold | val precision | val recall | test precision | test recall | test F1 | test false pairs | "
        "hard negatives above (test) | false pairs in the whole catalog |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["table"]:
        mark = " (chosen)" if abs(row["threshold"] - result["threshold"]) < 1e-9 else ""
        v, t = row["val"], row["test"]
        lines.append(
            f"| {row['threshold']:.3f}{mark} | {_pct(v['precision'])} | {_pct(v['recall'])} | {_pct(t['precision'])} "
            f"| {_pct(t['recall'])} | {_pct(t['f1'])} | {t['false_pairs']:,} | {_pct(t['hard_negatives_above'])}% | "
            f"{row['catalog_false_pairs']:,} |"
        )
    lines += [
        "",
        f"False pairs in the whole catalog: pairs of different items among all {result['catalog_items']:,} "
        "originals (no re-listings) scoring at or above the threshold, i.e. the pairs a merchandiser would dismiss "
        f"on a catalog with no duplicate: **{result['catalog_false_pairs_at_threshold']:,}** at the chosen "
        f"threshold. Were 1% of these products listed twice, the test recall would find "
        f"{result['one_percent']['found']:,.0f} of {result['one_percent']['duplicates']:,} pairs beside these false "
        f"ones: precision {_pct(result['one_percent']['precision'])}%. False pairs grow with the square of the "
        "catalog (pairs of items), duplicates only linearly: choose again for a much larger catalog.",
        "",
        "Scores (test): re-listed item vs its original "
        + ", ".join(f"{k} {v:.3f}" for k, v in split_test["relisted_score_quantiles"].items())
        + "; hardest same-class negative "
        + ", ".join(f"{k} {v:.3f}" for k, v in split_test["hard_negative_score_quantiles"].items())
        + ".",
        "",
        "## Where the misses are (test, at the chosen threshold)",
        "",
        "| what was done | value | re-listed | found |",
        "|---|---|---|---|",
    ]
    for factor, cells in result["breakdown_test"].items():
        for value, cell in sorted(cells.items()):
            lines.append(f"| {factor} | {value} | {cell['relisted']:,} | {_pct(cell['found'] / cell['relisted'])}% |")
    found = [
        (cell["found"] / cell["relisted"], factor, value, cell["relisted"])
        for factor, cells in result["breakdown_test"].items()
        for value, cell in cells.items()
        if cell["relisted"] >= 10
    ]
    worst = ", ".join(f"{factor} {value} ({_pct(share)}% of {n:,})" for share, factor, value, n in sorted(found)[:3])
    lines += [
        "",
        f"Lowest recall: {worst}. VisNet sees an item at the scale at which it fills the frame (the image is padded "
        "to a square and resized), so a margin or a crop moves the vector more than re-encoding does. Trimming a "
        "product shot's plain margin before embedding, at ingestion and search alike, would take margins out of the "
        "vectors; it is not done here because it changes every stored vector and the street-to-shop results.",
    ]
    lines += ["", "## The most similar pairs of different items (test)", ""]
    lines.append(
        "| score | items (Fashion-MNIST index, catalog order) | classes | re-listing? | pixel difference (RMS) |"
    )
    lines.append("|---|---|---|---|---|")
    for pair in result["top_false_pairs_test"]:
        relisted = " / ".join("re-listed" if r else "original" for r in pair["relisted"])
        lines.append(
            f"| {pair['score']:.4f} | {pair['items'][0]}, {pair['items'][1]} | {' / '.join(pair['classes'])} | "
            f"{relisted} | {pair['pixel_rms']:.1f} |"
        )
    lines += [
        "",
        "Pixel difference: between the two items' own 28x28 images (grey levels, RMS; two random items of one class "
        f"differ by {result['same_class_rms'].get('p50', float('nan')):.0f} (median, 1st percentile "
        f"{result['same_class_rms'].get('p1', float('nan')):.0f}), a JPEG re-encode at quality 75 by up to "
        f"{result['same_photo_rms']:.1f}). The most "
        "similar different items are often near-identical pictures in Fashion-MNIST itself (colour variants, or "
        "the same photo with small edits): a person would flag several of them too.",
    ]
    if sheet:
        lines += ["", f"![Re-listings and the most similar different items]({sheet})"]
    seconds = result["seconds"]
    lines += [
        "",
        "## Machine and time",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} torch threads, GPU: "
        f"{machine['gpu']}; torch {machine['torch']}, Python {machine['python']}. Wall time {seconds['total']:.0f} s: "
        f"embedding {seconds['embedding']:.0f} s ({seconds['ms_per_image']:.2f} ms per image where not cached), "
        f"pairs in the halves {seconds['pairs_halves']:.0f} s, pairs in the whole catalog "
        f"{seconds['pairs_whole_catalog']:.0f} s; {seconds['images_embedded']:,} images embedded (the rest were "
        f"cached in var/near-duplicates/). A first run embeds {seconds['images_in_a_first_run']:,} images"
        + (
            f": about {seconds['images_in_a_first_run'] * seconds['ms_per_image'] / 60000:.0f} min at this run's speed."
            if seconds["ms_per_image"]
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def _tile(image: Image.Image, size: int, upscale: Image.Resampling = Image.Resampling.NEAREST) -> Image.Image:
    """The image fitted into a white size x size square (small catalog images enlarged with `upscale`)."""
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), upscale)
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def contact_sheet(result: dict, path: Path, seed: int, examples: int = 8, columns: int = 4) -> Path:
    """Items beside their re-listings (with the score), then the most similar pairs of different items."""
    pixels, _, _ = load_shop()
    tile, pad, label_h = 112, 10, 16
    chosen = result["examples_test"][:examples]
    cell_w, cell_h = 2 * tile + 3 * pad, tile + label_h + pad
    shown_pairs = result["top_false_pairs_test"][:examples]
    section_rows = [(len(chosen) + columns - 1) // columns, (len(shown_pairs) + columns - 1) // columns]
    sheet = Image.new("RGB", (columns * cell_w + pad, sum(section_rows) * cell_h + 2 * (label_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)

    def place(n: int, top: int, left_image: Image.Image, right_image: Image.Image, caption: str) -> None:
        x, y = pad + (n % columns) * cell_w, top + (n // columns) * cell_h
        sheet.paste(left_image, (x, y))
        sheet.paste(right_image, (x + tile + pad, y))
        draw.text((x, y + tile + 2), caption, fill="black")

    top = pad
    caption = "catalog item | its re-listing (longer side, codec, quality, re-framing): score"
    draw.text((pad, top), caption, fill="black")
    top += label_h
    for n, example in enumerate(chosen):
        original, how = catalog_image(pixels[example["item"]]), relisting_for(seed, example["item"])
        relisted = relist(original, how)
        caption = f"{how.side}px {how.codec} q{how.quality} {how.frame}: {example['score']:.3f}"
        place(n, top, _tile(original, tile), _tile(relisted, tile, Image.Resampling.BICUBIC), caption)
    top += section_rows[0] * cell_h + pad
    draw.text((pad, top), "the most similar pairs of different items (test): score", fill="black")
    top += label_h
    for n, pair in enumerate(shown_pairs):
        images = []
        for item, relisted in zip(pair["items"], pair["relisted"], strict=True):
            image = catalog_image(pixels[item])
            images.append(_tile(relist(image, relisting_for(seed, item)) if relisted else image, tile))
        place(n, top, images[0], images[1], f"{pair['score']:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visnet", default="models/visnet-default")
    parser.add_argument(
        "--catalog", type=int, default=20_000, help="the demo catalog's first N items (both halves; all: 70000)"
    )
    parser.add_argument("--relisted", type=int, default=2_000, help="items listed twice (both halves)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="cache folder (default var/near-duplicates)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "near_duplicates.md")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = study(args.visnet, args.catalog, args.relisted, args.seed, args.root, progress=not args.no_progress)
    out = Path(args.out)
    sheet = contact_sheet(result, out.with_suffix(".png"), args.seed)
    command = "nice python -m ml.evaluation.near_duplicates " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(report_markdown(result, command.strip(), sheet.name))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    test = result["test"]
    print(
        f"threshold {result['threshold']:.3f}: test precision {_pct(test['precision'])}%, recall "
        f"{_pct(test['recall'])}%, F1 {_pct(test['f1'])}% ({result['catalog_items']:,} items, "
        f"{result['seconds']['total']:.0f} s); wrote {out}, {out.with_suffix('.json')}, {sheet}"
    )
    return result


if __name__ == "__main__":
    main()
