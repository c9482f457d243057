"""Tests of the on-device SSL augmentations against NumPy transcriptions of torchvision."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import PIL.ImageFilter
import pytest

from cl_ssl.data import augment

LUMA = np.array([0.299, 0.587, 0.114])
OFF = dict(min_scale=1.0, max_scale=1.0, jitter_prob=0.0, gray_prob=0.0, flip_prob=0.0)

augment_batch = jax.jit(augment.augment_batch, static_argnums=2)
crop_and_resize = jax.jit(augment.crop_and_resize, static_argnums=2)
resize = jax.jit(
    functools.partial(jax.image.resize, method="bicubic", antialias=True), static_argnums=1
)


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _unit(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def _np_normalize(x, cfg):
    return (x - np.asarray(cfg.mean)) / np.asarray(cfg.std)


# NumPy transcriptions of torchvision.transforms._functional_tensor on [..., H, W, 3] arrays
# (channels last), in float64, with PIL's luma weights.


def np_gray(x):
    return np.repeat((x @ LUMA)[..., None], 3, axis=-1)


def np_blend(x, other, f):
    return np.clip(f * x + (1.0 - f) * other, 0.0, 1.0)


def np_brightness(x, f):
    return np_blend(x, 0.0, f)


def np_contrast(x, f):
    return np_blend(x, np.mean(x @ LUMA), f)


def np_saturation(x, f):
    return np_blend(x, np_gray(x), f)


def np_hue(x, shift):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(-1), x.min(-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / np.where(eqc, 1.0, maxc)
    cr_divisor = np.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = np.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = (h + shift) % 1.0
    v = maxc
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(np.int64) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    red = np.choose(i, [v, q, p, p, t, v])
    green = np.choose(i, [t, v, v, q, p, p])
    blue = np.choose(i, [p, p, t, v, v, q])
    return np.stack([red, green, blue], axis=-1)


def np_solarize(x):
    return np.where(x >= 0.5, 1.0 - x, x)


def np_blur(x, sigma, kernel_size):
    half = (kernel_size - 1) * 0.5
    k = np.exp(-0.5 * (np.linspace(-half, half, kernel_size) / sigma) ** 2)
    k /= k.sum()
    r = kernel_size // 2
    padded = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[:2]
    rows = sum(k[i] * padded[i : i + h] for i in range(kernel_size))
    return sum(k[i] * rows[:, i : i + w] for i in range(kernel_size))


NP_OPS = (np_brightness, np_contrast, np_saturation, np_hue)


# ----------------------------------------------------------------------------- pipeline contract


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (4, 32, 32, 3)])
def test_augment_batch_contract(shape):
    cfg = augment.ViewConfig(blur_prob=0.5, solarize_prob=0.5)
    images = jnp.asarray(_images(shape))
    key = jax.random.key(0)

    out = augment_batch(key, images, cfg)
    again = augment_batch(key, images, cfg)
    other = augment_batch(jax.random.key(1), images, cfg)

    assert out.dtype == jnp.float32
    assert out.shape == (shape[0], cfg.crop_size, cfg.crop_size, 3)
    assert np.isfinite(out).all()
    unit = np.asarray(out) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    assert unit.min() >= -1e-5 and unit.max() <= 1.0 + 1e-5
    np.testing.assert_array_equal(out, again)
    for i in range(shape[0]):
        assert not np.allclose(out[i], other[i])
    if shape[-1] == 1:
        # Every op keeps a gray image gray.
        np.testing.assert_allclose(unit[..., 0], unit[..., 1], atol=1e-5)
        np.testing.assert_allclose(unit[..., 0], unit[..., 2], atol=1e-5)


def test_batch_rows_are_views_of_split_keys():
    cfg = augment.ViewConfig(crop_size=16, jitter_prob=0.0)
    images = jnp.asarray(_images((4, 32, 32, 3), seed=1))
    key = jax.random.key(2)
    rows = jax.jit(jax.vmap(functools.partial(augment.augment_image, cfg=cfg)))(
        jax.random.split(key, 4), images
    )
    np.testing.assert_array_equal(augment_batch(key, images, cfg), rows)


def test_normalize():
    images = _images((2, 5, 6, 1))
    out = augment.normalize(jnp.asarray(images), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    assert out.shape == (2, 5, 6, 3) and out.dtype == jnp.float32
    expected = (np.repeat(images, 3, -1) / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array(
        [0.2, 0.25, 0.5]
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(
        augment.normalize(jnp.array([[[[255, 0, 51]]]], jnp.uint8), mean=(0.0,), std=(0.5,)),
        [[[[2.0, 0.0, 0.4]]]],
        atol=1e-6,
    )


def test_bad_inputs_fail_plainly():
    with pytest.raises(TypeError, match="uint8"):
        augment.normalize(jnp.zeros((1, 4, 4, 3)), mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="channels"):
        augment.normalize(jnp.zeros((1, 4, 4, 2), jnp.uint8), mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="min_scale"):
        augment.ViewConfig(min_scale=0.5, max_scale=0.2)
    with pytest.raises(ValueError, match="hue"):
        augment.ViewConfig(hue=0.7)
    with pytest.raises(ValueError, match="flip_prob"):
        augment.ViewConfig(flip_prob=1.5)


# ----------------------------------------------------------------------------- probabilities


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (3, 32, 32, 3)])
def test_all_probabilities_zero_is_normalize(shape):
    cfg = augment.ViewConfig(crop_size=shape[1], brightness=0.8, hue=0.5, **OFF)
    images = jnp.asarray(_images(shape))
    out = augment_batch(jax.random.key(3), images, cfg)
    np.testing.assert_allclose(
        out, augment.normalize(images, mean=cfg.mean, std=cfg.std), atol=1e-5
    )


def test_gray_solarize_flip_always_applied_in_order():
    cfg = augment.ViewConfig(**{**OFF, "gray_prob": 1.0, "solarize_prob": 1.0, "flip_prob": 1.0})
    images = _images((3, 32, 32, 3))
    out = augment_batch(jax.random.key(4), jnp.asarray(images), cfg)
    expected = np_solarize(np_gray(images / 255.0))[:, :, ::-1]
    np.testing.assert_allclose(out, _np_normalize(expected, cfg), atol=1e-4)


def test_flip_and_gray_rates():
    cfg = augment.ViewConfig(**{**OFF, "crop_size": 8, "gray_prob": 0.5, "flip_prob": 0.5})
    image = _images((8, 8, 3))
    out = augment_batch(jax.random.key(5), jnp.asarray(np.broadcast_to(image, (64, 8, 8, 3))), cfg)
    unit = np.asarray(out) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    is_gray = np.all(np.abs(unit - unit[..., :1]) < 1e-5, axis=(1, 2, 3))
    base = np.where(is_gray[:, None, None, None], np_gray(image / 255.0), image / 255.0)
    is_flipped = np.all(np.abs(unit - base[:, :, ::-1]) < 1e-5, axis=(1, 2, 3))
    is_plain = np.all(np.abs(unit - base) < 1e-5, axis=(1, 2, 3))
    assert np.all(is_flipped ^ is_plain)
    assert 0.3 < is_gray.mean() < 0.7
    assert 0.3 < is_flipped.mean() < 0.7


def test_blur_always_applied_has_sigma_in_range():
    cfg = augment.ViewConfig(**{**OFF, "blur_prob": 1.0})
    images = _images((4, 32, 32, 3))
    out = augment_batch(jax.random.key(6), jnp.asarray(images), cfg)
    unit = np.asarray(out) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    sigmas = np.linspace(0.1, 2.0, 381)
    kernel_size = augment.blur_kernel_size(32)
    best = []
    for x, y in zip(images / 255.0, unit, strict=True):
        errors = [np.abs(np_blur(x, s, kernel_size) - y).max() for s in sigmas]
        assert min(errors) < 2e-3
        best.append(sigmas[int(np.argmin(errors))])
    assert len(set(best)) > 1


def test_brightness_only_jitter_always_applied():
    cfg = augment.ViewConfig(
        **{
            **OFF,
            "crop_size": 16,
            "jitter_prob": 1.0,
            "brightness": 0.5,
            "contrast": 0.0,
            "saturation": 0.0,
            "hue": 0.0,
        }
    )
    images = _images((8, 16, 16, 3))
    x = images / 255.0
    out = augment_batch(jax.random.key(7), jnp.asarray(images), cfg)
    unit = np.asarray(out) * np.asarray(cfg.std) + np.asarray(cfg.mean)
    factors = []
    for xi, yi in zip(x, unit, strict=True):
        inside = (yi < 0.999) & (xi > 0.05)
        ratio = yi[inside] / xi[inside]
        np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-4)
        factors.append(np.median(ratio))
        np.testing.assert_allclose(yi, np_brightness(xi, factors[-1]), atol=1e-4)
    assert 0.5 <= min(factors) and max(factors) <= 1.5 and np.ptp(factors) > 0.1


# ----------------------------------------------------------------------------- colour ops


@pytest.mark.parametrize("factor", [0.0, 0.35, 1.0, 1.8])
def test_linear_colour_ops_match_numpy(factor):
    x = _unit((2, 7, 5, 3), seed=1)[0]
    for op, ref in [
        (augment.adjust_brightness, np_brightness),
        (augment.adjust_contrast, np_contrast),
        (augment.adjust_saturation, np_saturation),
    ]:
        np.testing.assert_allclose(
            op(jnp.asarray(x), factor),
            ref(x.astype(np.float64), factor),
            atol=1e-6,
            err_msg=op.__name__,
        )


@pytest.mark.parametrize("shift", [-0.5, -0.27, 0.0, 0.1, 1 / 3, 0.5])
def test_hue_matches_numpy(shift):
    x = _unit((9, 9, 3), seed=2)
    x[0, :3] = [[0.3, 0.3, 0.3], [1.0, 0.0, 0.0], [0.2, 0.9, 0.9]]
    np.testing.assert_allclose(
        augment.adjust_hue(jnp.asarray(x), shift), np_hue(x.astype(np.float64), shift), atol=2e-6
    )


def test_grayscale_and_solarize_match_numpy():
    x = _unit((6, 4, 3), seed=3)
    np.testing.assert_allclose(augment.grayscale(jnp.asarray(x)), np_gray(x), atol=1e-6)
    np.testing.assert_allclose(
        augment.dm_pix.solarize(jnp.asarray(x), augment.SOLARIZE_THRESHOLD), np_solarize(x), atol=0
    )


def test_colour_ops_hand_values():
    pixel = jnp.array([[[0.2, 0.4, 1.0]]])
    np.testing.assert_allclose(
        augment.adjust_brightness(pixel, 0.5), [[[0.1, 0.2, 0.5]]], atol=1e-7
    )
    np.testing.assert_allclose(
        augment.adjust_brightness(pixel, 2.0), [[[0.4, 0.8, 1.0]]], atol=1e-7
    )
    red = jnp.array([[[1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(augment.adjust_contrast(red, 0.0), [[[0.299] * 3]], atol=1e-7)
    np.testing.assert_allclose(augment.adjust_contrast(red, 2.0), [[[1.0, 0.0, 0.0]]], atol=1e-7)
    two = jnp.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(
        augment.adjust_contrast(two, 0.5), [[[0.75] * 3, [0.25] * 3]], atol=1e-7
    )
    np.testing.assert_allclose(augment.adjust_saturation(red, 0.0), [[[0.299] * 3]], atol=1e-7)
    np.testing.assert_allclose(
        augment.adjust_saturation(red, 0.5), [[[0.6495, 0.1495, 0.1495]]], atol=1e-6
    )
    np.testing.assert_allclose(augment.adjust_hue(red, 1 / 3), [[[0.0, 1.0, 0.0]]], atol=1e-6)
    np.testing.assert_allclose(augment.adjust_hue(red, -1 / 3), [[[0.0, 0.0, 1.0]]], atol=1e-6)
    np.testing.assert_allclose(augment.adjust_hue(red, 0.5), [[[0.0, 1.0, 1.0]]], atol=1e-6)
    np.testing.assert_allclose(augment.grayscale(pixel), [[[0.4086] * 3]], atol=1e-6)
    np.testing.assert_allclose(
        augment.dm_pix.solarize(jnp.array([0.25, 0.5, 0.75, 1.0]), augment.SOLARIZE_THRESHOLD),
        [0.25, 0.5, 0.25, 0.0],
    )


def test_sample_color_jitter_ranges_and_orders():
    keys = jax.random.split(jax.random.key(8), 256)
    sample = jax.jit(
        jax.vmap(
            functools.partial(
                augment.sample_color_jitter, brightness=0.4, contrast=1.5, saturation=0.2, hue=0.1
            )
        )
    )
    order, factors = map(np.asarray, sample(keys))
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order, axis=1), np.tile(np.arange(4), (256, 1)))
    assert len({tuple(o) for o in order}) > 12
    low, high = np.array([0.6, 0.0, 0.8, -0.1]), np.array([1.4, 2.5, 1.2, 0.1])
    assert np.all((factors >= low) & (factors <= high))
    assert np.all(factors.min(0) < low + 0.05) and np.all(factors.max(0) > high - 0.05)
    order, factors = augment.sample_color_jitter(
        jax.random.key(9), brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0
    )
    np.testing.assert_array_equal(factors, [1.0, 1.0, 1.0, 0.0])


def test_color_jitter_applies_sampled_order():
    x = _unit((6, 6, 3), seed=4)
    strengths = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.4)
    jitter = jax.jit(functools.partial(augment.color_jitter, **strengths))
    for seed in range(4):
        key = jax.random.key(seed)
        order, factors = augment.sample_color_jitter(key, **strengths)
        expected = x.astype(np.float64)
        for op in np.asarray(order):
            expected = NP_OPS[op](expected, float(factors[op]))
        np.testing.assert_allclose(jitter(key, jnp.asarray(x)), expected, atol=1e-5)
    # The order matters: hue before contrast differs from contrast before hue.
    factors = jnp.array([1.0, 0.3, 1.0, 0.25])
    hue_first = augment.apply_color_jitter(jnp.asarray(x), jnp.array([3, 1, 0, 2]), factors)
    contrast_first = augment.apply_color_jitter(jnp.asarray(x), jnp.array([1, 3, 0, 2]), factors)
    assert np.abs(hue_first - contrast_first).max() > 1e-3


def test_disabled_jitter_ops_are_skipped():
    x = _unit((6, 6, 3), seed=5)
    out = augment.apply_color_jitter(
        jnp.asarray(x),
        jnp.array([2, 0, 3, 1]),
        jnp.array([1.5, 0.2, 0.0, 0.3]),
        enabled=(True, False, False, False),
    )
    np.testing.assert_allclose(out, np_brightness(x, 1.5), atol=1e-6)


# ----------------------------------------------------------------------------- blur


@pytest.mark.parametrize("sigma, kernel_size", [(0.1, 3), (0.7, 3), (1.9, 5), (1.2, 9)])
def test_gaussian_blur_matches_numpy(sigma, kernel_size):
    x = _unit((12, 10, 3), seed=6)
    np.testing.assert_allclose(
        augment.gaussian_blur(jnp.asarray(x), sigma, kernel_size),
        np_blur(x.astype(np.float64), sigma, kernel_size),
        atol=1e-6,
    )


def test_gaussian_blur_keeps_constant_image_and_kernel_sizes():
    flat = jnp.full((8, 8, 3), 0.7)
    np.testing.assert_allclose(augment.gaussian_blur(flat, 2.0, 5), flat, atol=1e-6)
    assert [augment.blur_kernel_size(s) for s in (28, 32, 64, 96, 224)] == [13, 13, 13, 13, 23]


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_blur_on_cifar_is_pils_gaussian_blur(sigma):
    """CaSSLe's and solo-learn's CIFAR views blur with PIL's ``GaussianBlur(radius=sigma)``: at 32
    px the blur matches it inside the border to PIL's uint8 rounding (3 taps would be 0.02 and
    0.06 apart on average)."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pil = PIL.Image.fromarray(image).filter(PIL.ImageFilter.GaussianBlur(radius=sigma))
    ours = augment.gaussian_blur(
        jnp.asarray(image / 255.0, jnp.float32), sigma, augment.blur_kernel_size(32)
    )
    inside = np.s_[6:-6, 6:-6]
    assert np.abs(np.asarray(ours)[inside] - np.asarray(pil)[inside] / 255.0).mean() < 0.005


# ----------------------------------------------------------------------------- random resized crop


@pytest.mark.parametrize(
    "box, size",
    [((0, 0, 20, 24), 20), ((3, 5, 9, 12), 16), ((2, 1, 17, 19), 8), ((11, 0, 9, 24), 10)],
)
def test_crop_and_resize_is_crop_then_bicubic_resize(box, size):
    x = _unit((20, 24, 3), seed=7)
    top, left, h, w = box
    expected = resize(jnp.asarray(x[top : top + h, left : left + w]), (size, size, 3))
    out = crop_and_resize(jnp.asarray(x), jnp.array(box), size)
    np.testing.assert_allclose(out, np.clip(expected, 0.0, 1.0), atol=1e-5)


def test_crop_and_resize_matches_pil():
    image_module = pytest.importorskip("PIL.Image")
    x = _unit((20, 24, 3), seed=8)
    for (top, left, h, w), size in [((3, 5, 9, 12), 16), ((2, 1, 17, 19), 8)]:
        out = crop_and_resize(jnp.asarray(x), jnp.array([top, left, h, w]), size)
        for c in range(3):
            pil = (
                image_module.fromarray(x[..., c])
                .crop((left, top, left + w, top + h))
                .resize((size, size), image_module.Resampling.BICUBIC)
            )
            np.testing.assert_allclose(out[..., c], np.clip(np.asarray(pil), 0.0, 1.0), atol=1e-5)


def test_full_scale_crop_is_whole_image():
    x = _unit((28, 28, 3), seed=9)
    keys = jax.random.split(jax.random.key(11), 3)

    @functools.partial(jax.jit, static_argnums=1)
    def crops(keys, size):
        return jax.vmap(
            lambda k: augment.random_resized_crop(k, jnp.asarray(x), size=size, scale=(1.0, 1.0))
        )(keys)

    np.testing.assert_allclose(crops(keys, 28), np.broadcast_to(x, (3, 28, 28, 3)), atol=1e-6)
    expected = np.clip(resize(jnp.asarray(x), (32, 32, 3)), 0.0, 1.0)
    np.testing.assert_allclose(
        crops(keys, 32), np.broadcast_to(expected, (3, 32, 32, 3)), atol=1e-5
    )


def test_crop_fallback_is_central_crop_within_ratio():
    # A 10 x 40 image fits no full-area candidate; torchvision falls back to a central crop of
    # height 10 and width round(10 * 4/3) = 13.
    params = jax.jit(
        augment.random_resized_crop_params, static_argnums=(1, 2), static_argnames="scale"
    )
    box = params(jax.random.key(0), 10, 40, scale=(1.0, 1.0))
    np.testing.assert_array_equal(box, [0, 13, 10, 13])


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 0.5)])
def test_crop_statistics(scale):
    keys = jax.random.split(jax.random.key(10), 2000)
    boxes = np.asarray(
        jax.jit(
            jax.vmap(
                functools.partial(
                    augment.random_resized_crop_params, height=32, width=32, scale=scale
                )
            )
        )(keys)
    )
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
    assert np.all((top + h <= 32) & (left + w <= 32))
    # Rounding each side to an integer moves the area by at most (h + w + 1) / 2 pixels.
    slack = (h + w + 1) / 2 / 1024
    fraction = h * w / 1024
    assert np.all(fraction >= scale[0] - slack) and np.all(fraction <= scale[1] + slack)
    assert fraction.min() < scale[0] + 0.03 and fraction.max() > scale[1] - 0.06
    log_ratio = np.log(w / h)
    assert np.all(np.abs(log_ratio) <= np.log(4 / 3) + 1.0 / np.minimum(h, w))
    assert top.max() > 16 and left.max() > 16


def test_views_do_not_depend_on_the_device_count():
    """The same key gives the same views on 1 and 4 devices: no op may take a branch that XLA
    fusion can flip (dm-pix's RGB -> HSV compares a channel with the recomputed maximum)."""
    from cl_ssl import parallel

    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)
    cfg = augment.ViewConfig()
    views = []
    for n in (1, 4):
        mesh = parallel.make_mesh(n)
        x = jax.device_put(images, parallel.batch_sharded(mesh))
        fn = jax.jit(augment.augment_batch, static_argnums=2)
        views.append(np.asarray(fn(jax.random.PRNGKey(0), x, cfg)))
    np.testing.assert_allclose(views[0], views[1], atol=1e-4)


def test_center_crop_is_the_central_square_resized_and_standardised():
    """Fraction 0.5 of a 12 x 16 image at crop size 6: the central 6 x 6 pixels themselves; at
    crop size 12, that square resized bicubically (``crop_and_resize``)."""
    images = np.random.default_rng(3).integers(0, 256, (2, 12, 16, 3), dtype=np.uint8)
    cfg = augment.ViewConfig(crop_size=6, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    out = augment.center_crop_batch(jnp.asarray(images), cfg, fraction=0.5)
    central = images[:, 3:9, 5:11].astype(np.float32) / 255.0
    np.testing.assert_allclose(out, (central - cfg.mean) / np.asarray(cfg.std), atol=1e-5)
    bigger = dataclasses.replace(cfg, crop_size=12)
    out = augment.center_crop_batch(jnp.asarray(images), bigger, fraction=0.5)
    expected = crop_and_resize(
        jnp.asarray(images[1] / 255.0, jnp.float32), jnp.array([3, 5, 6, 6]), 12
    )
    expected = (np.asarray(expected) - cfg.mean) / np.asarray(cfg.std)
    np.testing.assert_allclose(out[1], expected, atol=1e-5)
