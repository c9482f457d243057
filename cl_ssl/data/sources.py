"""Whole image-classification data sets as NumPy arrays.

Small data sets (CIFAR, Fashion-MNIST) are read once into host memory; the training code then
puts the arrays on the device for the whole run. Two kinds of source:

- ``'fashion_mnist_idx'``: the original Fashion-MNIST IDX files, as installed offline by Debian's
  ``dataset-fashion-mnist`` package;
- any other name: a prepared tfds data set, read without TensorFlow through its ArrayRecord data
  source (``tfds.data_source``).
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np

FASHION_MNIST_IDX = "fashion_mnist_idx"
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UINT8 = 0x08
_FASHION_MNIST_CLASSES = 10
_READ_BATCH = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
    """One split of an image-classification data set.

    Attributes:
      images: uint8 [N, H, W, C], C in {1, 3}.
      labels: int32 [N], values in [0, num_classes).
      num_classes: size of the label space (classes absent from this split still count).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int


def load_split(name: str, split: str, *, data_dir: str | None = None) -> ArraySplit:
    """Reads a whole split into memory.

    Args:
      name: ``'fashion_mnist_idx'`` for the Debian IDX files, otherwise a tfds name such as
        ``'cifar100'``, ``'cifar10'``, ``'fashion_mnist'`` or ``'mnist'`` (``'name:version'``
        works as in tfds).
      split: ``'train'`` or ``'test'`` for the IDX files; any tfds split string otherwise.
      data_dir: directory holding the IDX files (default /usr/share/datasets/fashion-mnist), or
        the tfds data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      The split: images uint8 [N, H, W, C], labels int32 [N].

    Raises:
      FileNotFoundError: the data are not on disk; the message says how to get them.
      ValueError: unknown data set or split, or malformed files.
    """
    if name == FASHION_MNIST_IDX:
        return _load_idx_split(split, data_dir or DEFAULT_IDX_DIR)
    return _load_tfds_split(name, split, data_dir)


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """Reads a gzip-compressed IDX file of uint8 values.

    IDX layout: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions,
    one big-endian uint32 per dimension, then the values in C order.

    Args:
      path: the .gz file.
      ndim: the number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
      uint8 array with the shape stored in the header.
    """
    with gzip.open(path, "rb") as f:
        data = f.read()
    header_len = 4 + 4 * ndim
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file (its magic number does not start with 0x0000)."
        )
    if data[2] != _IDX_UINT8:
        raise ValueError(f"{path} holds IDX type 0x{data[2]:02x}; only uint8 (0x08) is supported.")
    if data[3] != ndim:
        raise ValueError(f"{path} has {data[3]} dimensions; expected {ndim}.")
    if len(data) < header_len:
        raise ValueError(f"{path} is truncated inside its IDX header.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(data) - header_len != size:
        raise ValueError(
            f"{path}: the header announces shape {shape} ({size} bytes) but the file holds "
            f"{len(data) - header_len} bytes of data."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _load_idx_split(split: str, data_dir: str) -> ArraySplit:
    """Reads the Fashion-MNIST IDX files of one split; images become [N, H, W, 1]."""
    if split not in _IDX_FILES:
        raise ValueError(
            f"Split {split!r} does not exist for {FASHION_MNIST_IDX!r}; "
            f"use one of {sorted(_IDX_FILES)}."
        )
    paths = [os.path.join(data_dir, f) for f in _IDX_FILES[split]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go to "
            f"{DEFAULT_IDX_DIR}), or pass "
            f"data_dir=<directory holding {', '.join(_IDX_FILES[split])}>."
        )
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1).astype(np.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
            f"{labels.shape[0]} labels."
        )
    if labels.size and labels.max() >= _FASHION_MNIST_CLASSES:
        raise ValueError(f"{paths[1]} holds label {labels.max()}; Fashion-MNIST has 10 classes.")
    return ArraySplit(images=images[..., None], labels=labels, num_classes=_FASHION_MNIST_CLASSES)


def _load_tfds_split(name: str, split: str, data_dir: str | None) -> ArraySplit:
    """Reads a prepared tfds image-classification split through its random-access data source."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown data set {name!r}: it is neither {FASHION_MNIST_IDX!r} nor a tfds data set "
            "(see https://www.tensorflow.org/datasets/catalog for names such as 'cifar100')."
        ) from e
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"tfds data set {name!r} has features {sorted(features)}; an image-classification data "
            "set with 'image' and 'label' is needed."
        )
    image_shape = tuple(features["image"].shape)
    image_dtype = np.dtype(features["image"].np_dtype)
    if None in image_shape or image_dtype != np.uint8:
        raise ValueError(
            f"tfds data set {name!r} has images of shape {image_shape} and dtype "
            f"{image_dtype.name}; load_split needs fixed-size uint8 images "
            "(larger data sets stream through the data pipeline instead)."
        )
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError as e:
        root = data_dir or str(builder.data_dir_root)
        raise FileNotFoundError(
            f"tfds data set {name!r} is not prepared in the array_record format under {root} "
            "(reading it needs no TensorFlow, preparing it does). Prepare it once with\n"
            "  pip install '.[prepare]'\n"
            f"  python -m cl_ssl.data.prepare --dataset={name} --data_dir={root}\n"
            "or pass the data_dir that holds it."
        ) from e
    num = len(source)
    if num == 0:
        raise ValueError(f"Split {split!r} of tfds data set {name!r} is empty.")
    images, labels = [], []
    for start in range(0, num, _READ_BATCH):
        examples = source.__getitems__(list(range(start, min(start + _READ_BATCH, num))))
        images.extend(ex["image"] for ex in examples)
        labels.extend(ex["label"] for ex in examples)
    return ArraySplit(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int32),
        num_classes=int(features["label"].num_classes),
    )
