"""Streamed images: the pixels of the in-memory split, read where and when a batch needs them."""

import collections

import jax
import numpy as np
import pytest

from cl_ssl import parallel
from cl_ssl.data import sources, streaming


@pytest.mark.parametrize(
    ("name", "image_size"),
    [("caltech_birds2011", 16), ("cifar10", 0)],  # images of varying size; PNG-encoded 32 x 32
)
def test_streamed_split_holds_the_in_memory_splits_images_and_labels(mock_tfds, name, image_size):
    with mock_tfds(num_examples=12):
        whole = sources.load_split(name, "train", image_size=image_size)
        streamed = sources.load_split(
            name, "train", image_size=image_size, streaming=True, read_threads=3
        )
    assert isinstance(streamed.images, streaming.StreamedImages)
    assert (streamed.images.shape, streamed.images.dtype) == (whole.images.shape, np.uint8)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    assert streamed.num_classes == whole.num_classes
    order = np.random.default_rng(0).permutation(12)
    np.testing.assert_array_equal(streamed.images[order], whole.images[order])
    np.testing.assert_array_equal(streamed.images[2:9:3], whole.images[2:9:3])
    np.testing.assert_array_equal(streamed.images[-1], whole.images[-1])
    np.testing.assert_array_equal(streamed.images[:, 0, 1], whole.images[:, 0, 1])
    assert streamed.images[np.arange(0)].shape == (0, *whole.images.shape[1:])


def test_bad_indices_are_refused_as_for_an_array():
    images = streaming.StreamedImages([([], np.arange(0))], (2, 2, 1), decode=np.asarray)
    with pytest.raises(IndexError, match="out of range for 0 images"):
        images[[0]]
    with pytest.raises(TypeError, match="ints or a slice"):
        images[np.array([0.5])]


def test_a_process_reads_the_rows_of_its_devices_once():
    """``parallel.gather_batch`` on four devices: the global batch equals the in-memory one's, its
    rows are decoded once each (in one read of the process's rows), and each device holds its own
    rows."""
    stored = np.random.default_rng(1).integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    decoded = collections.Counter()

    def decode(record):
        decoded[int(record)] += 1
        return stored[record]

    source = [{"image": r} for r in range(20)]
    images = streaming.StreamedImages([(source, np.arange(20))], (4, 4, 3), decode, num_threads=2)
    mesh = parallel.make_mesh(4)
    batch = np.array([7, 3, 19, 0, 12, 5, 5, 8], np.int32)  # a replayed example may repeat
    got = parallel.gather_batch(mesh, images, batch)
    np.testing.assert_array_equal(np.asarray(got), stored[batch])
    assert decoded == collections.Counter(batch.tolist())
    for shard in got.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), stored[batch[shard.index[0]]])
    assert len({s.device for s in got.addressable_shards}) == 4 == jax.device_count()


def test_the_idx_files_cannot_stream():
    with pytest.raises(ValueError, match="cannot stream; set streaming=False"):
        sources.load_split("fashion_mnist_idx", "train", streaming=True)
