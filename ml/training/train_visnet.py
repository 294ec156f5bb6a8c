"""Train VisNet on the street-to-shop benchmark.

    python -m ml.training.train_visnet --config configs/visnet.yaml [--size small|full] [--out DIR]
        [--approved-triplets FILE] [--triplets FILE] [--epochs N]

Frozen deep branch: its pooled features for every image involved (shop items and street crops) are computed
once and cached on disk (var/visnet-cache/), together with the small copies the shallow branches see; training
then only runs the shallow branches and the projection, which takes minutes on 2 CPU cores. On a GPU
(train.train_last_blocks: auto or N) the deep branch's blocks are trained too: the cache then keeps the
preprocessed images (uint8, on the GPU) and every step runs the whole model over them, in bfloat16.

Artifacts (--out): weights.pt (VisNet weights minus the packaged backbone, plus its trained blocks), config.json,
metrics.json, data_hash, model_version, training_curves.png, triplets.jsonl.gz is NOT written (the mined
triplets go to --triplets-out when asked).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from ml.models.visnet import VisNet, VisNetConfig, preprocess_uint8, triplet_loss
from ml.triplets import (MinedTriplet, RefResolver, load_triplets, mine_catalog_triplets, mine_street_triplets,
                         parse_ref, save_triplets, shop_ref, street_ref, triplets_hash)

ROOT = Path(__file__).resolve().parents[2]

DEFAULTS: dict = {
    "data": {
        "source": "street2shop",  # or "synthetic"
        "size": "full",
        "seed": 0,
        "context": 0.1,
        "max_train_queries": None,
        "train_pool_extra": 4000,  # extra random train shop items (distractors) besides the positives
        "max_val_queries": None,
        "test_eval": True,
        "max_test_queries": None,
        "cache_dir": None,
        "loader_workers": None,  # processes decoding and cropping images for the cache (None: min(CPUs, 16))
    },
    "model": VisNetConfig().to_dict(),
    "mining": {
        "weights": {"colour_hist": 0.25, "pixels": 1.0, "edges": 1.0, "cnn": 2.0},
        "street_hard_negatives": 4,
        "street_hard_k": 20,
        "street_out_of_class": 1,
        "catalog_anchors": 2000,
        "catalog_positives": 1,
        "catalog_in_class": 1,
        "catalog_out_of_class": 1,
        "remine": True,  # re-mine the street hard negatives with the current model after each epoch
        "remine_k": 10,
    },
    "train": {
        "epochs": 10,
        "batch_size": 256,
        "lr": 0.003,
        "weight_decay": 0.0001,
        "margin": 0.2,
        "mix": {"street": 1.0, "catalog": 0.2},
        "curriculum_epochs": 1,  # first epochs: out-of-class / random negatives only
        "augment": True,
        "occlude": 0.0,  # probability that an anchor gets an edge strip of another image laid over it
        # 0: frozen deep branch with cached features; N / "all": its last N / all blocks are trained, online from
        # the cached preprocessed images; "auto": all on a GPU, 0 on CPUs
        "train_last_blocks": "auto",
        "deep_lr_scale": 0.1,  # learning rate of the trained deep blocks relative to train.lr
        "device": "auto",
        "seed": 0,
        "threads": None,
        "time_budget_s": None,
        "max_steps_per_epoch": None,
        "cpu_bf16": "auto",  # bfloat16 autocast on CPUs that support it (features cache and training steps)
        "class_batches": False,  # batches drawn from one class at a time
        "batch_negatives": False,  # every other image in the batch is a negative too (batch-all triplet hinge)
        "negatives": "all",  # with batch_negatives: "all" active in-batch negatives, or each anchor's "hardest"
        # False: batches of (anchor, positive) pairs only, the other positives in the batch being the negatives
        # (needs batch_negatives); the mined negatives then only pick which pairs are trained
        "mined_negatives": True,
    },
}


# -- config ----------------------------------------------------------------------------------------
def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "weights":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; `extends: other.yaml` (relative to this file) is read first and overridden by this one."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config extends itself: {' -> '.join(str(p) for p in seen + (path,))}")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    parent = data.pop("extends", None)
    if parent:
        data = _merge(_read_config_file(path.parent / parent, seen + (path,)), data)
    return data


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    data = _read_config_file(Path(path)) if path else {}
    config = _merge(DEFAULTS, data)
    return _merge(config, overrides or {})


def resolve_device(name: str) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16_supported() -> bool:
    """bfloat16 matmuls/convolutions are fast on this CPU (AVX512-BF16 / AMX): about 2x for training here."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device, cpu_bf16: bool):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=cuda_amp_dtype())
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16)


