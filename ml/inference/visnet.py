"""Serve a trained VisNet artifact: load_visnet_embedder(artifact_dir) -> an Embedder-like object.

Imports only ml.models (never ml.training). The artifact holds weights.pt (VisNet weights without the
packaged ImageNet backbone when it was frozen), config.json (the resolved training config, whose "model"
section is the exact preprocessing + architecture used at training time) and model_version.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.inference.embedder import embed_in_batches, resolve_device
from ml.models.visnet import VisNet, VisNetConfig, preprocess_image


class VisNetEmbedder:
    """`embed(images) -> float32 [N, dim]` L2-normalised, `embed_one`, `dim`, `model_version`."""

    def __init__(self, artifact_dir: str | Path, device: str = "auto", batch_size: int = 64):
        self.artifact_dir = Path(artifact_dir)
        config = json.loads((self.artifact_dir / "config.json").read_text())
        self.config = VisNetConfig.from_dict(config["model"])
        self.model_version = config.get("model_version") or (self.artifact_dir / "model_version").read_text().strip()
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model = VisNet(self.config, pretrained=True)
        state = torch.load(self.artifact_dir / "weights.pt", map_location="cpu", weights_only=True)
        model.load_trainable_state_dict(state)
        self.model = model.to(self.device).eval()
        self.dim = int(self.config.embedding_dim)
        self.image_size = int(self.config.image_size)
        self._lock = threading.Lock()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, self.image_size)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return embed_in_batches(images, preprocess=self.preprocess, model=self.model, device=self.device,
                                batch_size=self.batch_size, dim=self.dim, lock=self._lock)

    def embed_one(self, image: Image.Image) -> np.ndarray:
        return self.embed([image])[0]


def load_visnet_embedder(artifact_dir: str | Path, device: str = "auto", batch_size: int = 64) -> VisNetEmbedder:
    return VisNetEmbedder(artifact_dir, device=device, batch_size=batch_size)
