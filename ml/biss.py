"""Basic Image Similarity Scorers (BISS), as used for triplet mining in the VisNet paper.

Each scorer turns images into L2-normalised feature rows so that similarity = dot product
(cosine). `features(images) -> float32 [N, D]`, `similarity(a, b) -> [Na, Nb]`.

- ColourHistogramScorer: HSV 3-D histogram, Hellinger (sqrt) normalised -> cosine = Bhattacharyya coefficient.
- PixelScorer: downsampled grey pixels, zero-mean unit-norm -> normalised cross-correlation.
- EdgeOrientationScorer: HOG-like gradient-orientation histograms on a cell grid.
- CNNScorer: pooled ImageNet backbone features (ml.inference.embedder.Embedder).
- EnsembleScorer: weighted sum of the member cosines (via weighted concatenation), plus `rank_fuse`
  for rank-averaging arbitrary similarity matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from ml.imaging import pad_to_square


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


class Scorer:
    name = "scorer"

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError

    def similarity(self, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        b = a if b is None else b
        return np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T

    def score(self, image_a: Image.Image, image_b: Image.Image) -> float:
        f = self.features([image_a, image_b])
        return float(f[0] @ f[1])


class ColourHistogramScorer(Scorer):
    name = "colour_hist"

    def __init__(self, bins: tuple[int, int, int] = (8, 4, 4), size: int = 48):
        self.bins, self.size = bins, size

    def features(self, images):
        out = []
        hb, sb, vb = self.bins
        for img in images:
            square = pad_to_square(img).resize((self.size, self.size), Image.Resampling.BILINEAR)
            hsv = np.asarray(square.convert("HSV"), dtype=np.int32)
            h = hsv[..., 0] * hb // 256
            s = hsv[..., 1] * sb // 256
            v = hsv[..., 2] * vb // 256
            idx = (h * sb + s) * vb + v
            hist = np.bincount(idx.ravel(), minlength=hb * sb * vb).astype(np.float32)
            out.append(np.sqrt(hist / hist.sum()))
        return _l2(np.stack(out)) if out else np.zeros((0, hb * sb * vb), np.float32)


class PixelScorer(Scorer):
    """Grey pixels at size x size; polarity-normalised so that the darker side is the 'item'."""

    name = "pixels"

    def __init__(self, size: int = 16):
        self.size = size

    def features(self, images):
        out = []
        for img in images:
            grey = pad_to_square(img).convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            g = np.asarray(grey, dtype=np.float32)
            g = g - g.mean()
            out.append(g.ravel())
        return _l2(np.stack(out)) if out else np.zeros((0, self.size * self.size), np.float32)


class EdgeOrientationScorer(Scorer):
    """HOG-like: gradient orientation (unsigned, `bins` bins) histograms over a cells x cells grid."""

    name = "edges"

    def __init__(self, size: int = 32, cells: int = 4, bins: int = 9):
        self.size, self.cells, self.bins = size, cells, bins

    def features(self, images):
        out = []
        c, nb = self.cells, self.bins
        for img in images:
            grey = pad_to_square(img).convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            g = np.asarray(grey, dtype=np.float32)
            gx = np.zeros_like(g)
            gy = np.zeros_like(g)
            gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
            gy[1:-1, :] = g[2:, :] - g[:-2, :]
            mag = np.hypot(gx, gy)
            ang = np.mod(np.arctan2(gy, gx), np.pi)
            b = np.minimum((ang / np.pi * nb).astype(np.int32), nb - 1)
            cell = self.size // c
            rows = np.minimum(np.arange(self.size) // cell, c - 1)
            cell_idx = rows[:, None] * c + rows[None, :]
            hist = np.bincount((cell_idx * nb + b).ravel(), weights=mag.ravel(), minlength=c * c * nb)
            hist = hist.reshape(c * c, nb)
            hist = hist / np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-6)
            out.append(hist.ravel())
        return _l2(np.stack(out)) if out else np.zeros((0, c * c * nb), np.float32)


class CNNScorer(Scorer):
    """Pooled ImageNet backbone features (the product's ImageNet baseline embedder)."""

    name = "cnn"

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        image_size: int = 128,
        device: str = "auto",
        batch_size: int = 64,
        embedder=None,
    ):
        self.backbone, self.image_size, self.device, self.batch_size = backbone, image_size, device, batch_size
        self._embedder = embedder

    @property
    def embedder(self):
        if self._embedder is None:
            from ml.inference.embedder import Embedder

            self._embedder = Embedder(
                self.backbone, device=self.device, image_size=self.image_size, batch_size=self.batch_size
            )
        return self._embedder

    def features(self, images):
        return _l2(self.embedder.embed([pad_to_square(i) for i in images]))


class EnsembleScorer(Scorer):
    """Weighted sum of member cosine similarities: features are the members' rows scaled by sqrt(w / sum w)."""

    name = "ensemble"

    def __init__(self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None):
        self.scorers = list(scorers)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.scorers)
        if len(self.weights) != len(self.scorers):
            raise ValueError("one weight per scorer")

    def features(self, images, precomputed: dict[str, np.ndarray] | None = None):
        precomputed = precomputed or {}
        total = float(sum(self.weights))
        parts = []
        for scorer, w in zip(self.scorers, self.weights, strict=True):
            f = precomputed.get(scorer.name)
            f = _l2(f) if f is not None else scorer.features(images)
            parts.append(f * np.sqrt(w / total))
        return np.concatenate(parts, axis=1).astype(np.float32)

    @staticmethod
    def combine(feature_sets: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
        total = float(sum(weights))
        parts = [_l2(f) * np.sqrt(w / total) for f, w in zip(feature_sets, weights, strict=True)]
        return np.concatenate(parts, axis=1)


def rank_fuse(similarities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Rank-average fusion of [Nq, Ng] similarity matrices: per query, each scorer's similarity is turned
    into a normalised rank in [0, 1] (1 = most similar) and the weighted mean is returned."""
    weights = list(weights) if weights is not None else [1.0] * len(similarities)
    fused: np.ndarray | None = None
    for sim, w in zip(similarities, weights, strict=False):
        ranks = np.argsort(np.argsort(sim, axis=1), axis=1).astype(np.float32)
        ranks /= max(1, sim.shape[1] - 1)
        fused = ranks * w if fused is None else fused + ranks * w
    if fused is None:
        raise ValueError("rank_fuse needs at least one similarity matrix")
    return fused / float(sum(weights))


def default_scorers(cnn: bool = True, **cnn_kwargs) -> list[Scorer]:
    scorers: list[Scorer] = [ColourHistogramScorer(), PixelScorer(), EdgeOrientationScorer()]
    if cnn:
        scorers.append(CNNScorer(**cnn_kwargs))
    return scorers


def default_ensemble(cnn: bool = True, **cnn_kwargs) -> EnsembleScorer:
    scorers = default_scorers(cnn=cnn, **cnn_kwargs)
    weights = [0.5, 1.0, 1.0, 2.0][: len(scorers)]
    return EnsembleScorer(scorers, weights)


def invert_if_dark_background(image: Image.Image) -> Image.Image:
    """Helper for raw Fashion-MNIST (white item on black): the catalog shows dark items on white."""
    arr = np.asarray(image.convert("L"))
    return ImageOps.invert(image.convert("RGB")) if arr.mean() < 128 else image.convert("RGB")
