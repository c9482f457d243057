"""Image-classification data sets as NumPy arrays, or streamed from their records.

A split is read once into host memory, and the training code then keeps it on the devices or in
host memory, or, for tfds data sets with ``streaming``, its labels only are read and its images
stay in their records until a batch needs them (``streaming.StreamedImages``). Sources:

- ``'fashion_mnist_idx'``: the original Fashion-MNIST IDX files, as installed offline by Debian's
  ``dataset-fashion-mnist`` package;
- ``'imagenet100'``: the 100 CMC classes of tfds ``imagenet2012`` (classes/imagenet100_cmc.txt),
  labelled 0-99 in sorted WordNet-id order; its ``'test'`` split is ImageNet's validation set;
- ``'imagenet_sub'``: CCL's ImageNet-Sub (Lin et al., ICME 2022), the first 100 classes of tfds
  ``imagenet2012`` (labels 0-99, kept as they are), split like ``'imagenet100'``;
- ``'domainnet'``: tfds ``domainnet/<domain>`` for each domain of a list (CaSSLe's order by
  default), concatenated, with each image's domain;
- any other name: a prepared tfds data set.

tfds data sets are read without TensorFlow through their ArrayRecord data source
(``tfds.data_source``). Images of varying size (ImageNet, DomainNet) are stored, or streamed, at
one size, ``image_size``: shorter side resized to it, then the central square. Read into memory,
each is written once into one preallocated array. At 224 pixels ImageNet-100's training set takes
19 GB (ImageNet-Sub's, also 100 ImageNet classes, about as much) and DomainNet's six training
domains 62 GB (27 GB more for their test images), so their presets stream them
(``dataset.streaming=True``). A streamed split still reads its labels at every start, in a pass
over all its records that decodes no image (the ImageNet ones make that pass anyway, to find
their 100 classes), and its images can also be read at their own size, for views cropped on the
host (``StreamedImages.read_with_crops``, ``dataset.host_crop``).

``data_dir`` may be a bucket (``gs://bucket/tensorflow_datasets``): the IDX files are read through
``etils.epath``, and ArrayRecord reads ``gs://`` records itself (its GCS reader, with the
machine's default credentials), without copying the data set to local disk.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import io
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cl_ssl import storage
from cl_ssl.data import streaming as streaming_lib

FASHION_MNIST_IDX = "fashion_mnist_idx"
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
IMAGENET100 = "imagenet100"
IMAGENET_SUB = "imagenet_sub"
DOMAINNET = "domainnet"
DOMAINNET_CASSLE_ORDER = ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")
"""CaSSLe's DomainNet task order (Fini et al., CVPR 2022; ``cassle/methods/base.py``)."""
CLASSES_DIR = pathlib.Path(__file__).parent / "classes"

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
      images: uint8 [N, H, W, C], C in {1, 3}: an array, or ``streaming.StreamedImages`` (read when
        indexed).
      labels: int32 [N], values in [0, num_classes).
      num_classes: size of the label space (classes absent from this split still count).
      domains: int32 [N], the position of each image's domain in the list that was read, for
        multi-domain data sets (DomainNet); None otherwise.
      archive_rank: int64 [N], each example's position in the data set's original order, for a
        tfds data set with one of ``ORDER_FEATURES`` (CIFAR's ``id``, ``train_00000``, ...: its
        archive order; ImageNet's ``file_name``, ``n01440764_10026.JPEG``: an ImageFolder's sorted
        order within each class), which tfds shuffles into its records; None where the rows are
        in that order already or no such order is known.
    """

    images: np.ndarray | streaming_lib.StreamedImages
    labels: np.ndarray
    num_classes: int
    domains: np.ndarray | None = None
    archive_rank: np.ndarray | None = None


# Text features whose sorted order is a tfds data set's original order
# (``ArraySplit.archive_rank``), in order of preference.
ORDER_FEATURES = ("id", "file_name")


def imagenet100_classes() -> list[str]:
    """The 100 WordNet ids of ImageNet-100, sorted; label k is the k-th."""
    lines = (CLASSES_DIR / "imagenet100_cmc.txt").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def imagenet_sub_classes() -> list[str]:
    """The 100 WordNet ids of CCL's ImageNet-Sub, sorted; label k is the k-th.

    ImageNet-Sub is ImageNet's first 100 classes: CCL's ``train.py`` (l. 296-305:
    ``order = np.arange(100)``, then shuffled into tasks) and ``lincls_eval.py`` (l. 276-286 and
    303-308, ``i in order``) keep labels 0-99 of torchvision's ImageFolder on the whole of
    ImageNet (VDIGPKU/ContinualContrastiveLearning). ImageFolder numbers the sorted WordNet ids,
    as tfds ``imagenet2012`` does, so these are that data set's first 100 label names and
    ImageNet-Sub's labels are imagenet2012's labels 0-99, unchanged.
    """
    import tensorflow_datasets as tfds

    return tfds.builder("imagenet2012").info.features["label"].names[:100]


def num_domains(name: str, domains: Sequence[str] = ()) -> int | None:
    """How many domains `load_split` reads for ``name`` and ``domains``; None for a
    single-domain data set."""
    if name != DOMAINNET:
        return None
    return len(domains or DOMAINNET_CASSLE_ORDER)


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: int = 0,
    domains: Sequence[str] = (),
    streaming: bool = False,
    read_threads: int = 16,
) -> ArraySplit:
    """Reads a whole split into memory, or, with ``streaming``, its labels and where its images are.

    Args:
      name: ``'fashion_mnist_idx'`` for the Debian IDX files, ``'imagenet100'``,
        ``'imagenet_sub'``, ``'domainnet'``, otherwise a tfds name such as ``'cifar100'``,
        ``'cifar10'``, ``'fashion_mnist'`` or ``'mnist'`` (``'name:version'`` works as in tfds).
      split: ``'train'`` or ``'test'`` for the IDX files, ImageNet-100, ImageNet-Sub and
        DomainNet (the ImageNet ones test on ImageNet's validation set); any tfds split string
        otherwise.
      data_dir: directory holding the IDX files (default /usr/share/datasets/fashion-mnist), or
        the tfds data directory (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_size: S > 0 stores every image as S x S pixels (shorter side resized to S with
        bicubic interpolation, then the central S x S crop); needed for data sets whose images
        vary in size. 0 keeps the images as they are.
      domains: DomainNet only: the domains to read, in task order; empty for CaSSLe's order.
      streaming: tfds data sets only: the images stay in their records, read and decoded when
        indexed (``streaming.StreamedImages``, ``read_threads`` threads), so that host memory
        holds the labels and the images of the batch being read, not the split.
      read_threads: threads that decode the images of a streamed read.

    Returns:
      The split: images uint8 [N, H, W, C] (an array, or ``StreamedImages``), labels int32 [N], and
      for DomainNet domains int32 [N].

    Raises:
      FileNotFoundError: the data are not on disk; the message says how to get them.
      ValueError: unknown data set, split or domain, malformed files, or a missing image_size.
    """
    if domains and name != DOMAINNET:
        raise ValueError(f"domains={list(domains)} apply to {DOMAINNET!r} only, not to {name!r}.")
    if name == FASHION_MNIST_IDX:
        if streaming:
            raise ValueError(
                f"{FASHION_MNIST_IDX!r} is read whole from its IDX files and cannot stream; set "
                "streaming=False (--config.dataset.streaming=false)."
            )
        if image_size:
            raise ValueError(f"{FASHION_MNIST_IDX!r} keeps its 28x28 images; set image_size=0.")
        return _load_idx_split(split, data_dir or DEFAULT_IDX_DIR)
    if name in (IMAGENET100, IMAGENET_SUB):
        tfds_split = {"train": "train", "test": "validation"}.get(split)
        if tfds_split is None:
            raise ValueError(f"Split {split!r} does not exist for {name!r}; use 'train' or 'test'.")
        classes = imagenet100_classes() if name == IMAGENET100 else imagenet_sub_classes()
        readers = [
            _tfds_reader(
                "imagenet2012", tfds_split, data_dir, image_size, classes, undecoded=streaming
            )
        ]
    elif name == DOMAINNET:
        readers = _domain_readers(
            split, data_dir, image_size, list(domains or DOMAINNET_CASSLE_ORDER), streaming
        )
    else:
        readers = [_tfds_reader(name, split, data_dir, image_size, undecoded=streaming)]
    return _read(readers, streaming, read_threads, domains=name == DOMAINNET)


def _domain_readers(
    split: str, data_dir: str | None, image_size: int, domains: list[str], streaming: bool
) -> list[_TfdsReader]:
    """A reader of tfds ``domainnet/<domain>`` for each domain, in that order."""
    unknown = sorted(set(domains) - set(DOMAINNET_CASSLE_ORDER))
    if unknown or len(set(domains)) != len(domains):
        raise ValueError(
            f"domains={domains} must be distinct DomainNet domains, of {list(DOMAINNET_CASSLE_ORDER)}."
        )
    return [
        _tfds_reader(f"{DOMAINNET}/{d}", split, data_dir, image_size, undecoded=streaming)
        for d in domains
    ]


def _read(
    readers: list[_TfdsReader], streaming: bool, read_threads: int, *, domains: bool
) -> ArraySplit:
    """The readers' examples, one after the other, as one split (with each example's reader as
    its domain when ``domains``): read into one preallocated array, each image written once
    straight into its row, or streamed."""
    sizes = [r.size for r in readers]
    ids = None
    if streaming:
        images = streaming_lib.StreamedImages(
            [(r.source, r.records) for r in readers],
            readers[0].image_shape,
            readers[0].decode,
            num_threads=read_threads,
            open_image=readers[0].open,
        )
        read = [r.labels_and_order() for r in readers]
        labels = np.concatenate([kept_labels for kept_labels, _ in read])
        if len(readers) == 1:
            ids = read[0][1]
    else:
        images, labels = _allocate(sum(sizes), readers[0].image_shape)
        if len(readers) == 1 and readers[0].order_feature:
            ids = np.empty(sizes[0], object)
        starts = np.cumsum([0, *sizes[:-1]])
        for reader, start, stop in zip(readers, starts, np.cumsum(sizes), strict=True):
            reader.fill(images[start:stop], labels[start:stop], ids)  # views: filled in place
    return ArraySplit(
        images=images,
        labels=labels,
        num_classes=readers[0].num_classes,
        domains=np.repeat(np.arange(len(readers), dtype=np.int32), sizes) if domains else None,
        archive_rank=None if ids is None else archive_rank(ids),
    )


def archive_rank(ids: np.ndarray) -> np.ndarray:
    """int64 [N]: the rank of each of the examples' ``ORDER_FEATURES`` strings [N] in sorted order
    (tfds numbers a data set's examples in its archive order with zero-padded ids,
    ``train_00000``; ImageNet's file names sort within a class as an ImageFolder lists them)."""
    rank = np.empty(len(ids), np.int64)
    rank[np.argsort(np.asarray(ids, str), kind="stable")] = np.arange(len(ids))
    return rank


def _allocate(size: int, image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Uninitialised uint8 images [size, *image_shape] and int32 labels [size]."""
    return np.empty((size, *image_shape), np.uint8), np.empty(size, np.int32)


def open_image(image, mode: str = "RGB") -> Image.Image:
    """The PIL image, in ``mode``, of an encoded image (bytes), a uint8 [H, W, C] array or a PIL
    image."""
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    elif not isinstance(image, Image.Image):
        image = np.asarray(image)
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return image.convert(mode)


def central_square(image, size: int) -> np.ndarray:
    """uint8 [size, size, 3] from an encoded image (bytes), a uint8 [H, W, C] array or a PIL
    image: shorter side resized to ``size`` (bicubic), then the central square."""
    pil = open_image(image)
    scale = size / min(pil.size)
    width, height = (max(size, round(d * scale)) for d in pil.size)
    pil = pil.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)))


def _read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Reads a gzip-compressed IDX file of uint8 values.

    IDX layout: two zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions,
    one big-endian uint32 per dimension, then the values in C order.

    Args:
      path: the .gz file, a local path or a bucket URI.
      ndim: the number of dimensions the file must have (3 for images, 1 for labels).

    Returns:
      uint8 array with the shape stored in the header.
    """
    data = gzip.decompress(storage.path(path).read_bytes())
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
    paths = [storage.path(data_dir) / f for f in _IDX_FILES[split]]
    missing = [str(p) for p in paths if not p.exists()]
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


@dataclasses.dataclass(frozen=True)
class _TfdsReader:
    """The examples of one tfds split that a run keeps, and how to read them.

    Attributes:
      source: the split's random-access data source (``tfds.data_source``).
      records: int [size], the records kept, in record order.
      relabel: int [C_tfds], the label a kept record's tfds label becomes.
      image_shape: (H, W, C) of the images as stored.
      image_size: S > 0 stores images as S x S central squares; 0 as they are.
      num_classes: size of the label space after relabelling.
      kept_labels: int32 [size], the kept records' labels when a first pass has read them.
      order_feature: the examples' feature of ``ORDER_FEATURES`` (their archive order), if any.
      kept_order: object [size], the kept records' ``order_feature`` strings when the first pass
        has read them.
    """

    source: Any
    records: np.ndarray
    relabel: np.ndarray
    image_shape: tuple[int, ...]
    image_size: int
    num_classes: int
    kept_labels: np.ndarray | None = None
    order_feature: str | None = None
    kept_order: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.records)

    def decode(self, image) -> np.ndarray:
        """uint8 [*image_shape] from an image feature (encoded bytes, read undecoded, or an array)
        or from the image as ``open`` returns it."""
        if self.image_size > 0:
            return central_square(image, self.image_size)
        if isinstance(image, bytes):
            image = Image.open(io.BytesIO(image))
        return np.asarray(image).reshape(self.image_shape)

    def open(self, image) -> Image.Image:
        """The image of an image feature at its own size, in mode "RGB" for images stored with
        three channels, "L" for one."""
        return open_image(image, "RGB" if self.image_shape[-1] == 3 else "L")

    def labels_and_order(self) -> tuple[np.ndarray, np.ndarray | None]:
        """int32 [size], the kept records' labels, and object [size], their ``order_feature``
        strings (None without one): one pass over the records unless the first one read them."""
        if self.kept_labels is not None:
            return self.kept_labels, self.kept_order
        return _read_labels(self.source, self.records, self.relabel, self.order_feature)

    def fill(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Writes the kept examples, in record order, into uint8 [size, H, W, C] and int32 [size]
        arrays (and their ``order_feature`` strings into object [size] ``ids`` when given): each
        image once, straight into its row, so a split never exists twice in memory."""
        # PIL decodes and resizes outside the GIL: threads share the work.
        with concurrent.futures.ThreadPoolExecutor() as pool:
            start = 0
            for batch in _batches(self.source, self.records):
                stop = start + len(batch)
                labels[start:stop] = self.relabel[[ex["label"] for ex in batch]]
                if ids is not None:
                    ids[start:stop] = [_text(ex[self.order_feature]) for ex in batch]
                for row, image in enumerate(pool.map(lambda ex: self.decode(ex["image"]), batch)):
                    images[start + row] = image
                start = stop


def _text(value) -> str:
    """A tfds Text feature's value (bytes as read from the records) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_labels(
    source, records: np.ndarray, relabel: np.ndarray, order_feature: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """int32 [len(records)]: ``relabel`` of the tfds labels of ``records``; and, with
    ``order_feature``, object [K] of that feature's strings for the K records kept (relabelled
    to >= 0), read in the same pass, else None."""
    labels, order = [], []
    for batch in _batches(source, records):
        for ex in batch:
            labels.append(ex["label"])
            if order_feature and relabel[ex["label"]] >= 0:
                order.append(_text(ex[order_feature]))
    kept_order = np.array(order, object) if order_feature else None
    return relabel[np.asarray(labels, np.int64)].astype(np.int32), kept_order


def _tfds_reader(
    name: str,
    split: str,
    data_dir: str | None,
    image_size: int,
    classes: Sequence[str] | None = None,
    undecoded: bool = False,
) -> _TfdsReader:
    """Opens a tfds split; with ``classes``, a first pass reads the labels to find the examples
    to keep. Images of varying size, and every image when ``undecoded`` (streaming), are read
    as their encoded bytes and decoded by the reader, only when kept."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown data set {name!r}: it is neither {FASHION_MNIST_IDX!r}, {IMAGENET100!r}, "
            f"{IMAGENET_SUB!r}, {DOMAINNET!r} nor a tfds data set (see "
            "https://www.tensorflow.org/datasets/catalog for names such as 'cifar100')."
        ) from e
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"tfds data set {name!r} has features {sorted(features)}; an image-classification data "
            "set with 'image' and 'label' is needed."
        )
    image_shape = tuple(features["image"].shape)
    image_dtype = np.dtype(features["image"].np_dtype)
    if image_dtype != np.uint8:
        raise ValueError(f"tfds data set {name!r} has {image_dtype.name} images; uint8 is needed.")
    if None in image_shape and image_size <= 0:
        raise ValueError(
            f"tfds data set {name!r} has images of varying size {image_shape}; set "
            "--config.dataset.image_size to the side at which to store them (e.g. 224)."
        )
    skip = undecoded or None in image_shape
    # Other image features (CUB's segmentation masks) are never read: left encoded, as the image
    # is where it is decoded only when kept.
    decoders = {
        key: tfds.decode.SkipDecoding()
        for key, feature in features.items()
        if isinstance(feature, tfds.features.Image) and (key != "image" or skip)
    }
    try:
        source = builder.as_data_source(split=split, decoders=decoders or None)
    except NotImplementedError as e:
        root = data_dir or str(builder.data_dir_root)
        raise FileNotFoundError(
            f"tfds data set {name!r} is not prepared in the array_record format under {root} "
            "(reading it needs no TensorFlow, preparing it does). Prepare it once with\n"
            "  pip install '.[prepare]'\n"
            f"  python -m cl_ssl.data.prepare --dataset={name} --data_dir={root}\n"
            "or pass the data_dir that holds it."
        ) from e
    if len(source) == 0:
        raise ValueError(f"Split {split!r} of tfds data set {name!r} is empty.")
    records = np.arange(len(source))
    num_classes = int(features["label"].num_classes)
    relabel = np.arange(num_classes)
    kept_labels = kept_order = None
    order_feature = next((f for f in ORDER_FEATURES if f in features), None)
    if classes is not None:
        names = features["label"].names
        missing = sorted(set(classes) - set(names))
        if missing:
            raise ValueError(f"tfds data set {name!r} has no classes {missing[:5]}.")
        position = {c: i for i, c in enumerate(classes)}
        relabel = np.array([position.get(n, -1) for n in names])  # old label -> new, or -1
        kept_labels, kept_order = _read_labels(source, records, relabel, order_feature)
        records = records[kept_labels >= 0]
        kept_labels = kept_labels[kept_labels >= 0]
        num_classes = len(classes)
        if records.size == 0:
            raise ValueError(
                f"Split {split!r} of tfds data set {name!r} holds none of {classes[:5]}."
            )
    if image_size > 0:
        image_shape = (image_size, image_size, 3)
    return _TfdsReader(
        source,
        records,
        relabel,
        image_shape,
        image_size,
        num_classes,
        kept_labels,
        order_feature,
        kept_order,
    )


def _batches(source, records: np.ndarray):
    """The examples of ``records`` from a tfds data source, in lists of up to _READ_BATCH."""
    for start in range(0, len(records), _READ_BATCH):
        yield source.__getitems__(records[start : start + _READ_BATCH].tolist())
