"""ml.artifacts: the one module that writes, reads and validates a model artifact directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml.artifacts import (
    ArtifactInvalid,
    imagenet_version_name,
    load_weights,
    model_version_name,
    read_artifact,
    write_artifact,
)
from ml.models.visnet import VisNetConfig

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
TINY = ROOT / "tests" / "fixtures" / "tiny-visnet"


def _write(tmp_path: Path, **kwargs):
    config = {"model": VisNetConfig(embedding_dim=32).to_dict(), "train": {"epochs": 1}}
    metrics = {"epochs": [{"epoch": 1, "loss": 0.5, "val": {"recall@1": 0.1, "recall@5": 0.3, "recall@20": 0.6}}]}
    state = {"projection.weight": torch.ones(32, 8, dtype=torch.float16), "projection.bias": torch.zeros(32)}
    args = {
        "config": config,
        "metrics": metrics,
        "data_hash": "benchmark abc\ntriplets def",
        "weights_state": state,
        "history": metrics["epochs"],
        **kwargs,
    }
    return write_artifact(tmp_path / "artifact", **args)


def test_written_artifact_reads_back_with_every_file_and_a_name_from_its_weights(tmp_path):
    artifact = _write(tmp_path)
    out = tmp_path / "artifact"
    for name in ("weights.pt", "config.json", "metrics.json", "data_hash", "model_version", "training_curves.png"):
        assert (out / name).is_file(), name
    import hashlib

    digest = hashlib.sha256((out / "weights.pt").read_bytes()).hexdigest()
    assert artifact.model_version == model_version_name("efficientnet_lite0", 32, digest)
    assert artifact.model_version.startswith("visnet-efficientnet_lite0-32-") and len(artifact.model_version) == 37
    assert (out / "model_version").read_text() == artifact.model_version + "\n"
    assert list(json.loads((out / "metrics.json").read_text()))[0] == "model_version"  # recorded first
    assert json.loads((out / "config.json").read_text())["model_version"] == artifact.model_version
    assert artifact.data_hash == "benchmark abc\ntriplets def" and artifact.path == out.resolve()
    assert artifact.embedding_dim == 32 and artifact.model_config == VisNetConfig(embedding_dim=32)
    assert torch.equal(load_weights(artifact)["projection.weight"], torch.ones(32, 8, dtype=torch.float16))
    assert read_artifact(out) == artifact


def test_an_explicit_model_version_is_used_as_given(tmp_path):
    assert _write(tmp_path, model_version="visnet-hand-named").model_version == "visnet-hand-named"
    with pytest.raises(ArtifactInvalid, match="longer than 120"):
        _write(tmp_path, model_version="v" * 121)


def _break(out: Path, how: str) -> None:
    if how == "no directory":
        for path in out.iterdir():
            path.unlink()
        out.rmdir()
    elif how == "no weights":
        (out / "weights.pt").unlink()
    elif how == "config not JSON":
        (out / "config.json").write_text("{not json")
    elif how == "metrics a list":
        (out / "metrics.json").write_text("[1, 2]")
    elif how == "empty model_version":
        (out / "config.json").write_text(json.dumps({"model_version": "  "}))
    elif how == "long model_version":
        (out / "config.json").write_text(json.dumps({"model_version": "v" * 121}))
        (out / "model_version").unlink()
    elif how == "model_version files disagree":
        (out / "model_version").write_text("visnet-something-else\n")


@pytest.mark.parametrize(
    "how, message",
    [
        ("no directory", "is not a directory"),
        ("no weights", "lacks weights.pt"),
        ("config not JSON", "does not parse"),
        ("metrics a list", "is not a JSON object"),
        ("empty model_version", "has no model_version"),
        ("long model_version", "longer than 120"),
        ("model_version files disagree", "says"),
    ],
)
def test_read_artifact_refuses_a_broken_directory_with_a_message(tmp_path, how, message):
    _write(tmp_path)
    _break(tmp_path / "artifact", how)
    with pytest.raises(ArtifactInvalid, match=message):
        read_artifact(tmp_path / "artifact")


def test_load_weights_refuses_a_file_that_is_not_a_state_dict(tmp_path):
    artifact = _write(tmp_path)
    artifact.weights_path.write_bytes(b"not a torch file")
    with pytest.raises(ArtifactInvalid, match="weights.pt"):
        load_weights(artifact)


def test_model_config_of_an_artifact_without_a_model_section_is_invalid(tmp_path):
    artifact = _write(tmp_path)
    config = json.loads((artifact.path / "config.json").read_text())
    del config["model"]
    (artifact.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactInvalid, match="model"):
        _ = read_artifact(artifact.path).model_config


@pytest.mark.parametrize("name, shallow", [("visnet-default", True), ("visnet-deep-only", False)])
def test_shipped_artifacts_read_and_their_model_is_the_default_recipe(name, shallow):
    artifact = read_artifact(MODELS / name)
    assert artifact.model_version == (MODELS / name / "model_version").read_text().strip()
    assert artifact.embedding_dim == 512 and artifact.metrics["model_version"] == artifact.model_version
    assert artifact.data_hash.startswith("benchmark ") and "\ntriplets " in artifact.data_hash
    assert artifact.model_config == VisNetConfig(shallow=shallow)  # the dataclass defaults are the shipped model
    # the packaged backbone is saved only where its blocks were trained (the GPU run), never when frozen
    saved_deep = any(k.startswith("deep.") for k in load_weights(artifact))
    assert saved_deep == bool(artifact.train_config.get("train_last_blocks"))


def test_committed_tiny_fixture_artifact_is_valid_and_small():
    artifact = read_artifact(TINY)
    assert artifact.embedding_dim == 64 and artifact.config["data"]["source"] == "synthetic"
    assert sum(p.stat().st_size for p in TINY.iterdir()) < 2_000_000


def test_imagenet_stand_in_is_named_like_the_embedder_names_it():
    assert imagenet_version_name("efficientnet_lite0", 224) == "imagenet-efficientnet_lite0-224"