def resolve_last_blocks(value, model: VisNet, cuda: bool) -> int:
    """How many of the deep branch's last blocks train (0: frozen, features cached)."""
    if value in (None, "auto"):
        value = "all" if cuda else 0
    if value == "all":
        return len(model.deep.blocks) if hasattr(model.deep, "blocks") else 1
    return int(value)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- data ------------------------------------------------------------------------------------------
def load_bench(data_cfg: dict, progress: bool = True):
    if data_cfg["source"] == "synthetic":
        from ml.training.synthetic import build_synthetic_benchmark

        return build_synthetic_benchmark(data_cfg.get("size", "tiny"), seed=data_cfg["seed"])
    from ml.data.street2shop import build_benchmark

    return build_benchmark(size=data_cfg["size"], seed=data_cfg["seed"], progress=progress)


def query_indices(bench, split: str) -> np.ndarray:
    if hasattr(bench, "query_indices"):
        return np.asarray(bench.query_indices(split), dtype=np.int64)
    return np.array([i for i, it in enumerate(bench.items) if it.split == split], dtype=np.int64)


def _subsample(indices: np.ndarray, limit, seed: int) -> np.ndarray:
    if limit is None or limit >= len(indices):
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(indices, int(limit), replace=False))


_LOADING: dict = {}  # the FeatureCache whose images the forked loader processes read


def _load_chunk(refs: list[str]) -> np.ndarray:
    cache = _LOADING["cache"]
    return np.stack([preprocess_uint8(image, cache.image_size) for image in cache._images(refs)])


class FeatureCache:
    """Pretrained deep-branch features + the shallow branches' small input copies (+ with keep_images, the
    preprocessed uint8 images for online deep-branch training), per image reference.

    The features come from a frozen copy of the model's deep branch taken at construction, so rows added
    after (or during) training never mix fine-tuned features into the cache. Persisted per group as
    <dir>/<group>-<key>.npz; the key covers the data hash, the deep branch and the preprocessing, so a
    different benchmark or model config never reuses stale rows. Images are decoded and cropped by
    `workers` forked processes (no CUDA in them) while this process runs the deep branch."""

    def __init__(self, model: VisNet, bench, resolver: RefResolver, cache_dir: Path | None, device: torch.device,
                 batch_size: int = 128, progress: bool = True, cpu_bf16: bool = False, keep_images: bool = False,
                 workers: int | None = None):
        self.cpu_bf16, self.keep_images = cpu_bf16, keep_images
        self.extractor = copy.deepcopy(model).eval()
        for parameter in self.extractor.parameters():
            parameter.requires_grad = False
        self.bench, self.resolver = bench, resolver
        self.device, self.batch_size, self.progress = device, batch_size, progress
        self.workers = int(workers) if workers else min(os.cpu_count() or 1, 16)
        cfg = model.config
        self.image_size = cfg.image_size
        self.small_size = max(8, cfg.image_size // min(cfg.shallow_factors)) if cfg.shallow_factors else cfg.image_size // 4
        self.cache_dir = Path(cache_dir) if cache_dir else None
        ident = json.dumps([bench.data_hash, cfg.backbone, cfg.image_size, cfg.deep_size, list(cfg.mean),
                            list(cfg.std), self.small_size, resolver.context, 2, cpu_bf16]
                           + (["images"] if keep_images else []), sort_keys=True)
        self.key = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.rows: dict[str, int] = {}
        self.deep_chunks: list[np.ndarray] = []
        self.small_chunks: list[np.ndarray] = []
        self.image_chunks: list[np.ndarray] = []
        self._deep = self._small = self._images_tensor = None

    def _images(self, refs: list[str]):
        out = []
        photo_cache: dict = {}
        for ref in refs:
            kind, _, value = parse_ref(ref)
            if kind == "shop":
                out.append(self.resolver.image(ref))
            else:
                item = self.bench.items[value]
                if item.photo_index not in photo_cache:
                    photo_cache = {item.photo_index: self.bench.street_photo(item.photo_index)}
                try:
                    out.append(self.bench.street_crop(item, context=self.resolver.context, photo=photo_cache[item.photo_index]))
                except TypeError:
                    out.append(self.bench.street_crop(item, context=self.resolver.context))
        return out

    def _image_batches(self, refs: list[str]):
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

    def ensure(self, refs, group: str) -> None:
        refs = [r for r in dict.fromkeys(refs) if r not in self.rows]
        if not refs:
            return
        def order_key(r):
            kind, _, v = parse_ref(r)
            return (0, 0) if kind == "shop" else (1, self.bench.items[v].photo_index)
        refs.sort(key=order_key)
        path = None
        if self.cache_dir:
            digest = hashlib.sha256("\n".join(refs).encode()).hexdigest()[:10]
            path = self.cache_dir / f"{group}-{self.key}-{digest}.npz"
        if path is not None and path.exists():
            with np.load(path) as stored:
                data = {name: stored[name] for name in stored.files}
        else:
            data = self._compute(refs, group)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, **data)
                os.replace(tmp, path)
        base = sum(len(c) for c in self.deep_chunks)
        for i, r in enumerate(refs):
            self.rows[r] = base + i
        self.deep_chunks.append(data["deep"])
        self.small_chunks.append(data["small"])
        if self.keep_images:
            self.image_chunks.append(data["images"])
        self._deep = self._small = self._images_tensor = None

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._deep is None:
            self._deep = torch.from_numpy(np.concatenate(self.deep_chunks).astype(np.float32))
            self._small = torch.from_numpy(np.concatenate(self.small_chunks))
        return self._deep, self._small

    def images(self, device: torch.device | None = None) -> torch.Tensor:
        """The preprocessed images, uint8 [N, 3, S, S] (keep_images only); for a GPU `device` they move there
        once and stay (batches are then gathered on the GPU), otherwise they stay in host memory."""
        if not self.keep_images:
            raise ValueError("this FeatureCache keeps no images (keep_images=False)")
        if self._images_tensor is None:
            self._images_tensor = torch.from_numpy(np.concatenate(self.image_chunks))
        if device is not None and device.type == "cuda" and self._images_tensor.device != device:
            self._images_tensor = self._images_tensor.to(device)
        return self._images_tensor

    def index(self, refs) -> torch.Tensor:
        return torch.tensor([self.rows[r] for r in refs], dtype=torch.long)


