"""Images read from a data set's records when a batch needs them, instead of held in host memory.

A ``StreamedImages`` stands where a split's uint8 image array [N, H, W, C] would: it has the
array's ``shape``, ``dtype`` and ``len``, and indexing it (an integer, a slice or an array of
indices) reads and decodes those images only, in the order asked, with a grain pipeline
(``grain.MapDataset`` over the requested records, decoded by ``ReadOptions.num_threads``
threads: PIL decodes and resizes outside the GIL). The host keeps the record numbers of the
split, nothing of its images: what a run holds at once is the batch being read (the rows of the
global batch that this process's devices take, as ``parallel.gather_batch`` asks for them) and
the examples the offline probes train on. The order of the examples, and so a resumed run's
position, is the run's (``planning.epoch_order``), independent of how the images are stored: a
streamed run that crops its views from the stored images (without ``dataset.host_crop``) computes
the same numbers as one with the images in memory.

``read_with_crops`` reads a batch as a run with ``dataset.host_crop`` needs it: each image
decoded once, at its own size, into its stored form and a random resized crop for every view
(``host_crop.resized_crop``), so that views are cropped from the full-resolution image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from cl_ssl.data import augment, host_crop

# Examples decoded ahead of the one being returned, per read (at least one per thread); a read is
# one process's rows of a batch, or a chunk of the evaluation, which it holds anyway.
_PREFETCH = 64


class StreamedImages:
    """uint8 images [N, *image_shape] kept as records in one or more random-access sources.

    Args:
      parts: (source, records) pairs, in order: ``source[r]`` returns an example whose ``'image'``
        the ``decode`` function turns into uint8 [*image_shape]; ``records`` (int [N_k]) are the
        records of the part's examples. Example i of the whole is record i of the concatenation.
      image_shape: (H, W, C) of every decoded image.
      decode: image feature (encoded bytes or an array), or the image as ``open_image`` returns
        it, -> uint8 [*image_shape].
      num_threads: threads decoding in parallel.
      open_image: image feature -> the decoded image at its own size (PIL, mode "RGB" for three
        channels, "L" for one), for ``read_with_crops``; None if the images are not cropped on
        the host.

    Converting it to an array (``np.asarray``, ``jax.device_put``) or iterating over it would read
    the whole split, so both raise TypeError; ``subset`` selects examples without reading them.
    """

    dtype = np.dtype(np.uint8)

    def __init__(
        self,
        parts: Sequence[tuple[Any, np.ndarray]],
        image_shape: tuple[int, ...],
        decode: Callable[[Any], np.ndarray],
        num_threads: int = 16,
        open_image: Callable[[Any], Image.Image] | None = None,
    ):
        self._sources = [source for source, _ in parts]
        self._records = np.concatenate([np.asarray(r, np.int64) for _, r in parts])
        self._parts = np.repeat(np.arange(len(parts), dtype=np.int16), [len(r) for _, r in parts])
        self._decode = decode
        self._num_threads = num_threads
        self._open_image = open_image
        self.shape = (len(self._records), *image_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"converting {len(self)} streamed images to an array would read them all; index the "
            "rows a step needs (parallel.gather_batch), or take a subset"
        )

    def __iter__(self):
        raise TypeError("iterating over streamed images would read them all; index them instead")

    def _indices(self, key) -> np.ndarray:
        """int64 indices (0-d for one example) of an int, a slice, int indices or a boolean mask."""
        if isinstance(key, slice):
            return np.arange(*key.indices(len(self)))
        indices = np.asarray(key)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise IndexError(f"a boolean mask of {len(self)} images needs shape ({len(self)},)")
            return np.flatnonzero(indices)
        if indices.size == 0:
            indices = indices.astype(np.int64)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"index images with ints, a slice or a mask, not {indices.dtype}")
        if indices.ndim > 1:
            raise IndexError(f"index images with one-dimensional indices, not {indices.shape}")
        if np.any((indices < -len(self)) | (indices >= len(self))):
            raise IndexError(f"index out of range for {len(self)} images")
        return indices % len(self)

    def subset(self, key) -> StreamedImages:
        """The examples of ``key`` (as for ``__getitem__``), still unread."""
        indices = np.atleast_1d(self._indices(key))
        out = object.__new__(StreamedImages)
        out.__dict__.update(self.__dict__)
        out._records, out._parts = self._records[indices], self._parts[indices]
        out.shape = (len(indices), *self.shape[1:])
        return out

    def _feature(self, index: int) -> Any:
        return self._sources[self._parts[index]][int(self._records[index])]["image"]

    def _read(self, index: int) -> np.ndarray:
        return self._decode(self._feature(index))

    def _map(self, items: list, fn: Callable) -> Any:
        """``fn`` of each item, in order, computed by the reading threads."""
        if not items:
            return ()
        options = grain.ReadOptions(
            num_threads=self._num_threads,
            prefetch_buffer_size=max(_PREFETCH, self._num_threads),
        )
        return grain.MapDataset.source(items).map(fn).to_iter_dataset(options)

    def __getitem__(self, key) -> np.ndarray:
        """The decoded images of ``key`` (an int, a slice, int indices or a boolean mask, as for
        an array; a tuple indexes the decoded images further)."""
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            one = not isinstance(first, slice) and np.ndim(first) == 0
            return self[first][rest if one else (slice(None), *rest)]
        indices = self._indices(key)
        if indices.ndim == 0:
            return self._read(int(indices))
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        for row, image in enumerate(self._map(indices.tolist(), self._read)):
            out[row] = image
        return out

    def read_with_crops(
        self, indices, uniforms: np.ndarray, views: Sequence[augment.ViewConfig]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """The images of ``indices`` and, for every view, a random resized crop of each, taken
        from the decoded image at its own size (``host_crop.resized_crop``).

        Args:
          indices: int [n], examples (a repeated one is read, and cropped, once per row).
          uniforms: float32 [n, len(views), augment.CROP_UNIFORMS], the draws of the boxes
            (``host_crop.crop_uniforms``).
          views: the views, with their crop sizes and scale ranges.

        Returns:
          (uint8 [n, *image_shape] as ``self[indices]``, one uint8 [n, s_v, s_v, C] per view).
        """
        if self._open_image is None:
            raise ValueError("these images were opened without open_image; they cannot be cropped")
        indices = np.atleast_1d(self._indices(indices))
        channels = self.shape[-1]
        images = np.empty((len(indices), *self.shape[1:]), self.dtype)
        crops = tuple(
            np.empty((len(indices), v.crop_size, v.crop_size, channels), self.dtype) for v in views
        )

        def read(item):
            index, u = item
            original = self._open_image(self._feature(index))
            view_crops = [
                host_crop.resized_crop(original, u[v], view) for v, view in enumerate(views)
            ]
            return self._decode(original), view_crops

        items = list(zip(indices.tolist(), uniforms, strict=True))
        for row, (image, view_crops) in enumerate(self._map(items, read)):
            images[row] = image
            for out, crop in zip(crops, view_crops, strict=True):
                out[row] = crop
        return images, crops


def subset(images, key):
    """``images[key]`` without reading streamed images: for a ``StreamedImages``, its unread
    ``subset``; for an array, the rows (a copy)."""
    return images.subset(key) if isinstance(images, StreamedImages) else images[key]
