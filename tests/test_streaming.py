"""Streamed images: the pixels of the in-memory split, read where and when a batch needs them."""

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


def test_a_split_leaves_the_image_features_it_does_not_read_encoded(mock_tfds, monkeypatch):
    """CUB's segmentation masks, an image feature the library never reads, stay encoded (every
    label pass and every streamed batch would decode them); so do images of varying size, which
    the reader decodes only when kept."""
    import tensorflow_datasets as tfds

    asked = []
    with mock_tfds(num_examples=6), monkeypatch.context() as patch:  # undone before the mock
        as_data_source = tfds.core.DatasetBuilder.as_data_source  # the mock's

        def recording(self, *args, decoders=None, **kwargs):
            asked.append(decoders)
            return as_data_source(self, *args, decoders=decoders, **kwargs)

        patch.setattr(tfds.core.DatasetBuilder, "as_data_source", recording)
        sources.load_split("caltech_birds2011", "train", image_size=8)
        sources.load_split("cifar10", "train")
    birds, cifar = asked
    assert set(birds) == {"image", "segmentation_mask"}
    assert all(isinstance(d, tfds.decode.SkipDecoding) for d in birds.values())
    assert cifar is None  # fixed-size images, decoded by tfds in the read


def _numbered(n, num_threads=2):
    """StreamedImages of ``n`` 1 x 1 images whose pixel is the record number, and the log of the
    records each read decodes."""
    reads = []

    class Logged(streaming.StreamedImages):
        def __getitem__(self, key):
            reads.append(key)
            return super().__getitem__(key)

    source = [{"image": r} for r in range(n)]
    images = Logged(
        [(source, np.arange(n))],
        (1, 1, 1),
        lambda r: np.full((1, 1, 1), r, np.uint8),
        num_threads=num_threads,
    )
    return images, reads


def test_indices_masks_and_subsets_select_as_for_an_array():
    images, _ = _numbered(6)
    stored = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
    for key in (
        [4, -1, 0],
        np.array([True, False, True, False, False, True]),
        [],
        slice(1, None, 2),
    ):
        np.testing.assert_array_equal(images[key], stored[key])
    part = images.subset([5, 2, 3])
    assert isinstance(part, streaming.StreamedImages) and part.shape == (3, 1, 1, 1)
    np.testing.assert_array_equal(part[[0, 2]], stored[[5, 3]])
    np.testing.assert_array_equal(streaming.subset(stored, [5, 2]), stored[[5, 2]])


def test_bad_indices_and_whole_reads_are_refused():
    images, _ = _numbered(3)
    with pytest.raises(IndexError, match="out of range for 3 images"):
        images[[3]]
    with pytest.raises(TypeError, match="ints, a slice or a mask"):
        images[np.array([0.5])]
    with pytest.raises(IndexError, match="one-dimensional"):
        images[np.zeros((2, 2), int)]
    with pytest.raises(IndexError, match="needs shape \\(3,\\)"):
        images[np.array([True, False])]
    with pytest.raises(TypeError, match="would read them all"):
        np.asarray(images)
    with pytest.raises(TypeError, match="would read them all"):
        list(images)


def test_a_process_reads_the_rows_of_its_devices_once():
    """``parallel.gather_batch`` on four devices: the global batch is the in-memory one, read in
    one read of the process's rows with each distinct example decoded once, and each device
    holds its own rows."""
    images, reads = _numbered(20)
    stored = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    batch = np.array([7, 3, 19, 0, 12, 5, 5, 8], np.int32)  # a replayed example may repeat
    got = parallel.gather_batch(parallel.make_mesh(4), images, batch)
    np.testing.assert_array_equal(np.asarray(got), stored[batch])
    assert len(reads) == 1 and sorted(reads[0]) == sorted(set(batch.tolist()))
    assert len({s.device for s in got.addressable_shards}) == 4 == jax.device_count()
    for shard in got.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), stored[batch[shard.index[0]]])


def test_the_idx_files_cannot_stream():
    with pytest.raises(ValueError, match="cannot stream; set streaming=False"):
        sources.load_split("fashion_mnist_idx", "train", streaming=True)
