"""SSL view augmentations that run on the device, with torchvision semantics.

A view's random resized crop can also be taken on the host, from the full-resolution image
(``cl_ssl.data.host_crop``); `augment_image` with ``cropped=True`` then runs the rest of the view.

Every function is pure and traces under `jax.jit` and `jax.vmap`; random decisions are array
selects, so one compiled step serves every draw. `augment_image` works on one uint8 image;
`augment_batch` vmaps it over per-example keys.

The view pipeline follows the torchvision transforms of solo-learn / CaSSLe (``CifarTransform``
and ``ImagenetTransform`` in ``cassle/utils/pretrain_dataloader.py``):
RandomResizedCrop (bicubic) -> ColorJitter (p = jitter_prob, the four ops in a random order per
image) -> RandomGrayscale -> GaussianBlur -> Solarize -> RandomHorizontalFlip -> Normalize.
A view with ``crop_padding`` > 0 crops as supervised CIFAR training does instead,
``RandomCrop(crop_size, padding=crop_padding, padding_mode='edge')`` (Genifer's real-data view).
Images between the ops are float32 in [0, 1], and every colour op clips its result to [0, 1] as
torchvision does on float tensors.

dm-pix follows `tf.image`, not torchvision (see ``dm_pix/_src/augment.py``): its brightness
is additive, its contrast blends towards per-channel means, its saturation scales the HSV
saturation, its grayscale weights red with 0.2989 and its blur zero-pads. Those ops are written
here with the torchvision formulas. dm-pix is used where it matches torchvision: HSV -> RGB for
the hue rotation (its RGB -> HSV is replaced, see `_rgb_to_hsv`), the Gaussian kernel (applied
to a reflect-padded image), solarisation and the flip.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import dm_pix
import jax
import jax.numpy as jnp

# ITU-R 601-2 luma weights, as PIL's convert("L"), which torchvision's ColorJitter and
# RandomGrayscale use on the PIL images of the CIFAR pipeline. torchvision's tensor path
# weights red with 0.2989 instead; the two grayscale values differ by less than 1.2e-4.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# PIL ImageOps.solarize inverts values >= 128 of 255; on uint8 values scaled to [0, 1] a
# threshold of 0.5 selects the same pixels.
SOLARIZE_THRESHOLD = 0.5
BLUR_SIGMA_RANGE = (0.1, 2.0)
# torchvision RandomResizedCrop defaults: aspect ratios (3/4, 4/3), 10 candidate boxes.
_RATIO = (3 / 4, 4 / 3)
_CROP_ATTEMPTS = 10
CROP_UNIFORMS = 2 * _CROP_ATTEMPTS + 2
"""Uniforms that decide one random resized crop (`crop_box`)."""
# Keys' cubic convolution parameter of PIL's (and so torchvision's) bicubic filter.
_BICUBIC_A = -0.5


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """Parameters of one SSL view (torchvision / solo-learn semantics)."""

    crop_size: int = 32
    # RandomResizedCrop scale=(min_scale, max_scale), ratio (3/4, 4/3) log-uniform
    min_scale: float = 0.08
    max_scale: float = 1.0
    brightness: float = 0.4  # ColorJitter factors; 0 disables that op
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_prob: float = 0.8
    gray_prob: float = 0.2
    blur_prob: float = 0.0  # GaussianBlur, sigma ~ U[0.1, 2.0] (in pixels)
    solarize_prob: float = 0.0  # threshold 0.5 on [0, 1] images (PIL 128/255)
    flip_prob: float = 0.5
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.247, 0.243, 0.261)
    # > 0: RandomCrop(crop_size, padding, 'edge') replaces RandomResizedCrop (min/max_scale unused)
    crop_padding: int = 0

    def __post_init__(self):
        problems = []
        if self.crop_size < 1:
            problems.append(f"crop_size must be positive, got {self.crop_size}")
        if self.crop_padding < 0:
            problems.append(f"crop_padding must be >= 0, got {self.crop_padding}")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            problems.append(
                f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}"
            )
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            problems.append(f"hue must lie in [0, 0.5], got {self.hue}")
        for name in ("jitter_prob", "gray_prob", "blur_prob", "solarize_prob", "flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            problems.append(f"mean and std need 1 or 3 entries each, got {self.mean}, {self.std}")
        if any(s <= 0 for s in self.std):
            problems.append(f"std must be positive, got {self.std}")
        if problems:
            raise ValueError("invalid ViewConfig: " + "; ".join(problems))


def _to_unit_rgb(images: jax.Array) -> jax.Array:
    """uint8 [..., H, W, C], C in {1, 3} -> float32 [..., H, W, 3] in [0, 1]."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got shape {images.shape}")
    x = images.astype(jnp.float32) / 255.0
    return jnp.broadcast_to(x, (*x.shape[:-1], 3))


