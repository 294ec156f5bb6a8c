"""Feature caches on disk, shared by training and evaluation: both persist arrays as .npz files written atomically
(a temporary file, then a rename) so an interrupted run never leaves a half-written cache behind.

* `DeepFeatureCache` (training): per image reference, the frozen deep branch's pooled features, the small copies
  the shallow branches see and, for online deep-branch training, the preprocessed uint8 images. One file per
  group of references: <dir>/<group>-<key>-<refs digest>.npz (arrays deep, small[, images]).
* `EmbeddingCache` (evaluation): per embedding method and model version, the final vectors of shop items and
  street crops, grown incrementally: <benchmark root>/features/<method>__<version>__<kind>.npz (ids, vectors).
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ml.devices import autocast_for
from ml.models.visnet import VisNet, preprocess_uint8
from ml.triplets import RefResolver, parse_ref


# -- the shared on-disk store ------------------------------------------------------------------------------
def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to `path` through a per-process temporary file and a rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# -- training: deep-branch features per image reference ------------------------------------------------------
_LOADING: dict = {}  # the DeepFeatureCache whose images the forked loader processes read


def _load_chunk(refs: list[str]) -> np.ndarray:
    cache = _LOADING["cache"]
    return np.stack([preprocess_uint8(image, cache.image_size) for image in cache.load_images(refs)])


class DeepFeatureCache:
    """Pretrained deep-branch features + the shallow branches' small input copies (+ with keep_images, the
    preprocessed uint8 images for online deep-branch training), per image reference.

    The features come from a frozen copy of the model's deep branch taken at construction, so rows added
    after (or during) training never mix fine-tuned features into the cache. Persisted per group as
    <dir>/<group>-<key>-<digest>.npz; the key covers the data hash, the deep branch and the preprocessing, so a
    different benchmark or model config never reuses stale rows. Images are decoded and cropped by
    `workers` forked processes (no CUDA in them) while this process runs the deep branch."""

    FORMAT = 2  # part of the key: bump when the stored arrays change meaning

    def __init__(
        self,
        model: VisNet,
        bench: Any,
        resolver: RefResolver,
        cache_dir: str | Path | None,
        device: torch.device,
        batch_size: int = 128,
        progress: bool = True,
        cpu_bf16: bool = False,
        keep_images: bool = False,
        workers: int | None = None,
    ) -> None:
        self.cpu_bf16, self.keep_images = cpu_bf16, keep_images
        self.extractor = copy.deepcopy(model).eval()
        for parameter in self.extractor.parameters():
            parameter.requires_grad = False
        self.bench, self.resolver = bench, resolver
        self.device, self.batch_size, self.progress = device, batch_size, progress
        self.workers = int(workers) if workers else min(os.cpu_count() or 1, 16)
        cfg = model.config
        self.image_size = cfg.image_size
        factors = cfg.shallow_factors
        self.small_size = max(8, cfg.image_size // min(factors)) if factors else cfg.image_size // 4
        self.cache_dir = Path(cache_dir) if cache_dir else None
        ident = json.dumps(
            [
                bench.data_hash,
                cfg.backbone,
                cfg.image_size,
                cfg.deep_size,
                list(cfg.mean),
                list(cfg.std),
                self.small_size,
                resolver.context,
                self.FORMAT,
                cpu_bf16,
            ]
            + (["images"] if keep_images else []),
            sort_keys=True,
        )
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.rows: dict[str, int] = {}
        self.deep_chunks: list[np.ndarray] = []
        self.small_chunks: list[np.ndarray] = []
        self.image_chunks: list[np.ndarray] = []
        self._deep: torch.Tensor | None = None
        self._small: torch.Tensor | None = None
        self._images_tensor: torch.Tensor | None = None

    def load_images(self, refs: list[str]) -> list:
        """PIL images of refs: shop images, street crops (consecutive crops of one photo decode it once)."""
        out = []
        photo_cache: dict = {}
        for ref in refs:
            kind, _, value = parse_ref(ref)
            if kind == "shop":
                out.append(self.resolver.image(ref))
                continue
            item = self.bench.items[value]
            if item.photo_index not in photo_cache:
                photo_cache = {item.photo_index: self.bench.street_photo(item.photo_index)}
            try:
                out.append(
                    self.bench.street_crop(item, context=self.resolver.context, photo=photo_cache[item.photo_index])
                )
            except TypeError:
                out.append(self.bench.street_crop(item, context=self.resolver.context))
        return out

    def _image_batches(self, refs: list[str]) -> Iterator[np.ndarray]:
        """uint8 [n, S, S, 3] batches in the order of refs (street refs sorted by photo: each photo decoded once)."""
        chunks = [refs[start : start + self.batch_size] for start in range(0, len(refs), self.batch_size)]
        _LOADING["cache"] = self  # inherited by the forked workers
        try:
            if self.workers <= 1 or len(chunks) < 8:
                yield from map(_load_chunk, chunks)
            else:
                with multiprocessing.get_context("fork").Pool(self.workers) as pool:
                    yield from pool.imap(_load_chunk, chunks)
        finally:
            _LOADING.pop("cache", None)  # do not keep this cache (and its model copy) alive

    @torch.inference_mode()
    def _compute(self, refs: list[str], desc: str) -> dict[str, np.ndarray]:
        deep, small, images = [], [], []
        bar = tqdm(total=len(refs), desc=f"deep features {desc}", unit="img", disable=not self.progress, mininterval=2)
        for array in self._image_batches(refs):
            chw = torch.from_numpy(array).permute(0, 3, 1, 2)
            batch = chw.to(self.device).float().div_(255.0)
            with autocast_for(self.device, self.cpu_bf16):
                feats = self.extractor.deep_features(batch)
            deep.append(feats.float().cpu().numpy().astype(np.float16))
            small.append(F.adaptive_avg_pool2d(batch, self.small_size).cpu().numpy().astype(np.float16))
            if self.keep_images:
                images.append(chw.contiguous().numpy())
            bar.update(len(array))
        bar.close()
        out = {"deep": np.concatenate(deep), "small": np.concatenate(small)}
        if self.keep_images:
            out["images"] = np.concatenate(images)
        return out

    def _order_key(self, ref: str) -> tuple[int, int]:
        kind, _, value = parse_ref(ref)
        return (0, 0) if kind == "shop" else (1, self.bench.items[value].photo_index)

    def ensure(self, refs: Iterable[str], group: str) -> None:
        """Add the rows of refs not cached yet: from <dir>/<group>-<key>-<digest>.npz, or computed and saved."""
        todo = sorted((r for r in dict.fromkeys(refs) if r not in self.rows), key=self._order_key)
        if not todo:
            return
        path = None
        if self.cache_dir:
            digest = hashlib.sha256("\n".join(todo).encode()).hexdigest()[:10]
            path = self.cache_dir / f"{group}-{self.key}-{digest}.npz"
        if path is not None and path.exists():
            data = load_npz(path)
        else:
            data = self._compute(todo, group)
            if path is not None:
                save_npz_atomic(path, **data)
        base = sum(len(c) for c in self.deep_chunks)
        for i, r in enumerate(todo):
            self.rows[r] = base + i
        self.deep_chunks.append(data["deep"])
        self.small_chunks.append(data["small"])
        if self.keep_images:
            self.image_chunks.append(data["images"])
        self._deep = self._small = self._images_tensor = None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep features float32 [N, D], small copies float16 [N, 3, s, s]) of every cached row."""
        if self._deep is None or self._small is None:
            self._deep = torch.from_numpy(np.concatenate(self.deep_chunks).astype(np.float32))
            self._small = torch.from_numpy(np.concatenate(self.small_chunks))
        return self._deep, self._small

    def images(self, device: torch.device | None = None) -> torch.Tensor:
        """The preprocessed images, uint8 [N, 3, S, S] (keep_images only); for a GPU `device` they move there
        once and stay (batches are then gathered on the GPU), otherwise they stay in host memory."""
        if not self.keep_images:
            raise ValueError("this DeepFeatureCache keeps no images (keep_images=False)")
        if self._images_tensor is None:
            self._images_tensor = torch.from_numpy(np.concatenate(self.image_chunks))
        if device is not None and device.type == "cuda" and self._images_tensor.device != device:
            self._images_tensor = self._images_tensor.to(device)
        return self._images_tensor

    def index(self, refs: Iterable[str]) -> torch.Tensor:
        return torch.tensor([self.rows[r] for r in refs], dtype=torch.long)


