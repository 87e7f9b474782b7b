"""Offline datasets for training and for the bundled demo: IDX files (Fashion-MNIST, MNIST) and sklearn digits.

Nothing here touches the network. Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package
(``apt-get install dataset-fashion-mnist``) or any folder holding the four IDX files, gzipped or not.
Only numpy is needed, so the harness can use these loaders without torch.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_CLASSES = (
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
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFound(FileNotFoundError):
    """The requested dataset is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class ImageSplits:
    """Train and test images as float32 NCHW in [0, 1], labels as int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (optionally ``.gz``): the format of MNIST and Fashion-MNIST."""
    p = Path(path)
    raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{p} is not an IDX file (bad magic number)")
    dtype = _IDX_DTYPES.get(raw[2])
    if dtype is None:
        raise ValueError(f"{p}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{p}: header says {dims} but holds {data.size} elements (truncated file?)")
    return data.reshape(dims).astype(np.dtype(dtype).newbyteorder("="), copy=False)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFound(f"{folder} has no {stem}[.gz]")


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool N×H×W images by an integer factor (28→14 keeps Fashion-MNIST learnable and 4× cheaper)."""
    if factor == 1:
        return images
    n, h, w = images.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by {factor}")
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def load_idx_folder(folder: str | os.PathLike[str], image_size: int = 14, name: str | None = None) -> ImageSplits:
    """Load an MNIST-layout folder (train/t10k images and labels) as NCHW float32 in [0, 1]."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetNotFound(f"dataset folder {root} does not exist")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte")).astype(np.float32) / 255.0
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.shape[-1] % image_size:
            raise ValueError(f"cannot resize {images.shape[-1]}px images to {image_size}px (needs an integer factor)")
        images = downsample(images, images.shape[-1] // image_size)
        parts[split] = (images[:, None, :, :].astype(np.float32), labels)
    return ImageSplits(name or root.name, parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1])


def load_fashion_mnist(image_size: int = 14, folder: str | None = None) -> ImageSplits:
    """Fashion-MNIST (Zalando, MIT licence) from ``folder``, $QTBENCH_FASHION_MNIST or the Debian package path."""
    candidates = [folder] if folder else [os.environ.get("QTBENCH_FASHION_MNIST"), *FASHION_MNIST_DIRS]
    for cand in candidates:
        if cand and Path(cand).is_dir():
            return load_idx_folder(cand, image_size, name="fashion-mnist")
    raise DatasetNotFound(
        "Fashion-MNIST not found; install it with 'apt-get install dataset-fashion-mnist' "
        "or point --data-dir / QTBENCH_FASHION_MNIST at a folder with the four IDX files"
    )


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> ImageSplits:
    """sklearn's 8×8 digits (1,797 images, ships inside scikit-learn): a tiny fallback for quick tests."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetNotFound("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    d = _sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return ImageSplits("digits", x[train], y[train], x[test], y[test])


def load_dataset(name: str, image_size: int = 14, data_dir: str | None = None) -> ImageSplits:
    """Dispatch by name: ``fashion-mnist``, ``digits`` or ``idx`` (needs ``data_dir``)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(image_size, data_dir)
    if name == "digits":
        return load_digits()
    if name == "idx":
        if not data_dir:
            raise DatasetNotFound("dataset 'idx' needs --data-dir pointing at an MNIST-layout folder")
        return load_idx_folder(data_dir, image_size)
    raise ValueError(f"unknown dataset {name!r}; choose fashion-mnist, digits or idx")
