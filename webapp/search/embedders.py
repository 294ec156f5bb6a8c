"""The embedder interface the product uses, and the factory that builds one for a model version."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

IMAGENET = "imagenet"
VISNET = "visnet"


class Embedder(Protocol):
    """Images in, L2-normalised float32 vectors out; `model_version` names the model that made them."""

    dim: int
    model_version: str

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_one(self, image: Image.Image) -> np.ndarray: ...


class EmbedderMismatch(ValueError):
    """The loaded model is not the version it was registered as."""


_threads_set = False


def _set_torch_threads() -> None:
    global _threads_set
    threads = int(os.environ.get("TORCH_NUM_THREADS", "0") or 0)
    if threads > 0 and not _threads_set:
        import torch

        torch.set_num_threads(threads)
        _threads_set = True


def build_embedder(
    *,
    kind: str,
    model_version: str,
    artifact_dir: Path | None = None,
    backbone: str = "efficientnet_lite0",
    image_size: int = 224,
    device: str = "auto",
    batch_size: int = 32,
) -> Embedder:
    """An ImageNet stand-in (backbone, image_size) or a trained VisNet artifact, checked against its version.

    torch and the models are imported here, not at module import: a Celery prefork parent and the web
    process import this module without loading torch until an embedder is actually needed.
    """
    _set_torch_threads()
    embedder: Embedder
    if kind == IMAGENET:
        from ml.inference.embedder import Embedder as ImageNetEmbedder

        embedder = ImageNetEmbedder(backbone=backbone, device=device, image_size=image_size, batch_size=batch_size)
    elif kind == VISNET:
        if artifact_dir is None or not artifact_dir.is_dir():
            raise FileNotFoundError(f"artifact directory {str(artifact_dir)!r} is missing")
        from ml.inference.visnet import load_visnet_embedder

        embedder = load_visnet_embedder(artifact_dir, device=device)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    if embedder.model_version != model_version:
        raise EmbedderMismatch(
            f"the embedder reports model_version {embedder.model_version!r}, registered as {model_version!r}"
        )
    return embedder
