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

# Examples decoded ahead of the one being returned, per read; a read is one device's rows of a
# batch, or a chunk of the evaluation, so this bounds nothing the read does not hold anyway.
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
        # Example i belongs to the first part that ends after it.
        self._ends = np.cumsum([len(r) for _, r in parts])
        self._decode = decode
        self._options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=_PREFETCH)
        self.shape = (len(self._records), *image_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, index: int) -> np.ndarray:
        part = int(np.searchsorted(self._ends, index, side="right"))
        example = self._sources[part][int(self._records[index])]
        return self._decode(example["image"])

    def __getitem__(self, key) -> np.ndarray:
        """The decoded images of ``key`` (an int, a slice or int indices, as for an array; a
        tuple indexes the decoded images further)."""
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            one = not isinstance(first, slice) and np.ndim(first) == 0
            return self[first][rest if one else (slice(None), *rest)]
        if isinstance(key, slice):
            indices = np.arange(*key.indices(len(self)))
        else:
            indices = np.asarray(key)
            if indices.dtype.kind not in "iu":
                raise TypeError(f"index images with ints or a slice, not {indices.dtype}")
            if np.any((indices < -len(self)) | (indices >= len(self))):
                raise IndexError(f"index out of range for {len(self)} images")
            indices = indices % len(self)
        if indices.ndim == 0:
            return self._read(int(indices))
        out = np.empty((len(indices), *self.shape[1:]), self.dtype)
        if len(indices):
            images = grain.MapDataset.source(indices.tolist()).map(self._read)
            for row, image in enumerate(images.to_iter_dataset(self._options)):
                out[row] = image
        return out
