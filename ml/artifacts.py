"""The model artifact: the one module that writes, reads and validates a VisNet artifact directory, and names
model versions. Training writes it, serving and evaluation read it, registration (webapp) validates it.

A directory holds:
    weights.pt           VisNet weights (float16) minus the packaged frozen backbone, plus any trained deep blocks
    config.json          the resolved training config; its "model" section is the exact architecture and
                         preprocessing, its "model_version" the version name (sorted keys, 2-space indent)
    metrics.json         per-epoch validation, final val/test Recall@K, timings, device ("model_version" first)
    data_hash            what it was trained on ("benchmark <sha256>" and "triplets <hash>" lines)
    model_version        the version name again, one line
    training_curves.png  loss and validation Recall@K per epoch (when the training history is given)

Required to read: weights.pt, config.json, metrics.json, data_hash (model_version is in config.json).
Plain Python + torch; no Django, nothing from ml.training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ml.models.visnet import VisNetConfig

WEIGHTS = "weights.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
DATA_HASH = "data_hash"
MODEL_VERSION = "model_version"
CURVES = "training_curves.png"
REQUIRED_FILES = (WEIGHTS, CONFIG, METRICS, DATA_HASH)
MAX_VERSION_LENGTH = 120


class ArtifactInvalid(ValueError):
    """The artifact directory is missing a file, a document does not parse, or its version name is unusable.
    The message names the path and the problem; it holds nothing secret and is safe to show."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    model_version: str
    config: dict
    metrics: dict
    data_hash: str

    @property
    def model_config(self) -> VisNetConfig:
        """The architecture and preprocessing it was trained with (config.json's "model" section)."""
        section = self.config.get("model")
        if not isinstance(section, dict):
            raise ArtifactInvalid(f'{self.path / CONFIG} has no "model" section')
        try:
            return VisNetConfig.from_dict(section)
        except (TypeError, ValueError) as exc:
            raise ArtifactInvalid(
                f'{self.path / CONFIG}: the "model" section does not describe a VisNet: {exc}'
            ) from exc

    @property
    def embedding_dim(self) -> int:
        return int(self.model_config.embedding_dim)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    @property
    def train_config(self) -> dict:
        """config.json's "train" section ({} when absent), as resolved at training time."""
        section = self.config.get("train")
        return section if isinstance(section, dict) else {}


# -- names -----------------------------------------------------------------------------------------
def model_version_name(backbone: str, embedding_dim: int, weights_sha256: str) -> str:
    """How training names a version: visnet-<backbone>-<dim>-<first 8 hex of the weights file's sha256>."""
    return f"visnet-{backbone}-{int(embedding_dim)}-{weights_sha256[:8]}"


def imagenet_version_name(backbone: str, image_size: int) -> str:
    """The version name of the untrained ImageNet stand-in (ml.inference.embedder.Embedder)."""
    return f"imagenet-{backbone}-{int(image_size)}"


def validate_model_version(name: object, source: str = "model_version") -> str:
    """The stripped name; ArtifactInvalid when it is empty or longer than MAX_VERSION_LENGTH characters."""
    text = str(name or "").strip()
    if not text:
        raise ArtifactInvalid(f"{source} has no model_version")
    if len(text) > MAX_VERSION_LENGTH:
        raise ArtifactInvalid(f"model_version {text!r} is longer than {MAX_VERSION_LENGTH} characters")
    return text


def training_data_hash(benchmark_hash: str, triplets_hash: str) -> str:
    """The data_hash document of a training run: the benchmark and the triplets it trained on."""
    return f"benchmark {benchmark_hash}\ntriplets {triplets_hash}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- reading ---------------------------------------------------------------------------------------
def _read_json_object(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactInvalid(f"{path} does not parse: {exc}") from exc
    if not isinstance(document, dict):
        raise ArtifactInvalid(f"{path} is not a JSON object")
    return document


def read_artifact(directory: str | Path) -> Artifact:
    """Validate and read an artifact directory (the files are checked, the weights are not loaded)."""
    path = Path(directory).resolve()
    if not path.is_dir():
        raise ArtifactInvalid(f"{path} is not a directory")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ArtifactInvalid(f"{path} lacks {', '.join(missing)}")
    config = _read_json_object(path / CONFIG)
    metrics = _read_json_object(path / METRICS)
    model_version = validate_model_version(config.get("model_version"), str(path / CONFIG))
    version_file = path / MODEL_VERSION
    if version_file.is_file():
        written = version_file.read_text().strip()
        if written and written != model_version:
            raise ArtifactInvalid(f"{version_file} says {written!r} but {path / CONFIG} says {model_version!r}")
    try:
        data_hash = (path / DATA_HASH).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactInvalid(f"{path / DATA_HASH} cannot be read: {exc}") from exc
    return Artifact(path, model_version, config, metrics, data_hash)


def load_weights(artifact: Artifact | str | Path) -> dict[str, torch.Tensor]:
    """The saved state dict (float16 tensors; VisNet.load_trainable_state_dict copies them into the model)."""
    if not isinstance(artifact, Artifact):
        artifact = read_artifact(artifact)
    try:
        state = torch.load(artifact.weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises several kinds
        raise ArtifactInvalid(f"{artifact.weights_path} is not a weights file: {type(exc).__name__}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtifactInvalid(f"{artifact.weights_path} does not hold a state dict of tensors")
    return state


# -- writing ---------------------------------------------------------------------------------------
def write_artifact(
    directory: str | Path,
    *,
    model_version: str | None = None,
    config: Mapping,
    metrics: Mapping,
    data_hash: str,
    weights_state: Mapping[str, torch.Tensor],
    history: Sequence[Mapping] | None = None,
) -> Artifact:
    """Write an artifact directory and return it as read back.

    model_version None: named by model_version_name from config["model"] and the written weights file. The name
    is recorded in config.json, metrics.json (first key) and model_version. history (metrics' per-epoch rows,
    each with "epoch", "loss" and "val" Recall@K) draws training_curves.png."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS
    torch.save(dict(weights_state), weights_path)
    if model_version is None:
        model = config.get("model") or {}
        model_version = model_version_name(model["backbone"], model["embedding_dim"], file_sha256(weights_path))
    model_version = validate_model_version(model_version)
    resolved = {**config, "model_version": model_version}
    (out / CONFIG).write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    (out / DATA_HASH).write_text(data_hash.strip() + "\n")
    (out / MODEL_VERSION).write_text(model_version + "\n")
    recorded = {"model_version": model_version, **{k: v for k, v in metrics.items() if k != "model_version"}}
    (out / METRICS).write_text(json.dumps(recorded, indent=2) + "\n")
    if history:
        plot_training_curves(history, out / CURVES)
    return read_artifact(out)


def plot_training_curves(history: Sequence[Mapping], path: str | Path) -> None:
    """Loss and validation Recall@1/5/20 per epoch, side by side (PNG)."""
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