# -- augmentation (on the small shallow-branch copies) ----------------------------------------------
def augment_small(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Street-like jitter for [B,3,s,s] in [0,1]: small shift/scale/rotation, colour gain, contrast, blur, noise."""
    b = x.shape[0]
    device = x.device
    angle = (torch.rand(b, device=device) - 0.5) * 2 * math.radians(10) * strength
    scale = 1 + (torch.rand(b, device=device) - 0.5) * 0.2 * strength
    shift = (torch.rand(b, 2, device=device) - 0.5) * 0.16 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 1 + (torch.rand(b, 3, 1, 1, device=device) - 0.5) * 0.3 * strength
    contrast = 1 + (torch.rand(b, 1, 1, 1, device=device) - 0.5) * 0.4 * strength
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    x = x * gain
    if strength > 0:
        blur = torch.rand(b, device=device) < 0.3
        if blur.any():
            x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        x = x + torch.randn_like(x) * 0.02 * strength
    return x.clamp(0, 1)


def occlude_edges(x: torch.Tensor, probability: float, max_fraction: float = 0.35) -> torch.Tensor:
    """Street-like occlusion for [B,3,s,s]: with `probability`, a strip along one random edge (up to
    `max_fraction` of the side) is replaced by the same region of another image in the batch, as the
    benchmark's occluders are patches of background laid over an item's edge."""
    b, _, height, width = x.shape
    if probability <= 0 or b < 2:
        return x
    device = x.device
    hit = torch.rand(b, device=device) < probability
    fraction = 0.1 + torch.rand(b, device=device) * (max_fraction - 0.1)
    edge = torch.randint(0, 4, (b,), device=device)  # left, right, top, bottom
    cols = torch.arange(width, device=device).float().add_(0.5).div_(width)[None, :]
    rows = torch.arange(height, device=device).float().add_(0.5).div_(height)[:, None]
    f = fraction[:, None, None]
    strip = torch.stack([cols.expand(height, width), 1 - cols.expand(height, width),
                         rows.expand(height, width), 1 - rows.expand(height, width)])[edge] < f
    mask = (strip & hit[:, None, None])[:, None]
    return torch.where(mask, x.roll(1, dims=0), x)


# -- evaluation ------------------------------------------------------------------------------------
@torch.inference_mode()
def embed_refs(model: VisNet, cache: FeatureCache, refs, device, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings of cached refs: from the cached deep features while the deep branch is frozen, else the whole
    model over the cached images."""
    idx = cache.index(refs)
    out = []
    model.eval()
    if model.deep_frozen:
        deep, small = cache.tensors()
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size]
            out.append(model.forward_from_deep_features(deep[sel].to(device), small[sel].float().to(device)).float().cpu())
    else:
        images = cache.images(device)
        for start in range(0, len(idx), batch_size):
            sel = idx[start : start + batch_size].to(images.device)
            out.append(model(images[sel].to(device).float().div_(255.0)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.embedding_dim)


def recall_at_k(query_emb: torch.Tensor, gallery_emb: torch.Tensor, gt_positions: np.ndarray,
                ks=(1, 5, 20)) -> dict[str, float]:
    """Exact-match Recall@K: fraction of queries whose own gallery item ranks within the top K."""
    gt = torch.as_tensor(gt_positions, dtype=torch.long)
    ranks = []
    for start in range(0, len(query_emb), 1024):
        sim = query_emb[start : start + 1024] @ gallery_emb.T
        g = gt[start : start + 1024]
        target = sim.gather(1, g[:, None])
        ranks.append((sim > target).sum(dim=1))
    rank = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    out = {f"recall@{k}": float((rank < k).float().mean()) if len(rank) else 0.0 for k in ks}
    out["median_rank"] = float(rank.float().median() + 1) if len(rank) else 0.0
    out["queries"] = int(len(rank))
    return out


class SplitEval:
    def __init__(self, bench, split: str, query_idx: np.ndarray):
        self.split = split
        self.gallery = np.asarray(bench.gallery_indices(split), dtype=np.int64)
        pos = {int(s): j for j, s in enumerate(self.gallery)}
        self.query_idx = np.array([q for q in query_idx if int(bench.items[q].shop_index) in pos], dtype=np.int64)
        self.gt = np.array([pos[int(bench.items[q].shop_index)] for q in self.query_idx], dtype=np.int64)
        self.gallery_refs = [shop_ref(bench, i) for i in self.gallery]
        self.query_refs = [street_ref(bench, q) for q in self.query_idx]

    def run(self, model, cache, device) -> dict:
        g = embed_refs(model, cache, self.gallery_refs, device)
        q = embed_refs(model, cache, self.query_refs, device)
        result = recall_at_k(q, g, self.gt)
        result["gallery"] = int(len(self.gallery))
        return result


def deep_only_baseline(cache: FeatureCache, ev: SplitEval) -> dict:
    deep, _ = cache.tensors()
    g = F.normalize(deep[cache.index(ev.gallery_refs)], dim=1)
    q = F.normalize(deep[cache.index(ev.query_refs)], dim=1)
    return recall_at_k(q, g, ev.gt)


# -- mining with BISS ------------------------------------------------------------------------------
def biss_pool_features(bench, pool: np.ndarray, cache: FeatureCache, weights: dict) -> np.ndarray:
    from ml.biss import ColourHistogramScorer, EdgeOrientationScorer, EnsembleScorer, PixelScorer

    images = [bench.shop_image(int(i)) for i in pool]
    sets, ws = [], []
    for scorer in (ColourHistogramScorer(), PixelScorer(), EdgeOrientationScorer()):
        w = float(weights.get(scorer.name, 0))
        if w > 0:
            sets.append(scorer.features(images))
            ws.append(w)
    w = float(weights.get("cnn", 0))
    if w > 0:
        deep, _ = cache.tensors()
        sets.append(deep[cache.index([shop_ref(bench, i) for i in pool])].numpy())
        ws.append(w)
    return EnsembleScorer.combine(sets, ws).astype(np.float32)


@torch.inference_mode()
def remine_street(model, cache, bench, street: list[MinedTriplet], pool: np.ndarray, k: int, per_anchor: int,
                  device, seed: int) -> list[MinedTriplet]:
    """Hard in-class negatives by the current model: nearest same-class pool items to each street anchor."""
    rng = np.random.default_rng(seed)
    pool_refs = [shop_ref(bench, i) for i in pool]
    labels = np.asarray(bench.shop_labels)[pool]
    g = embed_refs(model, cache, pool_refs, device)
    anchors = list(dict.fromkeys((t.anchor, t.positive) for t in street))
    ref_pos = {r: j for j, r in enumerate(pool_refs)}
    a_emb = embed_refs(model, cache, [a for a, _ in anchors], device)
    out = []
    pos_idx = np.array([ref_pos[p] for _, p in anchors])
    for cls in np.unique(labels[pos_idx]):
        members = np.flatnonzero(labels == cls)
        rows = np.flatnonzero(labels[pos_idx] == cls)
        sim = a_emb[rows] @ g[members].T
        sim[torch.as_tensor(members[None, :] == pos_idx[rows][:, None])] = -float("inf")
        top = torch.topk(sim, min(k, len(members) - 1), dim=1).indices.numpy()
        for r, row in enumerate(rows):
            a, p = anchors[row]
            choice = rng.choice(top[r], min(per_anchor, top.shape[1]), replace=False)
            for n in choice:
                out.append(MinedTriplet(a, p, pool_refs[members[n]], "street", "visnet:remined",
                                        negative_score=float(sim[r, n]), negative_kind="in_class"))
    return out


def batch_triplet_loss(anchors: torch.Tensor, candidates: torch.Tensor, positive_rows: torch.Tensor,
                       candidate_rows: torch.Tensor, margin: float, hardest: bool = False) -> torch.Tensor:
    """Triplet hinge on squared distances, max(0, m + ||a-p||^2 - ||a-n||^2), over every anchor and the
    negatives in the batch: candidates = [positives; mined negatives]; anchor i's positive is candidates[i];
    every candidate that is not the same image as that positive is a negative. hardest=False: mean over the
    active (anchor, negative) terms; hardest=True: each anchor's hardest negative only, mean over anchors."""
    b = anchors.shape[0]
    # ||a||^2 + ||c||^2 - 2 a.c: a [b, c] matmul instead of a [b, c, dim] difference tensor
    d = (anchors.pow(2).sum(1)[:, None] + candidates.pow(2).sum(1)[None, :] - 2 * anchors @ candidates.T).clamp(min=0)
    d_pos = d[torch.arange(b), torch.arange(b)]
    negative = candidate_rows[None, :] != positive_rows[:, None]
    terms = F.relu(margin + d_pos[:, None] - d) * negative
    if hardest:
        return terms.amax(dim=1).mean()
    active = (terms > 0).sum().clamp(min=1)
    return terms.sum() / active


# -- training --------------------------------------------------------------------------------------
def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(epochs, [h["loss"] for h in history], marker="o")
    axes[0].set_title("triplet loss")
    axes[0].set_xlabel("epoch")
    for k in ("recall@1", "recall@5", "recall@20"):
        axes[1].plot(epochs, [h["val"][k] for h in history], marker="o", label=k)
    axes[1].set_title("val street->shop recall")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(config: dict, out_dir: str | Path, bench=None, triplets: list[MinedTriplet] | None = None,
          triplets_source: str = "mined", progress: bool = True) -> dict:
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_cfg, train_cfg, mine_cfg = config["data"], config["train"], config["mining"]
    pairs_only = not train_cfg.get("mined_negatives", True)
    if pairs_only and not train_cfg.get("batch_negatives"):  # before any feature caching or mining
        raise ValueError("train.mined_negatives: false needs train.batch_negatives: true")
    seed_everything(int(train_cfg["seed"]))
    if train_cfg.get("threads"):
        torch.set_num_threads(int(train_cfg["threads"]))
    device = resolve_device(train_cfg["device"])
    cuda = device.type == "cuda"
    model_cfg = VisNetConfig.from_dict(config["model"])
    model = VisNet(model_cfg).to(device)
    # a trained deep branch cannot use cached features: it runs online over the cached images (pays off on a GPU)
    last_blocks = resolve_last_blocks(train_cfg.get("train_last_blocks", "auto"), model, cuda)
    online = last_blocks > 0
    timings = {}

    bench = bench if bench is not None else load_bench(data_cfg, progress)
    resolver = RefResolver(bench, context=float(data_cfg["context"]))
    cache_dir = data_cfg.get("cache_dir") or (Path(os.environ.get("VAR_DIR") or ROOT / "var") / "visnet-cache")
    cpu_bf16 = not cuda and train_cfg.get("cpu_bf16", "auto") in ("auto", True) and cpu_bf16_supported()
    if not cuda:
        model = model.to(memory_format=torch.channels_last)
    cache = FeatureCache(model, bench, resolver, cache_dir, device, batch_size=256 if cuda else 128, progress=progress,
                         cpu_bf16=cpu_bf16, keep_images=online, workers=data_cfg.get("loader_workers"))
    if online:
        model.freeze_deep(True, train_last_blocks=last_blocks)

    # evaluation sets
    val_eval = SplitEval(bench, "val", _subsample(query_indices(bench, "val"), data_cfg.get("max_val_queries"), 1))
    t0 = time.monotonic()
    cache.ensure(val_eval.gallery_refs + val_eval.query_refs, "val")

    # training triplets
    if triplets is None:
        train_q = _subsample(query_indices(bench, "train"), data_cfg.get("max_train_queries"), 2)
        positives = np.unique([bench.items[q].shop_index for q in train_q]).astype(np.int64)
        train_shop = np.flatnonzero(np.asarray(bench.shop_split) == "train")
        rng = np.random.default_rng(3)
        extra_n = int(data_cfg.get("train_pool_extra") or 0)
        rest = np.setdiff1d(train_shop, positives)
        extra = rng.choice(rest, min(extra_n, len(rest)), replace=False) if extra_n and len(rest) else np.zeros(0, np.int64)
        pool = np.sort(np.concatenate([positives, extra]).astype(np.int64))
        cache.ensure([shop_ref(bench, i) for i in pool] + [street_ref(bench, q) for q in train_q], "train")
        timings["cache_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        feats = biss_pool_features(bench, pool, cache, mine_cfg["weights"])
        street = mine_street_triplets(bench, "train", features=feats, pool=pool, queries=train_q,
                                      hard_negatives=int(mine_cfg["street_hard_negatives"]),
                                      hard_k=int(mine_cfg["street_hard_k"]),
                                      out_of_class_negatives=int(mine_cfg["street_out_of_class"]), seed=4)
        catalog = []
        if float(train_cfg["mix"].get("catalog", 0)) > 0 and mine_cfg.get("catalog_anchors"):
            catalog = mine_catalog_triplets(bench, "train", features=feats, pool=pool,
                                            anchors=int(mine_cfg["catalog_anchors"]),
                                            positives_per_anchor=int(mine_cfg["catalog_positives"]),
                                            in_class_negatives=int(mine_cfg["catalog_in_class"]),
                                            out_of_class_negatives=int(mine_cfg["catalog_out_of_class"]), seed=5)
        triplets = street + catalog
        timings["mining_s"] = round(time.monotonic() - t1, 1)
    else:
        refs = [r for t in triplets for r in (t.anchor, t.positive, t.negative)]
        cache.ensure(refs, "triplets")
        shop_refs = {r for r in refs if r.startswith("shop:")}
        pool = np.array(sorted(resolver.shop_index(r) for r in shop_refs), dtype=np.int64)
        timings["cache_s"] = round(time.monotonic() - t0, 1)
    if not triplets:
        raise ValueError("no training triplets")
    trip_hash = triplets_hash(triplets)

    street_all = [t for t in triplets if t.kind == "street"]
    catalog_all = [t for t in triplets if t.kind == "catalog"]
    if pairs_only:
        street_all = list({(t.anchor, t.positive): t for t in street_all}.values())
        catalog_all = list({(t.anchor, t.positive): t for t in catalog_all}.values())
    baseline_val = deep_only_baseline(cache, val_eval)

    lr = float(train_cfg["lr"])
    deep_lr = lr * float(train_cfg.get("deep_lr_scale", 0.1))
    head_params = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("deep.")]
    deep_params = [p for p in model.deep.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": lr}] + ([{"params": deep_params, "lr": deep_lr}] if deep_params else [])
    optimiser = torch.optim.AdamW(groups, lr=lr, weight_decay=float(train_cfg["weight_decay"]))
    epochs = int(train_cfg["epochs"])
    batch_size = int(train_cfg["batch_size"])
    margin = float(train_cfg["margin"])
    mix = train_cfg["mix"]
    n_street = int(round(len(street_all) * float(mix.get("street", 1.0))))
    n_catalog = int(round(len(street_all if street_all else catalog_all) * float(mix.get("catalog", 0))))
    n_catalog = min(n_catalog, len(catalog_all))
    steps_per_epoch = max(1, math.ceil((n_street + n_catalog) / batch_size))
    if train_cfg.get("class_batches"):
        steps_per_epoch += len(np.unique(bench.shop_labels))  # one partial batch per class
    if train_cfg.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(train_cfg["max_steps_per_epoch"]))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in groups],
                                                    total_steps=epochs * steps_per_epoch, pct_start=0.15)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and cuda_amp_dtype() == torch.float16)
    deep_all, small_all = cache.tensors()
    images_all = cache.images(device) if online else None
    rng = np.random.default_rng(int(train_cfg["seed"]))
    history, best, best_state = [], -1.0, None
    street_current = street_all
    budget = train_cfg.get("time_budget_s")
    train_started = time.monotonic()
    for epoch in range(1, epochs + 1):
        model.train()
        model.deep.eval()  # its batch norms keep the pretrained statistics, trained blocks included
        easy = epoch <= int(train_cfg.get("curriculum_epochs") or 0)
        pick_street = [t for t in street_current if not easy or t.negative_kind == "out_of_class"] or street_current
        pick_cat = [t for t in catalog_all if not easy or t.negative_kind == "out_of_class"] or catalog_all
        chosen = [pick_street[i] for i in rng.permutation(len(pick_street))[:n_street]]
        if n_catalog and pick_cat:
            chosen += [pick_cat[i] for i in rng.choice(len(pick_cat), min(n_catalog, len(pick_cat)), replace=False)]
        if train_cfg.get("class_batches"):
            # every batch from one class (of the positive): the in-batch negatives are then all in-class, hard ones
            labels = np.array([int(bench.shop_labels[resolver.shop_index(t.positive)]) for t in chosen])
            batches = []
            for cls in np.unique(labels):
                members = rng.permutation(np.flatnonzero(labels == cls))
                batches += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
            order = np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else np.zeros(0, int)
            bounds = np.cumsum([0] + [len(batches[i]) for i in range(len(batches))])
        else:
            order = rng.permutation(len(chosen))
            bounds = None
        a_idx = cache.index([chosen[i].anchor for i in order])
        p_idx = cache.index([chosen[i].positive for i in order])
        n_idx = cache.index([chosen[i].negative for i in order])
        is_street = torch.tensor([chosen[i].kind == "street" for i in order])
        total, count = 0.0, 0
        if bounds is not None:
            # batch boundaries follow the class groups (sizes are only known now)
            sizes = []
            labels_sorted = labels[order]
            start = 0
            while start < len(order):
                end = min(start + batch_size, len(order))
                cls_end = start + int(np.argmax(labels_sorted[start:] != labels_sorted[start])) if (labels_sorted[start:] != labels_sorted[start]).any() else len(order)
                end = min(end, cls_end)
                sizes.append((start, end))
                start = end
        else:
            sizes = [(i, min(i + batch_size, len(order))) for i in range(0, len(order), batch_size)]
        sizes = sizes[:steps_per_epoch]
        bar = tqdm(sizes, desc=f"epoch {epoch}/{epochs}", disable=not progress, mininterval=2)
        for step, (lo, hi) in enumerate(bar):
            sl = slice(lo, hi)
            if hi - lo < 2:
                continue
            idx = torch.cat([a_idx[sl], p_idx[sl]] + ([] if pairs_only else [n_idx[sl]]))
            b = len(a_idx[sl])
            if online:
                deep = None
                inputs = images_all[idx.to(images_all.device)].to(device, non_blocking=True).float().div_(255.0)
            else:
                deep = deep_all[idx].to(device, non_blocking=True)
                inputs = small_all[idx].float().to(device, non_blocking=True)
            if train_cfg.get("augment", True):
                # anchors: street crops get mild jitter, catalog anchors street-like jitter; shop images mild
                street_anchor = is_street[sl].to(device)
                anchors = inputs[:b]
                inputs[:b] = torch.where(street_anchor[:, None, None, None], augment_small(anchors, 0.5),
                                         augment_small(anchors, 1.0))
                inputs[:b] = occlude_edges(inputs[:b], float(train_cfg.get("occlude") or 0))
                inputs[b:] = augment_small(inputs[b:], 0.25)
            with autocast_for(device, cpu_bf16):
                emb = model(inputs) if online else model.forward_from_deep_features(deep, inputs)
            emb = emb.float()
            if train_cfg.get("batch_negatives"):
                hardest = train_cfg.get("negatives", "all") == "hardest"
                loss = batch_triplet_loss(emb[:b], emb[b:], p_idx[sl].to(device), idx[b:].to(device), margin, hardest)
            else:
                loss = triplet_loss(emb[:b], emb[b:2 * b], emb[2 * b:], margin)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            total += float(loss.detach()) * b
            count += b
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        bar.close()
        val = val_eval.run(model, cache, device)
        row = {"epoch": epoch, "loss": total / max(count, 1), "triplets": count, "val": val,
               "elapsed_s": round(time.monotonic() - started, 1)}
        history.append(row)
        if progress:
            print(f"epoch {epoch}: loss {row['loss']:.4f} val R@1 {val['recall@1']:.3f} R@5 {val['recall@5']:.3f} "
                  f"R@20 {val['recall@20']:.3f} ({row['elapsed_s']} s)", flush=True)
        if val["recall@20"] + 0.1 * val["recall@1"] > best:
            best = val["recall@20"] + 0.1 * val["recall@1"]
            best_state = {k: v.detach().cpu().clone() for k, v in model.trainable_state_dict().items()}
            row["best"] = True
        if mine_cfg.get("remine") and street_all and epoch < epochs:
            remined = remine_street(model, cache, bench, street_all, pool, int(mine_cfg.get("remine_k", 10)),
                                    int(mine_cfg["street_hard_negatives"]), device, seed=100 + epoch)
            street_current = remined + [t for t in street_all if t.negative_kind == "out_of_class"]
        if budget and time.monotonic() - train_started > float(budget):
            break
    timings["train_s"] = round(time.monotonic() - train_started, 1)

    # the artifact stores float16 weights (half the size); evaluate exactly what is saved
    best_state = {k: (v.half() if v.is_floating_point() else v) for k, v in best_state.items()}
    model.load_trainable_state_dict(best_state)
    final = {"val": val_eval.run(model, cache, device), "val_deep_only_baseline": baseline_val}
    if data_cfg.get("test_eval", True):
        t2 = time.monotonic()
        test_eval = SplitEval(bench, "test", _subsample(query_indices(bench, "test"), data_cfg.get("max_test_queries"), 6))
        cache.ensure(test_eval.gallery_refs + test_eval.query_refs, "test")
        final["test"] = test_eval.run(model, cache, device)
        final["test_deep_only_baseline"] = deep_only_baseline(cache, test_eval)
        timings["test_eval_s"] = round(time.monotonic() - t2, 1)

    # artifacts
    weights_path = out_dir / "weights.pt"
    torch.save(best_state, weights_path)
    weights_hash = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    model_version = f"visnet-{model_cfg.backbone}-{model_cfg.embedding_dim}-{weights_hash[:8]}"
    resolved = copy.deepcopy(config)
    resolved["model"] = model_cfg.to_dict()
    resolved["model_version"] = model_version
    resolved["train"]["device_used"] = str(device)
    resolved["train"]["cpu_bf16_used"] = cpu_bf16
    resolved["train"]["autocast_dtype"] = (str(cuda_amp_dtype()).removeprefix("torch.") if cuda
                                           else "bfloat16" if cpu_bf16 else None)
    resolved["train"]["train_last_blocks"] = last_blocks
    resolved["train"]["deep_lr"] = deep_lr if online else None
    resolved["triplets"] = {"source": triplets_source, "count": len(triplets), "street": len(street_all),
                            "catalog": len(catalog_all), "hash": trip_hash}
    (out_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    (out_dir / "data_hash").write_text(f"benchmark {bench.data_hash}\ntriplets {trip_hash}\n")
    (out_dir / "model_version").write_text(model_version + "\n")
    timings["total_s"] = round(time.monotonic() - started, 1)
    metrics = {"model_version": model_version, "epochs": history, "final": final, "timings": timings,
               "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else None,
               "torch_threads": torch.get_num_threads()}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot(history, out_dir / "training_curves.png")
    return {"model_version": model_version, "metrics": metrics, "model": model, "cache": cache,
            "val_eval": val_eval, "out_dir": out_dir, "triplets": triplets}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train VisNet on the street-to-shop benchmark")
    parser.add_argument("--config", default=str(ROOT / "configs" / "visnet.yaml"))
    parser.add_argument("--size", default=None, help="benchmark size (overrides data.size)")
    parser.add_argument("--out", default=None, help="artifact directory (default models/<model_version-ish>)")
    parser.add_argument("--approved-triplets", default=None, help="JSONL of reviewed triplets: train on approved rows only")
    parser.add_argument("--triplets", default=None, help="JSONL of triplets: train on all its rows")
    parser.add_argument("--triplets-out", default=None, help="also write the mined triplets to this JSONL")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    overrides: dict = {}
    if args.size:
        overrides.setdefault("data", {})["size"] = args.size
    if args.epochs:
        overrides.setdefault("train", {})["epochs"] = args.epochs
    config = load_config(args.config, overrides)
    triplets, source = None, "mined"
    if args.approved_triplets:
        triplets, source = load_triplets(args.approved_triplets, approved_only=True), f"approved:{args.approved_triplets}"
        if not triplets:
            raise SystemExit(f"{args.approved_triplets}: no approved triplets")
    elif args.triplets:
        triplets, source = load_triplets(args.triplets), f"file:{args.triplets}"
    out = args.out or str(ROOT / "models" / f"visnet-{Path(args.config).stem}")
    result = train(config, out, triplets=triplets, triplets_source=source, progress=not args.quiet)
    if args.triplets_out:
        save_triplets(result["triplets"], args.triplets_out)
        print(f"wrote {len(result['triplets'])} triplets to {args.triplets_out}", flush=True)
    final = result["metrics"]["final"]
    print(json.dumps({"model_version": result["model_version"], "out": str(out), "final": final,
                      "timings": result["metrics"]["timings"]}, indent=2))


if __name__ == "__main__":
    main()