def _standardize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def normalize(images: jax.Array, *, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """The evaluation transform: no augmentation, only scaling and standardisation.

    Args:
      images: uint8 [..., H, W, C] with C in {1, 3}; one channel is broadcast to three.
      mean, std: per-channel statistics of [0, 1] images (1 or 3 entries each).

    Returns:
      float32 [..., H, W, 3] equal to (images / 255 - mean) / std.
    """
    return _standardize(_to_unit_rgb(images), mean, std)


# ----------------------------------------------------------------------------- random resized crop


def crop_box(
    u,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = _RATIO,
    *,
    xp=jnp,
):
    """The crop box of `random_resized_crop_params` from float32 [2 * attempts + 2] uniforms.

    ``xp`` is the array module: ``jax.numpy`` inside the step, ``numpy`` where the host crops
    full-resolution images (``cl_ssl.data.host_crop``). Both give the same box for the same
    uniforms, except where their float32 ``exp`` differ by an ulp and a side's rounding flips:
    about 3 draws in 100,000 move a side or corner by one pixel.
    """
    attempts = (u.shape[0] - 2) // 2
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = xp.exp(log_lo + (log_hi - log_lo) * u[attempts : 2 * attempts])
    # round (numpy's and jax.numpy's) and Python's round all round halves to even.
    cand_w = xp.round(xp.sqrt(area * aspect)).astype(xp.int32)
    cand_h = xp.round(xp.sqrt(area / aspect)).astype(xp.int32)
    fits = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    first = xp.argmax(fits)

    in_ratio = width / height
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height

    found = xp.any(fits)
    crop_h = xp.where(found, cand_h[first], fallback_h)
    crop_w = xp.where(found, cand_w[first], fallback_w)
    # Uniform integers in [0, side - crop], as torch.randint(0, side - crop + 1).
    top = xp.minimum((u[-2] * (height - crop_h + 1)).astype(xp.int32), height - crop_h)
    left = xp.minimum((u[-1] * (width - crop_w + 1)).astype(xp.int32), width - crop_w)
    top = xp.where(found, top, (height - fallback_h) // 2)
    left = xp.where(found, left, (width - fallback_w) // 2)
    return xp.stack([top, left, crop_h, crop_w]).astype(xp.int32)


def random_resized_crop_params(
    key: jax.Array,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = _RATIO,
    attempts: int = _CROP_ATTEMPTS,
) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params`, vectorised over its attempts.

    Draws `attempts` candidate (area fraction ~ U[scale], log aspect ratio ~ U[log ratio]) pairs,
    rounds them to integer sides and keeps the first candidate that fits in the image, with a
    uniform position. When none fits, it returns torchvision's fallback: the central crop of the
    whole image, narrowed to the nearest aspect ratio within `ratio`.

    Args:
      key: PRNG key.
      height, width: static image size in pixels.
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the crop aspect ratio width / height.
      attempts: number of candidates (10 in torchvision).

    Returns:
      int32 [4]: (top, left, crop_height, crop_width), a box inside the image.
    """
    u = jax.random.uniform(key, (2 * attempts + 2,))
    return crop_box(u, height, width, scale, ratio)


def _bicubic(x: jax.Array) -> jax.Array:
    """Keys' cubic kernel with a = -0.5, as PIL's bicubic filter."""
    x = jnp.abs(x)
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def _crop_resize_weights(
    start: jax.Array, length: jax.Array, in_size: int, out_size: int
) -> jax.Array:
    """float32 [out_size, in_size]: resamples pixels [start, start + length) to out_size pixels.

    PIL's bicubic resampling of a cropped image: output pixel o samples the crop at
    start + (o + 0.5) * length / out_size, the kernel widens by length / out_size when
    downsampling (antialiasing), and the taps are limited to the crop and renormalised.
    """
    start = start.astype(jnp.float32)
    length = length.astype(jnp.float32)
    step = length / out_size
    centre = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * step
    pixel = jnp.arange(in_size, dtype=jnp.float32) + 0.5
    weights = _bicubic((pixel[None, :] - centre[:, None]) / jnp.maximum(step, 1.0))
    inside = (pixel >= start) & (pixel < start + length)
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_and_resize(image: jax.Array, box: jax.Array, size: int) -> jax.Array:
    """Crops `box` out of `image` and resizes it bicubically to size x size, with static shapes.

    Matches torchvision's `F.resized_crop` on PIL images (crop, then PIL bicubic resize, which
    antialiases when downsampling) in float arithmetic, with the result clipped to [0, 1] as
    PIL's conversion back to uint8 clips. `jax.image.scale_and_translate` would let the kernel
    read pixels outside the box at its borders; the crop-limited weights here do not.

    Args:
      image: float32 [H, W, C] in [0, 1].
      box: int [4], (top, left, crop_height, crop_width), inside the image.
      size: static output side in pixels.

    Returns:
      float32 [size, size, C] in [0, 1].
    """
    height, width = image.shape[:2]
    rows = _crop_resize_weights(box[0], box[2], height, size)
    cols = _crop_resize_weights(box[1], box[3], width, size)
    out = jnp.einsum("oh,hwc,pw->opc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
    return jnp.clip(out, 0.0, 1.0)


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = _RATIO,
) -> jax.Array:
    """torchvision `RandomResizedCrop(size, scale, ratio, BICUBIC)` on one image.

    Args:
      key: PRNG key.
      image: float32 [H, W, C] in [0, 1].
      size: static output side in pixels.
      scale, ratio: as in `random_resized_crop_params`.

    Returns:
      float32 [size, size, C] in [0, 1].
    """
    height, width = image.shape[:2]
    box = random_resized_crop_params(key, height, width, scale=scale, ratio=ratio)
    return crop_and_resize(image, box, size)


def padded_random_crop(u: jax.Array, image: jax.Array, *, size: int, padding: int) -> jax.Array:
    """torchvision ``RandomCrop(size, padding, padding_mode='edge')`` on one image.

    Args:
      u: float32 [2] uniforms in [0, 1): the crop's top and left offsets.
      image: float32 [H, W, C] with H, W + 2 * padding >= size.
      size: static output side in pixels.
      padding: pixels added on every side by repeating the edge.

    Returns:
      float32 [size, size, C]: the window at integer offsets drawn uniformly from
      [0, H + 2 * padding - size] x [0, W + 2 * padding - size] of the padded image.
    """
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="edge")
    room = jnp.asarray(padded.shape[:2]) - size + 1
    top, left = jnp.minimum(jnp.floor(u * room).astype(jnp.int32), room - 1)
    return jax.lax.dynamic_slice(padded, (top, left, 0), (size, size, padded.shape[2]))


# ----------------------------------------------------------------------------- colour


def _luma(image: jax.Array) -> jax.Array:
    """float32 [..., H, W, 3] -> [..., H, W] luma.

    A weighted sum rather than a matmul, which TPUs and GPUs run at reduced precision by default.
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b


def grayscale(image: jax.Array) -> jax.Array:
    """Luma of an RGB image, repeated on three channels (torchvision `rgb_to_grayscale(img, 3)`).

    Args:
      image: float32 [..., H, W, 3] in [0, 1].

    Returns:
      float32 [..., H, W, 3] in [0, 1], all three channels equal to 0.299 R + 0.587 G + 0.114 B.
    """
    return jnp.broadcast_to(_luma(image)[..., None], image.shape)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision `_blend`: factor * image + (1 - factor) * other, clipped to [0, 1]."""
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision `adjust_brightness`: multiplies by `factor` (>= 0), clipped to [0, 1].

    dm-pix's `adjust_brightness` adds a delta instead.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      factor: scalar >= 0; 1 leaves the image unchanged.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision `adjust_contrast`: blends towards the mean luma of the whole image.

    dm-pix's `adjust_contrast` blends each channel towards its own mean instead.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      factor: scalar >= 0; 0 gives a uniform gray image, 1 leaves the image unchanged.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    return _blend(image, jnp.mean(_luma(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision `adjust_saturation`: blends with the grayscale image.

    dm-pix's `adjust_saturation` scales the HSV saturation instead.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      factor: scalar >= 0; 0 gives the grayscale image, 1 leaves the image unchanged.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    return _blend(image, grayscale(image), factor)


def adjust_hue(image: jax.Array, shift: jax.Array) -> jax.Array:
    """torchvision `adjust_hue`: rotates the HSV hue by `shift` turns, modulo 1.

    The HSV rotation of torchvision and dm-pix, with a fusion-safe RGB -> HSV conversion
    (`_rgb_to_hsv`); the clip only removes rounding excursions.

    Args:
      image: float32 [H, W, 3] in [0, 1].
      shift: scalar in [-0.5, 0.5].

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    hue, saturation, value = _rgb_to_hsv(image)
    rgb = dm_pix.hsv_to_rgb(jnp.stack([(hue + shift) % 1.0, saturation, value], axis=-1))
    return jnp.clip(rgb, 0.0, 1.0)


def _rgb_to_hsv(image: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Hue (turns, [0, 1)), saturation and value planes [H, W] of an RGB image [H, W, 3] in [0, 1].

    dm-pix's `rgb_to_hsv` chooses the hue sector by exact equality between a channel and the
    maximum computed from it; under XLA fusion the two need not compare equal, which sends some
    pixels to the wrong sector (a hue off by up to half a turn) depending on how the step was
    compiled. Here the sector is the argmax channel (red first on ties, as in torchvision); the
    sector formulas agree wherever channels tie, so near-ties are harmless.
    """
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    value = jnp.max(image, axis=-1)
    range_ = value - jnp.min(image, axis=-1)
    saturation = jnp.where(value > 0, range_ / jnp.where(value > 0, value, 1.0), 0.0)
    norm = 1.0 / (6.0 * jnp.where(range_ > 0, range_, 1.0))
    sector = jnp.argmax(image, axis=-1)
    hue = jnp.select(
        [sector == 0, sector == 1],
        [norm * (green - blue), norm * (blue - red) + 2.0 / 6.0],
        norm * (red - green) + 4.0 / 6.0,
    )
    return jnp.where(range_ > 0, hue, 0.0) % 1.0, saturation, value


def _jitter_params(
    u: jax.Array, brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[jax.Array, jax.Array]:
    """The (order, factors) of `sample_color_jitter` from float32 [8] uniforms."""
    # The ranks of four uniforms are a uniform random permutation.
    order = jnp.argsort(u[:4]).astype(jnp.int32)
    low = jnp.asarray(
        [max(0.0, 1.0 - brightness), max(0.0, 1.0 - contrast), max(0.0, 1.0 - saturation), -hue],
        jnp.float32,
    )
    high = jnp.asarray([1.0 + brightness, 1.0 + contrast, 1.0 + saturation, hue], jnp.float32)
    return order, low + (high - low) * u[4:]


def sample_color_jitter(
    key: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> tuple[jax.Array, jax.Array]:
    """torchvision `ColorJitter.get_params`: a random op order and one factor per op.

    Args:
      key: PRNG key.
      brightness, contrast, saturation: strengths x >= 0; factors ~ U[max(0, 1 - x), 1 + x].
      hue: strength h in [0, 0.5]; shift ~ U[-h, h].

    Returns:
      order: int32 [4], a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue).
      factors: float32 [4], (brightness, contrast, saturation factors, hue shift); a strength of
        0 gives the neutral value (1, 1, 1, 0).
    """
    return _jitter_params(jax.random.uniform(key, (8,)), brightness, contrast, saturation, hue)


def _apply_with(
    op: Callable[[jax.Array, jax.Array], jax.Array], factor: jax.Array, image: jax.Array
) -> jax.Array:
    return op(image, factor)


def _identity(image: jax.Array) -> jax.Array:
    return image


def apply_color_jitter(
    image: jax.Array,
    order: jax.Array,
    factors: jax.Array,
    *,
    enabled: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> jax.Array:
    """Applies brightness, contrast, saturation and hue in a given order (torchvision ColorJitter).

    Args:
      image: float32 [H, W, 3] in [0, 1].
      order: int [4], a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue).
      factors: float32 [4], (brightness, contrast, saturation factors, hue shift).
      enabled: static flags; a disabled op is skipped, as torchvision skips a None factor.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    if not any(enabled):
        return image
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    branches = [
        functools.partial(_apply_with, op, factors[i]) if on else _identity
        for i, (op, on) in enumerate(zip(ops, enabled, strict=True))
    ]
    for position in range(4):
        image = jax.lax.switch(order[position], branches, image)
    return image


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> jax.Array:
    """torchvision `ColorJitter(brightness, contrast, saturation, hue)` on one image.

    Args:
      key: PRNG key.
      image: float32 [H, W, 3] in [0, 1].
      brightness, contrast, saturation, hue: strengths as in `sample_color_jitter`; 0 disables
        that op.

    Returns:
      float32 [H, W, 3] in [0, 1].
    """
    order, factors = sample_color_jitter(
        key, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
    )
    return apply_color_jitter(
        image, order, factors, enabled=_enabled(brightness, contrast, saturation, hue)
    )


def _enabled(
    brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[bool, bool, bool, bool]:
    return (brightness > 0, contrast > 0, saturation > 0, hue > 0)


# ----------------------------------------------------------------------------- blur


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian kernel side: about 10% of the image side, 23 taps at 224 px (DALI's window of
    CaSSLe's ImageNet-100 pipeline, ``cassle/utils/dali_dataloader.py`` l.116, l.128-133), and at
    least 13 (+-6 px) on small images, where CaSSLe's and solo-learn's CIFAR views blur with PIL's
    untruncated ``GaussianBlur(radius=sigma)`` (``cassle/utils/pretrain_dataloader.py`` l.92-93):
    13 taps hold all but 0.3% of its mass at the largest sigma, 2.
    """
    return max(2 * (side // 20) + 1, 13)


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """torchvision `gaussian_blur`: separable Gaussian kernel on a reflect-padded image.

    dm-pix's `gaussian_blur` builds the same normalised kernel but zero-pads with "SAME", which
    darkens the borders; here the image is reflect-padded first and dm-pix convolves "VALID".

    Args:
      image: float32 [H, W, C] in [0, 1], with H, W > kernel_size // 2.
      sigma: scalar standard deviation in pixels, > 0.
      kernel_size: static odd kernel side in pixels.

    Returns:
      float32 [H, W, C] in [0, 1].
    """
    radius = kernel_size // 2
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    # Full float32 convolution also on TPUs and GPUs, whose default precision is lower.
    with jax.default_matmul_precision("highest"):
        return dm_pix.gaussian_blur(padded, sigma, kernel_size, padding="VALID")


# ----------------------------------------------------------------------------- pipeline


def _random_apply(
    u: jax.Array, prob: float, fn: Callable[[jax.Array], jax.Array], image: jax.Array
) -> jax.Array:
    """fn(image) when the uniform `u` < prob, else image; prob 0 and 1 are decided statically."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return jnp.where(u < prob, fn(image), image)


def augment_image(
    key: jax.Array, image: jax.Array, cfg: ViewConfig, *, cropped: bool = False
) -> jax.Array:
    """One SSL view of one image (the torchvision pipeline of the module docstring).

    All random numbers of a view come from one `jax.random.uniform` call, which keeps the
    compiled step small.

    Args:
      key: PRNG key; the same key gives the same view.
      image: uint8 [H, W, C] with C in {1, 3}; one channel is broadcast to three first.
      cfg: the view parameters.
      cropped: ``image`` is the view's crop already, [cfg.crop_size, cfg.crop_size, C] (a random
        resized crop taken on the host from the full-resolution image, ``cl_ssl.data.host_crop``):
        the pipeline starts after the crop, with the same draws for the other operations.

    Returns:
      float32 [cfg.crop_size, cfg.crop_size, 3], standardised with cfg.mean and cfg.std (before
      standardisation the values lie in [0, 1]).
    """
    n_crop = CROP_UNIFORMS
    u = jax.random.uniform(key, (n_crop + 8 + 6,))
    crop_u, jitter_u = u[:n_crop], u[n_crop : n_crop + 8]
    p_jitter, p_gray, p_blur, p_solarize, p_flip, sigma_u = u[n_crop + 8 :]

    x = _to_unit_rgb(image)
    if cropped:
        if image.shape[:2] != (cfg.crop_size, cfg.crop_size):
            raise ValueError(
                f"a cropped view must be {cfg.crop_size} x {cfg.crop_size}, got {image.shape}"
            )
    elif cfg.crop_padding > 0:
        x = padded_random_crop(crop_u[:2], x, size=cfg.crop_size, padding=cfg.crop_padding)
    else:
        box = crop_box(crop_u, x.shape[0], x.shape[1], (cfg.min_scale, cfg.max_scale))
        x = crop_and_resize(x, box, cfg.crop_size)

    strengths = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    order, factors = _jitter_params(jitter_u, *strengths)
    x = _random_apply(
        p_jitter,
        cfg.jitter_prob,
        functools.partial(
            apply_color_jitter, order=order, factors=factors, enabled=_enabled(*strengths)
        ),
        x,
    )
    x = _random_apply(p_gray, cfg.gray_prob, grayscale, x)
    sigma = BLUR_SIGMA_RANGE[0] + (BLUR_SIGMA_RANGE[1] - BLUR_SIGMA_RANGE[0]) * sigma_u
    x = _random_apply(
        p_blur,
        cfg.blur_prob,
        functools.partial(gaussian_blur, sigma=sigma, kernel_size=blur_kernel_size(cfg.crop_size)),
        x,
    )
    x = _random_apply(
        p_solarize,
        cfg.solarize_prob,
        functools.partial(dm_pix.solarize, threshold=SOLARIZE_THRESHOLD),
        x,
    )
    x = _random_apply(p_flip, cfg.flip_prob, dm_pix.flip_left_right, x)
    return _standardize(x, cfg.mean, cfg.std)


CENTER_CROP_FRACTION = 224 / 256
"""The ImageNet evaluation transform's crop, Resize(256) + CenterCrop(224), as a share of the
shorter side."""


def center_crop_batch(images: jax.Array, cfg: ViewConfig, *, fraction: float) -> jax.Array:
    """The deterministic view of each image: its central square of ``fraction`` of the shorter
    side, resized bicubically to ``cfg.crop_size`` and standardised as ``cfg`` standardises.

    torchvision's ``Resize(round(s / fraction))`` then ``CenterCrop(s)`` (0.875: the ImageNet
    evaluation transform, Resize(256) + CenterCrop(224)) as one crop-and-resize.

    Args:
      images: uint8 [B, H, W, C] with C in {1, 3}.
      cfg: the view whose crop size and statistics apply (no random operation is used).
      fraction: the crop's side over the image's shorter side, in (0, 1].

    Returns:
      float32 [B, cfg.crop_size, cfg.crop_size, 3].
    """
    height, width = images.shape[1:3]
    side = max(1, int(round(fraction * min(height, width))))
    box = jnp.asarray([(height - side) // 2, (width - side) // 2, side, side], jnp.int32)
    crop = jax.vmap(lambda image: crop_and_resize(_to_unit_rgb(image), box, cfg.crop_size))
    return _standardize(crop(images), cfg.mean, cfg.std)


def augment_batch(
    key: jax.Array, images: jax.Array, cfg: ViewConfig, crops: jax.Array | None = None
) -> jax.Array:
    """One SSL view of each image of a batch, with independent per-example keys.

    Args:
      key: PRNG key, split into one key per example.
      images: uint8 [B, H, W, C] with C in {1, 3}.
      cfg: the view parameters.
      crops: uint8 [B0, cfg.crop_size, cfg.crop_size, C], B0 <= B: the view's crops of the first
        B0 images, taken on the host (``augment_image(..., cropped=True)``); those rows of
        ``images`` are not read. None crops every image here.

    Returns:
      float32 [B, cfg.crop_size, cfg.crop_size, 3], standardised with cfg.mean and cfg.std.
    """
    keys = jax.random.split(key, images.shape[0])
    view = jax.vmap(functools.partial(augment_image, cfg=cfg))
    if crops is None:
        return view(keys, images)
    cropped = jax.vmap(functools.partial(augment_image, cfg=cfg, cropped=True))
    head = cropped(keys[: crops.shape[0]], crops)
    if crops.shape[0] == images.shape[0]:
        return head
    return jnp.concatenate([head, view(keys[crops.shape[0] :], images[crops.shape[0] :])])
