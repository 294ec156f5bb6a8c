"""VisNet model: shapes, unit norm, shallow branches on/off, triplet loss, frozen-backbone gradients."""

import numpy as np
import pytest
import torch
from PIL import Image

from ml.models.visnet import VisNet, VisNetConfig, preprocess_image
from ml.training.losses import triplet_loss

# The shallow branches keep their defaults (resnet, grey).
SMALL = {"image_size": 64, "deep_size": 32, "embedding_dim": 32, "shallow_channels": 8}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VisNet(VisNetConfig(**SMALL)).eval()


def test_forward_shape_and_unit_norm(model):
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)


def test_forward_from_deep_features_matches_forward(model):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        deep = model.deep_features(x)
        small = torch.nn.functional.adaptive_avg_pool2d(x, 16)  # what the training cache stores
        assert torch.allclose(model.forward_from_deep_features(deep, x), full, atol=1e-5)
        assert torch.allclose(model.forward_from_deep_features(deep, small), full, atol=1e-5)


def test_shallow_off_has_no_shallow_branches():
    with_shallow = VisNet(VisNetConfig(**SMALL))
    deep_only = VisNet(VisNetConfig(**SMALL, shallow=False))
    assert len(with_shallow.shallow_branches) == 2 and len(deep_only.shallow_branches) == 0
    assert deep_only.projection.in_features == deep_only.deep_dim
    assert with_shallow.projection.in_features > with_shallow.deep_dim
    with torch.no_grad():
        emb = deep_only.forward_from_deep_features(torch.randn(2, deep_only.deep_dim), None)
    assert emb.shape == (2, 32)


@pytest.mark.parametrize("dim", [128, 1024])
def test_embedding_dim_is_configurable(dim):
    net = VisNet(VisNetConfig(**{**SMALL, "embedding_dim": dim}))
    with torch.no_grad():
        assert net.forward_from_deep_features(torch.randn(1, net.deep_dim), torch.rand(1, 3, 16, 16)).shape == (1, dim)


def test_triplet_loss_on_hand_made_vectors():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    n_far = torch.tensor([[-1.0, 0.0]])  # ||a-n||^2 = 4
    n_close = torch.tensor([[0.0, 1.0]])  # ||a-n||^2 = 2
    assert float(triplet_loss(a, p, n_far, margin=0.5)) == 0.0  # 0.5 + 0 - 4 < 0
    # positive at squared distance 2, negative at 2: loss is exactly the margin
    assert float(triplet_loss(a, n_close, n_close, margin=0.3)) == pytest.approx(0.3)
    # 0.2 + 2 - 1 = 1.2 (squared distances, not plain ones)
    p2 = torch.tensor([[0.0, 1.0]])
    n2 = torch.tensor([[1.0, 1.0]])
    assert float(triplet_loss(a, p2, n2, margin=0.2)) == pytest.approx(1.2)
    per = triplet_loss(torch.cat([a, a]), torch.cat([p, p2]), torch.cat([n_far, n2]), margin=0.2, reduction="none")
    assert per.tolist() == pytest.approx([0.0, 1.2])


def test_frozen_backbone_gets_no_gradient(model):
    net = VisNet(VisNetConfig(**SMALL)).train()
    assert net.deep_frozen
    x = torch.rand(3, 3, 64, 64)
    emb = net(x)
    triplet_loss(emb[:1], emb[1:2], emb[2:], margin=1.0).backward()
    assert all(p.grad is None for p in net.deep.parameters())
    assert net.projection.weight.grad is not None and net.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.shallow_branches.parameters())
    saved = net.trainable_state_dict()
    assert not any(k.startswith("deep.") for k in saved)
    # the last block trainable: only its weights (and their BN buffers) get saved
    net.freeze_deep(True, train_last_blocks=1)
    assert any(p.requires_grad for p in net.deep.parameters())
    assert not all(p.requires_grad for p in net.deep.parameters())
    assert any(k.startswith("deep.") for k in net.trainable_state_dict())


def test_paper_shallow_branches_keep_their_grid():
    net = VisNet(VisNetConfig(**SMALL, shallow_arch="paper", shallow_grey=False)).eval()
    four, eight = net.shallow_branches
    assert (four.input_size, four.out_dim) == (16, 8 * 16) and (eight.input_size, eight.out_dim) == (8, 8 * 16)
    with torch.no_grad():
        emb = net(torch.rand(2, 3, 64, 64))
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_preprocess_pads_to_square():
    img = Image.new("RGB", (40, 20), (10, 200, 30))
    t = preprocess_image(img, 32)
    assert t.shape == (3, 32, 32) and float(t.min()) >= 0 and float(t.max()) <= 1


def test_vgg16_needs_local_weights():
    with pytest.raises(FileNotFoundError, match="vgg16"):
        VisNet(VisNetConfig(**{**SMALL, "backbone": "vgg16", "vgg16_weights": "/nonexistent/vgg16.pth"}))


