"""Serve a trained detector artifact: `load_detector(artifact_dir) -> Detector`, `Detector.detect(image)`.

Inference only: imports ml.artifacts, ml.devices and ultralytics' model definition (ultralytics.nn.tasks) -
never ml.training, ultralytics' trainer, predictor or plotting. The artifact (written by ml.detection.train
through ml.detection.artifact) holds
    weights.pt   the YOLO DetectionModel's state dict (float16)
    config.json  "model": {"arch": the resolved ultralytics model dict, "labels", "input_size", ...},
                 "train" / "data": the resolved training config; "model_version"
    metrics.json test mAP50 / mAP50-95, timings; data_hash; model_version; examples.png
Preprocessing: RGB, letterboxed (aspect kept, padded with grey 114) to input_size x input_size, /255 - as
ultralytics trains. Post-processing: score = best class probability, class-aware NMS (IoU 0.5), boxes mapped
back to the image passed in and clipped to it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import batched_nms

from ml.artifacts import Artifact, ArtifactInvalid, load_weights, read_artifact
from ml.detection.offline import configure_offline
from ml.devices import resolve_device

ITEM_LABEL = "item"
PAD_VALUE = 114
NMS_IOU = 0.5
KIND = "yolo-detector"


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the image passed in, clipped to it
    score: float
    label: str  # a catalog category (ml.data.fashion_mnist.CLASS_NAMES) or "item" (class-agnostic detector)


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, tuple[float, float]]:
    """(uint8 [size, size, 3] RGB, scale, (pad_x, pad_y)): aspect kept, longer side = size, centred on grey."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = np.asarray(image, dtype=np.uint8)
    return canvas, scale, (float(pad_x), float(pad_y))


class Detector:
    """A YOLO detector on CPU or GPU. `detect(image)` is thread-safe (one forward pass at a time)."""

    model_version: str
    labels: list[str]
    input_size: int

    def __init__(self, artifact: str | Path | Artifact, device: str = "auto"):
        self.artifact = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
        section = self.artifact.config.get("model")
        config_path = self.artifact.path / "config.json"
        if not isinstance(section, dict) or section.get("kind") != KIND:
            raise ArtifactInvalid(f'{config_path} has no "model" section of kind {KIND!r}')
        try:
            arch = dict(section["arch"])
            self.labels = [str(name) for name in section["labels"]]
            self.input_size = int(section["input_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactInvalid(f'{config_path}: the "model" section does not describe a detector: {exc}') from exc
        if not self.labels or int(arch.get("nc", -1)) != len(self.labels) or self.input_size < 32:
            raise ArtifactInvalid(f"{config_path}: labels, nc and input_size disagree")
        self.model_version = self.artifact.model_version
        self.device = resolve_device(device)
        self.model = _build_model(arch, load_weights(self.artifact), config_path).to(self.device).eval()
        self._lock = threading.Lock()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            output = self.model(batch.to(self.device))
        return (output[0] if isinstance(output, (list, tuple)) else output).float().cpu()

    def detect(self, image: Image.Image, *, min_score: float = 0.25, max_items: int = 10) -> list[Detection]:
        """Items in an RGB image of any size, best first (at most max_items, each scoring >= min_score)."""
        return self.detect_batch([image], min_score=min_score, max_items=max_items)[0]

    def detect_batch(
        self, images: list[Image.Image], *, min_score: float = 0.25, max_items: int = 10
    ) -> list[list[Detection]]:
        """detect() for several images in one forward pass."""
        if not images:
            return []
        prepared = [letterbox(image, self.input_size) for image in images]
        batch = torch.from_numpy(np.stack([p[0] for p in prepared])).permute(0, 3, 1, 2).float() / 255.0
        predictions = self._forward(batch)  # [B, 4 + nc, anchors]: cx, cy, w, h in input pixels, class probs
        return [
            self._decode(predictions[i], images[i].size, scale, pad, min_score, max_items)
            for i, (_, scale, pad) in enumerate(prepared)
        ]

    def _decode(self, prediction, size, scale, pad, min_score, max_items) -> list[Detection]:
        prediction = prediction.transpose(0, 1)  # [anchors, 4 + nc]
        scores, classes = prediction[:, 4:].max(dim=1)
        keep = scores >= min_score
        if not bool(keep.any()) or max_items <= 0:
            return []
        boxes, scores, classes = prediction[keep, :4], scores[keep], classes[keep]
        xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], dim=1)
        order = batched_nms(xyxy, scores, classes, NMS_IOU)[:max_items]
        width, height = size
        xyxy = xyxy[order]
        xyxy[:, [0, 2]] = ((xyxy[:, [0, 2]] - pad[0]) / scale).clamp(0, width)
        xyxy[:, [1, 3]] = ((xyxy[:, [1, 3]] - pad[1]) / scale).clamp(0, height)
        detections = []
        for box, score, label in zip(xyxy.tolist(), scores[order].tolist(), classes[order].tolist(), strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            detections.append(Detection((x1, y1, x2, y2), float(score), self.labels[int(label)]))
        return detections


def _build_model(arch: dict, state: dict[str, torch.Tensor], source: Path) -> torch.nn.Module:
    configure_offline()
    from ultralytics.nn.tasks import DetectionModel  # the architecture only, not the trainer

    try:
        model = DetectionModel(arch, ch=3, nc=int(arch["nc"]), verbose=False)
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise ArtifactInvalid(f"{source}: the weights do not fit the architecture: {exc}") from exc
    return model.float().fuse(verbose=False) if hasattr(model, "fuse") else model


def load_detector(artifact_dir: str | Path, device: str = "auto") -> Detector:
    """The detector of an artifact directory; ArtifactInvalid when it is not a valid detector artifact."""
    return Detector(artifact_dir, device=device)
