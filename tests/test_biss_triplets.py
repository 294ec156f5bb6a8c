"""BISS scorers rank an altered copy first; mining yields same-class positives and in/out-of-class negatives."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from ml.biss import (
    CNNScorer,
    ColourHistogramScorer,
    EdgeOrientationScorer,
    EnsembleScorer,
    PixelScorer,
    default_ensemble,
    rank_fuse,
)
from ml.training.synthetic import SyntheticBenchmark
from ml.triplets import (
    MinedTriplet,
    RefResolver,
    load_triplets,
    mine_catalog_triplets,
    mine_street_triplets,
    parse_ref,
    save_triplets,
    triplets_hash,
)


@pytest.fixture(scope="module")
def bench():
    return SyntheticBenchmark(n_shop=120, seed=1)


def _altered(img: Image.Image) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(0.9).filter(ImageFilter.GaussianBlur(0.6))
    return img.rotate(3, fillcolor=(255, 255, 255))


def _colourful(bench, n):
    """Shop items tinted with distinct colours, so the colour histogram has something to tell apart."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        grey = np.asarray(bench.shop_image(i), dtype=np.float32) / 255
        tint = rng.uniform(0.2, 1.0, size=3)
        out.append(Image.fromarray((255 * (1 - (1 - grey) * tint)).astype(np.uint8)))
    return out


@pytest.mark.parametrize(
    "scorer",
    [ColourHistogramScorer(), PixelScorer(), EdgeOrientationScorer(), CNNScorer(image_size=64)],
    ids=lambda s: s.name,
)
def test_scorer_ranks_altered_copy_first(bench, scorer):
    items = _colourful(bench, 12)
    gallery = scorer.features(items)
    queries = scorer.features([_altered(items[i]) for i in range(4)])
    assert gallery.shape[0] == 12 and np.allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-4)
    sim = scorer.similarity(queries, gallery)
    hits = (sim.argmax(axis=1) == np.arange(4)).mean()
    assert hits >= 0.75, sim.argmax(axis=1)


def test_ensemble_and_rank_fusion(bench):
    items = _colourful(bench, 10)
    ens = EnsembleScorer([PixelScorer(), EdgeOrientationScorer(), ColourHistogramScorer()], [1, 1, 0.5])
    g = ens.features(items)
    q = ens.features([_altered(items[i]) for i in range(3)])
    assert np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-4)
    assert (ens.similarity(q, g).argmax(axis=1) == np.arange(3)).all()
    fused = rank_fuse(
        [
            PixelScorer().similarity(PixelScorer().features(items[:3]), PixelScorer().features(items)),
            ens.similarity(q, g),
        ]
    )
    assert fused.shape == (3, 10) and (fused.argmax(axis=1) == np.arange(3)).all()
    assert len(default_ensemble(cnn=False).scorers) == 3


def test_catalog_mining_classes(bench):
    triplets = mine_catalog_triplets(bench, "train", anchors=30, in_class_negatives=1, out_of_class_negatives=1)
    assert triplets
    resolver = RefResolver(bench)
    labels = bench.shop_labels
    kinds = set()
    for t in triplets:
        a, p, n = (resolver.shop_index(r) for r in (t.anchor, t.positive, t.negative))
        assert t.kind == "catalog" and a != p
        assert labels[a] == labels[p]
        assert (labels[n] == labels[a]) == (t.negative_kind == "in_class")
        assert bench.shop_split[a] == bench.shop_split[p] == bench.shop_split[n] == "train"
        kinds.add(t.negative_kind)
        if t.negative_kind == "in_class":
            assert t.positive_score >= t.negative_score
    assert kinds == {"in_class", "out_of_class"}


def test_street_mining_exact_positive_and_negatives(bench):
    triplets = mine_street_triplets(bench, "train", hard_negatives=2, hard_k=5, out_of_class_negatives=1)
    resolver = RefResolver(bench)
    assert triplets
    for t in triplets:
        kind, split, item_index = parse_ref(t.anchor)
        item = bench.items[item_index]
        assert kind == "street" and split == item.split == "train"
        assert resolver.shop_index(t.positive) == item.shop_index
        neg = resolver.shop_index(t.negative)
        assert neg != item.shop_index
        same = bench.shop_labels[neg] == bench.shop_labels[item.shop_index]
        assert same == (t.negative_kind == "in_class")
    assert {t.negative_kind for t in triplets} == {"in_class", "out_of_class"}
    assert resolver.image(triplets[0].anchor).size[0] > 0


def test_jsonl_round_trip_and_approved_filter(tmp_path, bench):
    triplets = mine_street_triplets(bench, "train", hard_negatives=1, hard_k=3, out_of_class_negatives=0)[:6]
    triplets[0].status = "approved"
    triplets[1].status = "rejected"
    triplets[2].status = "approved"
    path = save_triplets(triplets, tmp_path / "t.jsonl")
    back = load_triplets(path)
    assert back == triplets and triplets_hash(back) == triplets_hash(triplets)
    approved = load_triplets(path, approved_only=True)
    assert [t.anchor for t in approved] == [triplets[0].anchor, triplets[2].anchor]
    assert all(
        isinstance(
            MinedTriplet.from_dict(
                {
                    "anchor": "shop:a",
                    "positive": "shop:b",
                    "negative": "shop:c",
                    "kind": "catalog",
                    "source": "x",
                    "extra": 1,
                }
            ),
            MinedTriplet,
        )
        for _ in range(1)
    )
