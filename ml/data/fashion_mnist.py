"""Fashion-MNIST (Zalando Research, MIT licence) read from the Debian package's IDX files."""

import gzip
import os
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SEARCH_PATHS = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path(__file__).resolve().parents[2] / "data" / "fashion-mnist" / "usr" / "share" / "datasets" / "fashion-mnist",
)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMNISTNotFound(FileNotFoundError):
    pass


def find_fashion_mnist_dir() -> Path:
    candidates = [Path(os.environ["FASHION_MNIST_DIR"])] if os.environ.get("FASHION_MNIST_DIR") else []
    candidates += list(SEARCH_PATHS)
    for candidate in candidates:
        if (candidate / SPLIT_FILES["test"][0]).exists():
            return candidate
    raise FashionMNISTNotFound(
        "Fashion-MNIST not found in "
        + ", ".join(str(c) for c in candidates)
        + ". Run `make data` (Debian package dataset-fashion-mnist) or set FASHION_MNIST_DIR."
    )


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels uint8 [N]) for split 'train' (60k) or 'test' (10k)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    root = root or find_fashion_mnist_dir()
    images_file, labels_file = SPLIT_FILES[split]
    images = _read_idx(root / images_file)
    labels = _read_idx(root / labels_file)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels
