"""Views cropped on the host from full-resolution images: the step's box, PIL's resize, and the
rest of the view's pipeline on the device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cl_ssl import parallel
from cl_ssl.data import augment, host_crop, sources, streaming


def test_host_boxes_are_the_steps_boxes():
    """``crop_box`` with NumPy draws, from the same uniforms, the box the step draws with
    jax.numpy, for images of every shape (the fallback included: 10 x 200 fits no candidate),
    except for rare one-pixel moves where the two float32 ``exp`` round differently."""
    rng = np.random.default_rng(0)
    for height, width, scale in [(375, 500, (0.08, 1.0)), (31, 17, (0.2, 1.0)), (10, 200, (1, 1))]:
        u = rng.random((3000, augment.CROP_UNIFORMS), dtype=np.float32)
        device = jax.jit(jax.vmap(lambda x: augment.crop_box(x, height, width, scale)))(u)
        host = np.stack([augment.crop_box(x, height, width, scale, xp=np) for x in u])
        moved = np.any(host != np.asarray(device), axis=1)
        assert moved.mean() <= 1e-3 and np.abs(host - device).max() <= 1
    np.testing.assert_array_equal(host, np.broadcast_to([0, 93, 10, 13], host.shape))


def test_host_crop_is_the_steps_crop_of_the_full_image():
    """The PIL crop of the host equals the step's ``crop_and_resize`` of the same box on the
    full-resolution image, to PIL's 8-bit rounding."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (45, 60, 3), np.uint8)
    view = augment.ViewConfig(crop_size=16)
    for u in rng.random((5, augment.CROP_UNIFORMS), dtype=np.float32):
        crop = host_crop.resized_crop(Image.fromarray(image), u, view)
        box = augment.crop_box(u, 45, 60, (view.min_scale, view.max_scale), xp=np)
        expected = augment.crop_and_resize(jnp.asarray(image / 255.0, jnp.float32), box, 16)
        assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
        np.testing.assert_allclose(crop / 255.0, expected, atol=2.5 / 255)
    gray = host_crop.resized_crop(Image.fromarray(image[..., 0]), u, view)
    assert gray.shape == (16, 16, 1)


def test_crop_uniforms_depend_on_the_seed_task_and_step_only():
    u = host_crop.crop_uniforms(3, 1, 7, batch_size=8, num_views=2)
    assert u.shape == (8, 2, augment.CROP_UNIFORMS) and u.dtype == np.float32
    assert np.all((u >= 0) & (u < 1))
    np.testing.assert_array_equal(u, host_crop.crop_uniforms(3, 1, 7, 8, 2))
    for other in [(4, 1, 7), (3, 2, 7), (3, 1, 8)]:
        assert not np.array_equal(u, host_crop.crop_uniforms(*other, 8, 2))


def test_given_crops_replace_the_crop_and_keep_every_other_draw():
    """Rows with a host crop go through the view's pipeline from its crop step on with their own
    keys' draws: a crop equal to what the step's crop gives (a full-scale crop of a square image
    at its size) leaves the views unchanged; rows beyond the crops are cropped on the device."""
    images = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3), np.uint8)
    cfg = augment.ViewConfig(crop_size=16, min_scale=1.0, blur_prob=0.5, solarize_prob=0.3)
    batch = jax.jit(augment.augment_batch, static_argnums=2)
    key = jax.random.key(4)
    plain = batch(key, images, cfg)
    np.testing.assert_allclose(batch(key, images, cfg, images[:3]), plain, atol=1e-5)
    other = images[::-1][:3].copy()
    mixed = batch(key, images, cfg, other)
    np.testing.assert_allclose(mixed[3:], plain[3:], atol=1e-5)  # another program: rounding
    keys = jax.random.split(key, 5)[:3]
    cropped = jax.jit(jax.vmap(functools.partial(augment.augment_image, cfg=cfg, cropped=True)))
    np.testing.assert_allclose(mixed[:3], cropped(keys, other), atol=1e-5)
    with pytest.raises(ValueError, match="a cropped view must be 16 x 16"):
        batch(key, images, cfg, images[:3, :8, :8])


def test_padded_views_cannot_be_cropped_on_the_host():
    host_crop.check_views([augment.ViewConfig(), augment.ViewConfig(min_scale=0.5)])
    with pytest.raises(ValueError, match="view2 crops with padding.*set dataset.host_crop=False"):
        host_crop.check_views([augment.ViewConfig(), augment.ViewConfig(crop_padding=4)])


def test_streamed_reads_crop_each_row_from_its_record(mock_tfds):
    """``read_with_crops`` on records of varying size: the stored images of ``images[indices]``,
    and each row's crop of each view is the host crop of that row's record, with that row's
    uniforms (a repeated example is cropped once per row)."""
    views = (augment.ViewConfig(crop_size=8), augment.ViewConfig(crop_size=6, min_scale=0.5))
    with mock_tfds(num_examples=10):
        split = sources.load_split(
            "caltech_birds2011", "train", image_size=12, streaming=True, read_threads=3
        )
        import tensorflow_datasets as tfds

        source = tfds.builder("caltech_birds2011").as_data_source(
            split="train", decoders={"image": tfds.decode.SkipDecoding()}
        )
        records = [source[i]["image"] for i in range(10)]
    indices = np.array([4, 0, 9, 4], np.int64)
    u = host_crop.crop_uniforms(0, 0, 0, len(indices), len(views))
    images, crops = split.images.read_with_crops(indices, u, views)
    np.testing.assert_array_equal(images, split.images[indices])
    assert [c.shape for c in crops] == [(4, 8, 8, 3), (4, 6, 6, 3)]
    originals = [sources.open_image(records[index]) for index in indices]
    assert {o.size for o in originals} - {(12, 12)}  # not the stored squares
    for row, original in enumerate(originals):
        for v, view in enumerate(views):
            expected = host_crop.resized_crop(original, u[row, v], view)
            np.testing.assert_array_equal(crops[v][row], expected)
    assert not np.array_equal(crops[0][0], crops[0][3])


def test_a_process_crops_the_rows_of_its_devices():
    """``parallel.gather_with_crops`` on four devices: every row's stored image and its crop of
    each view, with that row's uniforms, land on the device that holds the row (a repeated
    example is cropped once per row)."""
    n = 20
    originals = [
        np.random.default_rng(r).integers(0, 256, (9 + r, 14 + r), np.uint8) for r in range(n)
    ]
    images = streaming.StreamedImages(
        [([{"image": r} for r in range(n)], np.arange(n))],
        (4, 4, 1),
        lambda image: np.asarray(image)[:4, :4, None],
        num_threads=2,
        open_image=lambda r: Image.fromarray(originals[r]),
    )
    views = (augment.ViewConfig(crop_size=3), augment.ViewConfig(crop_size=5, min_scale=0.5))
    batch = np.array([7, 3, 19, 0, 12, 5, 5, 8], np.int32)
    u = host_crop.crop_uniforms(0, 0, 0, len(batch), 2)
    stored, crops = parallel.gather_with_crops(parallel.make_mesh(4), images, batch, u, views)
    np.testing.assert_array_equal(np.asarray(stored), [originals[r][:4, :4, None] for r in batch])
    for v, (crop, view) in enumerate(zip(crops, views, strict=True)):
        expected = [
            host_crop.resized_crop(Image.fromarray(originals[r]), u[row, v], view)
            for row, r in enumerate(batch)
        ]
        np.testing.assert_array_equal(np.asarray(crop), expected)
        assert len({s.device for s in crop.addressable_shards}) == 4
    assert not np.array_equal(np.asarray(crops[0])[5], np.asarray(crops[0])[6])