# -- evaluation: final embeddings per method ------------------------------------------------------------------
@dataclass
class EmbeddingCache:
    """Vectors of shop items / street items for one embedder, stored incrementally as .npz (ids + vectors)."""

    benchmark: Any
    embedder: Any
    method: str
    context: float = 0.1
    batch: int = 256
    progress: bool = True
    seconds: float = 0.0
    images: int = 0
    _memory: dict = field(default_factory=dict)

    def _path(self, kind: str) -> Path:
        version = safe_name(str(getattr(self.embedder, "model_version", self.method)))
        return Path(self.benchmark.root) / "features" / f"{safe_name(self.method)}__{version}__{kind}.npz"

    def _known(self, kind: str) -> dict:
        if kind not in self._memory:
            path = self._path(kind)
            stored = load_npz(path) if path.exists() else None
            self._memory[kind] = dict(zip(stored["ids"].tolist(), stored["vectors"], strict=True)) if stored else {}
        return self._memory[kind]

    def _embed_missing(self, kind: str, missing: list[int], load_images: Callable[[list[int]], list]) -> None:
        known, path = self._known(kind), self._path(kind)
        bar = tqdm(
            total=len(missing), desc=f"{self.method} {kind}", unit="img", file=sys.stderr, disable=not self.progress
        )
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            images = load_images(chunk)
            started = time.perf_counter()
            vectors = np.asarray(self.embedder.embed(images), dtype=np.float32)
            self.seconds += time.perf_counter() - started
            self.images += len(images)
            known.update(zip(chunk, vectors, strict=True))
            bar.update(len(chunk))
            if (start // self.batch) % 8 == 7:  # save as we go: an interrupted run resumes
                self._save(path, known)
        bar.close()
        self._save(path, known)

    def _get(self, kind: str, ids: np.ndarray, load_images: Callable[[list[int]], list]) -> np.ndarray:
        known = self._known(kind)
        missing = [int(i) for i in ids if int(i) not in known]
        if missing:
            self._embed_missing(kind, missing, load_images)
        return np.stack([known[int(i)] for i in ids]) if len(ids) else np.zeros((0, 0), dtype=np.float32)

    @staticmethod
    def _save(path: Path, known: dict) -> None:
        all_ids = np.array(sorted(known), dtype=np.int64)
        save_npz_atomic(path, ids=all_ids, vectors=np.stack([known[i] for i in all_ids.tolist()]))

    def shop(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._get("shop", np.asarray(indices), self.benchmark.shop_images)

    def street(self, item_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        items = self.benchmark.items
        return self._get(
            f"street-ctx{self.context:g}",
            np.asarray(item_indices),
            lambda ids: self.benchmark.street_crops([items[i] for i in ids], context=self.context),
        )

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.seconds / self.images if self.images else float("nan")
