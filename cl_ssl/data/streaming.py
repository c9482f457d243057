"""Images read from a data set's records when a batch needs them, instead of held in host memory.

A ``StreamedImages`` stands where a split's uint8 image array [N, H, W, C] would: it has the
array's ``shape``, ``dtype`` and ``len``, and indexing it (an integer, a slice or an array of
indices) reads and decodes those images only, in the order asked, with a grain pipeline
(``grain.MapDataset`` over the requested records, decoded by ``ReadOptions.num_threads``
threads: PIL decodes and resizes outside the GIL). The host keeps the record numbers of the
split, nothing of its images: what a run holds at once is the batch being read (the rows of the
global batch that this process's devices take, as ``parallel.gather_batch`` asks for them) and
the examples the offline probes train on. The order of the examples, and so a resumed run's
position, is the run's (``train.epoch_order``), independent of how the images are stored: a
streamed run computes the same numbers as one with the images in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

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
      decode: image feature (encoded bytes or an array) -> uint8 [*image_shape].
      num_threads: threads decoding in parallel.

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
    ):
        self._sources = [source for source, _ in parts]
        self._records = np.concatenate([np.asarray(r, np.int64) for _, r in parts])
        self._parts = np.repeat(np.arange(len(parts), dtype=np.int16), [len(r) for _, r in parts])
        self._decode = decode
        self._num_threads = num_threads
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

    def _read(self, index: int) -> np.ndarray:
        example = self._sources[self._parts[index]][int(self._records[index])]
        return self._decode(example["image"])

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
        if len(indices):
            options = grain.ReadOptions(
                num_threads=self._num_threads,
                prefetch_buffer_size=max(_PREFETCH, self._num_threads),
            )
            images = grain.MapDataset.source(indices.tolist()).map(self._read)
            for row, image in enumerate(images.to_iter_dataset(options)):
                out[row] = image
        return out


def subset(images, key):
    """``images[key]`` without reading streamed images: for a ``StreamedImages``, its unread
    ``subset``; for an array, the rows (a copy)."""
    return images.subset(key) if isinstance(images, StreamedImages) else images[key]