def test_cnn_grey_shallow_branches():
    net = VisNet(VisNetConfig(**SMALL, shallow_arch="cnn", shallow_grey=True, shallow_depth=2)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        emb = net(x)
        # luminance only: a colour change that keeps the grey level leaves the shallow part unchanged
        branch = net.shallow_branches[0]
        grey = x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        assert torch.allclose(branch(net.normalise(x)), branch(net.normalise(grey)), atol=1e-5)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_batch_triplet_loss_uses_in_batch_negatives():
    from ml.training.losses import batch_triplet_loss

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # positives, then negatives
    rows = torch.tensor([10, 11, 12, 13])
    # every negative is far enough: zero
    assert float(batch_triplet_loss(a, cand, rows[:2], rows, margin=0.5)) == 0.0
    # margin 2.5: each anchor has 3 negatives (the other positive at d=2, its own and the other negative at 4/2)
    # terms: m + 0 - d -> 0.5 (d=2) and 0.5 (d=2); d=4 gives 0 -> mean over active terms = 0.5
    assert float(batch_triplet_loss(a, cand, rows[:2], rows, margin=2.5)) == pytest.approx(0.5)
    # the same image as the positive elsewhere in the batch is never a negative
    same = torch.tensor([10, 11, 10, 11])
    assert float(batch_triplet_loss(a, cand, same[:2], same, margin=2.5)) == pytest.approx(0.5)


def test_resnet_shallow_branches_keep_a_grid_and_train():
    net = VisNet(VisNetConfig(**{**SMALL, "image_size": 128}, shallow_arch="resnet", shallow_grey=True, shallow_grid=4))
    four, eight = net.shallow_branches
    # 32 px: 8 -> 16 -> 32 -> 64 channels at 16/8/4 px; 16 px: 8 -> 16 -> 32 at 8/4 px
    assert (four.input_size, four.out_dim) == (32, 64 * 16) and (eight.input_size, eight.out_dim) == (16, 32 * 16)
    x = torch.rand(4, 3, 128, 128)
    emb = net(x)
    assert emb.shape == (4, 32) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    emb.sum().backward()
    assert four.body[0].weight.grad is not None and float(four.body[0].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in net.deep.parameters())  # the deep branch stays frozen


def test_batch_triplet_loss_hardest_negative_only():
    from ml.training.losses import batch_triplet_loss

    a = torch.tensor([[1.0, 0.0]])
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # positive, a far (d=2) and a near (d=0.8) negative
    rows = torch.tensor([0, 1, 2])
    # margin 2.5: terms 0.5 and 1.7
    assert float(batch_triplet_loss(a, cand, rows[:1], rows, margin=2.5)) == pytest.approx(1.1)
    assert float(batch_triplet_loss(a, cand, rows[:1], rows, margin=2.5, hardest=True)) == pytest.approx(1.7)


@pytest.mark.parametrize("name", ["visnet-default", "visnet-deep-only"])
def test_committed_artifacts_serve(name):
    """The artifacts `make run` and `make evaluate` use load through the serving path and embed."""
    import json
    from pathlib import Path

    from ml.inference.visnet import load_visnet_embedder

    artifact = Path(__file__).resolve().parents[1] / "models" / name
    embedder = load_visnet_embedder(artifact, device="cpu")
    config = json.loads((artifact / "config.json").read_text())
    assert embedder.model_version == (artifact / "model_version").read_text().strip() == config["model_version"]
    metrics = json.loads((artifact / "metrics.json").read_text())
    assert metrics["model_version"] == embedder.model_version
    from ml.data.fashion_mnist import load_fashion_mnist

    pixels, labels = load_fashion_mnist("test")
    first = 0
    other = int(np.flatnonzero(labels != labels[first])[0])
    item = Image.fromarray(255 - pixels[first]).convert("RGB")  # as the catalog shows it
    other_item = Image.fromarray(255 - pixels[other]).convert("RGB")
    vectors = embedder.embed([item, item.rotate(10, fillcolor="white"), other_item])
    assert vectors.shape == (3, embedder.dim) and abs(float((vectors**2).sum(axis=1).mean()) - 1) < 1e-4
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])  # a rotated view beats another garment


def test_occlude_edges_lays_another_images_strip_over_one_edge():
    from ml.training.augment import occlude_edges

    torch.manual_seed(0)
    x = torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1).expand(16, 3, 20, 20).contiguous()
    out = occlude_edges(x, probability=1.0, max_fraction=0.35)
    for i in range(16):
        changed = out[i, 0] != x[i, 0]
        assert changed.any()
        assert torch.all(out[i, 0][changed] == x[(i - 1) % 16, 0, 0, 0])  # the previous image's pixels
        rows, cols = changed.any(dim=1), changed.any(dim=0)
        full_rows, full_cols = changed.all(dim=1), changed.all(dim=0)
        # a strip: whole rows at the top or bottom, or whole columns at the left or right
        assert torch.equal(rows, full_rows) or torch.equal(cols, full_cols)
        assert rows[0] or rows[-1] or cols[0] or cols[-1]
        assert 0.05 <= float(changed.float().mean()) <= 0.35 + 0.05
    assert occlude_edges(x, probability=0.0) is x
    untouched = occlude_edges(x, probability=0.3)
    hits = sum(bool((untouched[i] != x[i]).any()) for i in range(16))
    assert 0 < hits < 16
