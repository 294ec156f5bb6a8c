"""Write a detector artifact through ml.artifacts' conventions (read back with ml.artifacts.read_artifact).

The version name is detector-<family>-<input size>-<first 8 hex of weights.pt's sha256>, e.g.
detector-yolo11n-256-1a2b3c4d. Used by training only; serving reads with ml.artifacts / ml.detection.detector.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ml.artifacts import (
    CONFIG,
    DATA_HASH,
    METRICS,
    MODEL_VERSION,
    WEIGHTS,
    Artifact,
    file_sha256,
    read_artifact,
    validate_model_version,
)

EXAMPLES = "examples.png"


def detector_version_name(family: str, input_size: int, weights_sha256: str) -> str:
    return f"detector-{family}-{int(input_size)}-{weights_sha256[:8]}"


def write_detector_artifact(
    directory: str | Path,
    *,
    config: Mapping,
    metrics: Mapping,
    data_hash: str,
    weights_state: Mapping[str, torch.Tensor],
) -> Artifact:
    """weights.pt (float16 state dict), config.json (config + model_version), metrics.json, data_hash and
    model_version; returns the artifact as read back."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {key: (value.half() if value.is_floating_point() else value) for key, value in weights_state.items()}
    torch.save(state, out / WEIGHTS)
    model = config["model"]
    version = validate_model_version(
        detector_version_name(model["family"], model["input_size"], file_sha256(out / WEIGHTS))
    )
    (out / CONFIG).write_text(json.dumps({**config, "model_version": version}, indent=2, sort_keys=True) + "\n")
    (out / DATA_HASH).write_text(data_hash.strip() + "\n")
    (out / MODEL_VERSION).write_text(version + "\n")
    update_metrics(out, {"model_version": version, **{k: v for k, v in metrics.items() if k != "model_version"}})
    return read_artifact(out)


def update_metrics(directory: str | Path, metrics: Mapping) -> None:
    """Merge `metrics` into metrics.json (model_version stays first)."""
    path = Path(directory) / METRICS
    current = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**current, **metrics}
    ordered = {"model_version": merged.pop("model_version", None), **merged}
    path.write_text(json.dumps(ordered, indent=2) + "\n")
