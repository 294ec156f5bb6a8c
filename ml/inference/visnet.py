"""Serve a trained VisNet artifact: load_visnet_embedder(artifact_dir) -> an Embedder-like object.

Imports ml.artifacts and ml.models (never ml.training). The artifact (see ml.artifacts) holds weights.pt
(VisNet weights without the packaged ImageNet backbone when it was frozen), config.json (the resolved training
config, whose "model" section is the exact preprocessing + architecture used at training time) and the
model_version.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.artifacts import Artifact, load_weights, read_artifact
from ml.devices import resolve_device
from ml.inference.embedder import embed_in_batches
from ml.models.visnet import VisNet, preprocess_image


class VisNetEmbedder:
    """`embed(images) -> float32 [N, dim]` L2-normalised, `embed_one`, `dim`, `model_version`."""

    def __init__(self, artifact: str | Path | Artifact, device: str = "auto", batch_size: int = 64):
        self.artifact = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
        self.artifact_dir = self.artifact.path
        self.config = self.artifact.model_config
        self.model_version = self.artifact.model_version
        self.device = resolve_device(device)
        self.batch_size = batch_size
        model = VisNet(self.config, pretrained=True)
        model.load_trainable_state_dict(load_weights(self.artifact))
        self.model = model.to(self.device).eval()
        self.dim = int(self.config.embedding_dim)
        self.image_size = int(self.config.image_size)
        self._lock = threading.Lock()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess_image(image, self.image_size)

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return embed_in_batches(
            images,
            preprocess=self.preprocess,
            model=self.model,
            device=self.device,
            batch_size=self.batch_size,
            dim=self.dim,
            lock=self._lock,
        )

    def embed_one(self, image: Image.Image) -> np.ndarray:
        return self.embed([image])[0]


def load_visnet_embedder(
    artifact_dir: str | Path | Artifact, device: str = "auto", batch_size: int = 64
) -> VisNetEmbedder:
    """The serving embedder of an artifact directory (ml.artifacts.ArtifactInvalid when it does not validate)."""
    return VisNetEmbedder(artifact_dir, device=device, batch_size=batch_size)
