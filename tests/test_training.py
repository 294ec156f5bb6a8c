"""Tiny end-to-end VisNet training: artifacts written, and load_visnet_embedder reproduces training embeddings."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ml.training.config import load_config
    from ml.training.loop import train
    from ml.training.synthetic import SyntheticBenchmark

    tmp = tmp_path_factory.mktemp("visnet")
    config = load_config(
        ROOT / "configs" / "visnet_tiny.yaml",
        {
            "data": {"cache_dir": str(tmp / "cache")},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {"epochs": 2, "threads": 2},
        },
    )
    bench = SyntheticBenchmark(n_shop=120, seed=0, queries_per_split={"train": 1.0, "val": 0.5, "test": 0.5})
    result = train(config, tmp / "artifact", bench=bench, progress=False)
    return result, bench, tmp


def test_artifact_files(trained):
    result, bench, tmp = trained
    out = result["out_dir"]
    for name in ("weights.pt", "config.json", "metrics.json", "data_hash", "training_curves.png", "model_version"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and "recall@20" in metrics["epochs"][0]["val"]
    assert "test" in metrics["final"] and metrics["final"]["test"]["gallery"] == len(bench.gallery_indices("test"))
    config = json.loads((out / "config.json").read_text())
    assert config["model_version"].startswith("visnet-efficientnet_lite0-64-")
    assert bench.data_hash in (out / "data_hash").read_text()
    state = torch.load(out / "weights.pt", weights_only=True)
    assert not any(k.startswith("deep.") for k in state)  # the packaged backbone is not copied
    assert (out / "weights.pt").stat().st_size < 2_000_000


def test_embedder_reproduces_training_embeddings(trained):
    from ml.inference.visnet import load_visnet_embedder
    from ml.training.validation import embed_refs

    result, bench, _ = trained
    embedder = load_visnet_embedder(result["out_dir"], device="cpu")
    assert embedder.dim == 64 and embedder.model_version == result["model_version"]
    ev = result["val_eval"]
    refs = ev.gallery_refs[:4] + ev.query_refs[:4]
    expected = embed_refs(result["model"], result["cache"], refs, torch.device("cpu")).numpy()
    images = [bench.shop_image(int(i)) for i in ev.gallery[:4]] + [
        bench.street_crop(bench.items[q]) for q in ev.query_idx[:4]
    ]
    got = embedder.embed(images)
    assert got.shape == (8, 64) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)
    assert np.abs(got - expected).max() < 2e-2
    assert np.allclose(embedder.embed_one(images[0]), got[0], atol=1e-5)


def test_approved_only_triplets_train(trained, tmp_path):
    from ml.training.config import load_config
    from ml.training.loop import train
    from ml.triplets import load_triplets, save_triplets

    result, bench, tmp = trained
    rows = result["triplets"][:40]
    for i, t in enumerate(rows):
        t.status = "approved" if i % 2 == 0 else "pending"
    path = save_triplets(rows, tmp_path / "reviewed.jsonl")
    approved = load_triplets(path, approved_only=True)
    config = load_config(
        ROOT / "configs" / "visnet_tiny.yaml",
        {
            "data": {"cache_dir": str(tmp / "cache"), "test_eval": False},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {"epochs": 1, "threads": 2},
        },
    )
    out = train(
        config, tmp_path / "approved", bench=bench, triplets=approved, triplets_source="approved", progress=False
    )
    saved = json.loads((out["out_dir"] / "config.json").read_text())
    assert saved["triplets"]["count"] == 20 and saved["triplets"]["source"] == "approved"


def test_ml_inference_does_not_import_training_and_models_do_not_import_inference():
    import subprocess
    import sys

    code = (
        "import sys, ml.inference.visnet, ml.models.visnet; "
        "bad=[m for m in sys.modules if m.startswith('ml.training') or m.startswith('django')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    code = (
        "import sys, ml.models.visnet, ml.models.backbones; "
        "bad=[m for m in sys.modules if m.startswith(('ml.inference', 'ml.training', 'ml.evaluation'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_validation_recall_after_a_tiny_run_beats_the_untrained_starting_model(tmp_path):
    """The same val street crops and gallery, the same initial weights (same seed): training must help."""
    from ml.models.visnet import VisNet, VisNetConfig
    from ml.training.config import load_config
    from ml.training.loop import seed_everything, train
    from ml.training.synthetic import SyntheticBenchmark

    config = load_config(
        ROOT / "configs" / "visnet_tiny.yaml",
        {
            "data": {"cache_dir": str(tmp_path / "cache"), "test_eval": False},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {"epochs": 3, "threads": 2},
        },
    )
    bench = SyntheticBenchmark(n_shop=200, seed=0, queries_per_split={"train": 1.0, "val": 1.0, "test": 0.1})
    out = train(config, tmp_path / "artifact", bench=bench, progress=False)
    seed_everything(int(config["train"]["seed"]))  # as training seeds before it builds the model
    untrained = out["val_eval"].run(VisNet(VisNetConfig.from_dict(config["model"])), out["cache"], torch.device("cpu"))
    trained = out["metrics"]["final"]["val"]
    assert trained["queries"] == untrained["queries"] >= 30 and trained["gallery"] == untrained["gallery"]
    assert trained["recall@5"] > untrained["recall@5"] and trained["recall@20"] > untrained["recall@20"]
    assert trained["median_rank"] < untrained["median_rank"]


def test_pairs_only_training_trains_each_anchor_positive_pair_once(trained, tmp_path):
    from ml.training.config import load_config
    from ml.training.loop import train

    result, bench, tmp = trained
    street = [t for t in result["triplets"] if t.kind == "street"]
    pairs = {(t.anchor, t.positive) for t in street}
    assert len(pairs) < len(street)  # several mined negatives per pair
    config = load_config(
        ROOT / "configs" / "visnet_tiny.yaml",
        {
            "data": {"cache_dir": str(tmp / "cache"), "test_eval": False},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {
                "epochs": 1,
                "threads": 2,
                "curriculum_epochs": 0,
                "mined_negatives": False,
                "mix": {"street": 1.0, "catalog": 0.0},
            },
        },
    )
    out = train(config, tmp_path / "pairs", bench=bench, triplets=street, progress=False)
    epoch = out["metrics"]["epochs"][0]
    assert epoch["triplets"] == len(pairs) and np.isfinite(epoch["loss"]) and epoch["loss"] > 0

    config["train"]["batch_negatives"] = False
    with pytest.raises(ValueError, match="batch_negatives"):
        train(config, tmp_path / "bad", bench=bench, triplets=street, progress=False)


def test_config_extends_another_file(tmp_path):
    from ml.training.config import load_config

    main = load_config(ROOT / "configs" / "visnet.yaml")
    ablation = load_config(ROOT / "configs" / "visnet_deep_only.yaml")
    assert ablation["model"]["shallow"] is False
    ablation["model"]["shallow"] = True
    assert ablation == main  # the ablation differs by the shallow branches only

    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain: {epochs: 2}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_trained_deep_blocks_are_saved_served_and_kept_out_of_the_feature_cache(trained, tmp_path):
    from ml.inference.visnet import load_visnet_embedder
    from ml.models.visnet import VisNet, VisNetConfig
    from ml.training.config import load_config
    from ml.training.loop import train
    from ml.training.validation import embed_refs

    frozen, bench, tmp = trained
    config = load_config(
        ROOT / "configs" / "visnet_tiny.yaml",
        {
            "data": {"cache_dir": str(tmp / "cache"), "test_eval": False},
            "model": {"image_size": 32, "deep_size": 32},
            "train": {"epochs": 1, "threads": 2, "train_last_blocks": 1, "deep_lr_scale": 0.5},
        },
    )
    out = train(config, tmp_path / "online", bench=bench, progress=False)
    saved = json.loads((out["out_dir"] / "config.json").read_text())
    assert saved["train"]["train_last_blocks"] == 1 and saved["train"]["deep_lr"] == 0.0015

    state = torch.load(out["out_dir"] / "weights.pt", weights_only=True)
    last = len(out["model"].deep.blocks) - 1
    assert any(k.startswith(f"deep.blocks.{last}.") for k in state)
    assert any(k.startswith("deep.conv_head.") for k in state)
    assert not any(k.startswith(("deep.blocks.0.", "deep.conv_stem.")) for k in state)
    pretrained = VisNet(VisNetConfig.from_dict(saved["model"])).state_dict()
    key = next(k for k in state if k.startswith(f"deep.blocks.{last}.") and k.endswith("weight"))
    assert not torch.allclose(state[key].float(), pretrained[key], atol=1e-3)  # the block did learn

    ev = out["val_eval"]
    refs = ev.gallery_refs[:3] + ev.query_refs[:3]
    expected = embed_refs(out["model"], out["cache"], refs, torch.device("cpu")).numpy()
    images = [bench.shop_image(int(i)) for i in ev.gallery[:3]] + [
        bench.street_crop(bench.items[q]) for q in ev.query_idx[:3]
    ]
    got = load_visnet_embedder(out["out_dir"], device="cpu").embed(images)
    assert np.abs(got - expected).max() < 2e-2

    # the cache's deep features stay the pretrained ones (the frozen run's), never the fine-tuned branch's
    frozen_deep = frozen["cache"].tensors()[0][frozen["cache"].index(refs)]
    online_deep = out["cache"].tensors()[0][out["cache"].index(refs)]
    assert torch.equal(frozen_deep, online_deep)


def test_feature_cache_loader_processes_give_the_same_rows(trained):
    from ml.feature_cache import DeepFeatureCache
    from ml.models.visnet import VisNet, VisNetConfig
    from ml.triplets import RefResolver

    result, bench, _ = trained
    refs = result["val_eval"].gallery_refs + result["val_eval"].query_refs
    model = VisNet(VisNetConfig.from_dict({**result["model"].config.to_dict()}))
    caches = []
    for workers in (1, 2):
        cache = DeepFeatureCache(
            model,
            bench,
            RefResolver(bench, context=0.1),
            None,
            torch.device("cpu"),
            batch_size=4,
            progress=False,
            keep_images=True,
            workers=workers,
        )
        cache.ensure(refs, "val")
        caches.append(cache)
    assert len(refs) > 8 * 4  # enough batches for the forked loaders
    one, two = caches
    assert torch.equal(one.images()[one.index(refs)], two.images()[two.index(refs)])
    assert torch.equal(one.tensors()[1][one.index(refs)], two.tensors()[1][two.index(refs)])
    assert one.images().dtype == torch.uint8 and one.images().shape[1:] == (3, 32, 32)
