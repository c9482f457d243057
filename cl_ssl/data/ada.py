"""Differentiable augmentation with an adaptive probability (ADA; Karras et al., "Training
generative adversarial networks with limited data", NeurIPS 2020), for Genifer's discriminator.

Genifer (Thandiackal et al., "Generative feature-driven image replay for continual learning",
Image and Vision Computing 150, 2024) augments real and generated images with StyleGAN2-ADA's
``AugmentPipe`` before the frozen classifier computes the feature maps its discriminator judges,
with the probability p adapted so that the share of real images the discriminator scores
positive, r_t, stays near 0.5 (kevthan/feature-driven-image-replay
``genifer/trainers/genifer_trainer.py`` l.213-258: the pipe with ``xflip, rotate90, xint, scale,
rotate, aniso, xfrac, brightness, contrast, lumaflip, hue, saturation`` at multiplier 1 and the
default strengths; l.1201-1205 and l.1246-1253: applied to the images the classifier reads, which
the reference standardises with the data set's mean and std (l.449-457) and whose generator
produces them in that space; l.1257-1290: ``update_ada``). The pipe is NVlabs/stylegan2-ada-
pytorch ``training/augment.py`` (``AugmentPipe.forward``, l.181-429), which the reference does not
vendor (its README links it).

This module implements that pipe in JAX, every random draw per example:

* the geometric operations compose one inverse 3x3 matrix per image (output pixel -> input
  pixel), in the pipe's order: x-flip, 90-degree rotation, integer translation (up to 1/8 of the
  image, rounded), isotropic scaling (2^N(0, 0.2)), pre-rotation (uniform, with probability
  1 - sqrt(1 - p) so that pre or post happens with probability p), anisotropic scaling
  (2^N(0, 0.2)), post-rotation, fractional translation (N(0, 1/8) of the image);
* they are executed as the pipe does: reflect padding by the margin the whole batch's transformed
  corners need (plus the filter's support, at most the image size minus 1), 2x upsampling with
  the sym6 wavelet low-pass filter, the affine resampling (PyTorch's ``affine_grid`` and bilinear
  ``grid_sample`` with zeros outside, ``align_corners=False``), and 2x downsampling with the same
  filter, which crops back to the image (``execute_geometric``);
* the colour operations compose one 4x4 matrix per image acting on the channel vector:
  brightness (+N(0, 0.2)), contrast (x 2^N(0, 0.5)), luma flip (Householder reflection about the
  plane orthogonal to (1, 1, 1)), hue (rotation about (1, 1, 1), uniform angle), saturation
  (x 2^N(0, 1) orthogonally to (1, 1, 1)).

Each operation applies with probability p to each image. As in the pipe, the geometric and colour
stages run even at p = 0, where the matrices are the identity and so (up to float rounding and
the filter's orthogonality) is the output. Every operation is linear in the image, so gradients
reach the generator through it.

``ada_augment(space='standardised')`` (the reference) augments the tensors as given: brightness
then adds 0.2 standard deviations of the channel, and contrast, luma flip, hue and saturation
pivot on the data set's mean colour. ``space='signed'`` (this library's former choice,
``genifer.gan.ada_space``) maps them to StyleGAN2-ADA's own [-1, 1] pixel range first, where the
pivot is mid-grey. ``ops`` selects a subset of the operations (``genifer.gan.ada_ops``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OPS = GEOMETRIC_OPS + COLOR_OPS
"""The operations of Genifer's pipe (``genifer_trainer.py`` l.215-228), in the pipe's order."""
SPACES = ("standardised", "signed")

# The pipe's default strengths (augment.py l.119-121).
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0

SYM6 = (
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
)
"""The low-pass decomposition filter of Daubechies' symlet 6 (12 taps), which the pipe's geometric
resampling uses (augment.py l.167); normalised to unit sum before use."""

ADJUST_INTERVAL = 4
"""Steps between two updates of p; r_t is the mean over this many steps (``ada_interval``)."""
ADJUST_KIMG = 4
"""p moves by ``ADJUST_INTERVAL / (ADJUST_KIMG * 1000)`` per update (Genifer's
``dis_augmentation_nk_iter``, counted in steps rather than images)."""

NUM_UNIFORMS = 3
NUM_NORMALS = 2
DRAW_ROWS = (
    "xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac", *COLOR_OPS
)  # fmt: skip
"""Rows of the raw draws: one per operation, the rotation drawn twice (pre and post)."""
_ROWS = {name: i for i, name in enumerate(DRAW_ROWS)}
NUM_ROWS = len(DRAW_ROWS)


def draw(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """The raw random numbers of a batch: uniforms float32 [B, NUM_ROWS, 3] and standard normals
    [B, NUM_ROWS, 2], a row per operation (``_ROWS``); ``parameters`` turns them into the
    operations' values. Column 0 of the uniforms gates the operation, the others are its values."""
    k_u, k_n = jax.random.split(key)
    u = jax.random.uniform(k_u, (batch, NUM_ROWS, NUM_UNIFORMS))
    n = jax.random.normal(k_n, (batch, NUM_ROWS, NUM_NORMALS))
    return u, n


def parameters(
    u: jax.Array, n: jax.Array, p: jax.Array, ops: Sequence[str] = OPS
) -> dict[str, jax.Array]:
    """Each operation's value per image, the identity's where it does not apply (augment.py
    l.196-263 and l.311-350): an operation of ``ops`` applies where its gate is below p (below
    1 - sqrt(1 - p) for each of the two rotations); the others never do.

    Returns float32 arrays: 'xflip', 'rotate90', 'lumaflip' [B] (the integers i), 'xint' and
    'xfrac' [B, 2] (fractions of the width and height), 'scale', 'aniso', 'saturation',
    'contrast' [B] (factors), 'rotate_pre', 'rotate_post', 'hue' [B] (radians), 'brightness' [B].
    """
    unknown = set(ops) - set(OPS)
    if unknown:
        raise ValueError(f"unknown ADA operations {sorted(unknown)}; valid: {OPS}")
    p = jnp.asarray(p, jnp.float32)
    p_rot = 1.0 - jnp.sqrt(jnp.clip(1.0 - p, 0.0, 1.0))

    def row(name):
        r = _ROWS[name]
        return u[:, r, 0], u[:, r, 1:], n[:, r]

    def gated(name, op, value, identity, prob=p):
        gate, _, _ = row(name)
        on = (gate < prob) if op in ops else jnp.zeros_like(gate, bool)
        if value.ndim == 2:
            on = on[:, None]
        return jnp.where(on, value, identity)

    out = {}
    _, uv, _ = row("xflip")
    out["xflip"] = gated("xflip", "xflip", jnp.floor(uv[:, 0] * 2), 0.0)
    _, uv, _ = row("rotate90")
    out["rotate90"] = gated("rotate90", "rotate90", jnp.floor(uv[:, 0] * 4), 0.0)
    _, uv, _ = row("xint")
    out["xint"] = gated("xint", "xint", (uv * 2 - 1) * XINT_MAX, 0.0)
    _, _, nv = row("scale")
    out["scale"] = gated("scale", "scale", jnp.exp2(nv[:, 0] * SCALE_STD), 1.0)
    for name in ("rotate_pre", "rotate_post"):
        _, uv, _ = row(name)
        out[name] = gated(name, "rotate", (uv[:, 0] * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
    _, _, nv = row("aniso")
    out["aniso"] = gated("aniso", "aniso", jnp.exp2(nv[:, 0] * ANISO_STD), 1.0)
    _, _, nv = row("xfrac")
    out["xfrac"] = gated("xfrac", "xfrac", nv * XFRAC_STD, 0.0)
    _, _, nv = row("brightness")
    out["brightness"] = gated("brightness", "brightness", nv[:, 0] * BRIGHTNESS_STD, 0.0)
    _, _, nv = row("contrast")
    out["contrast"] = gated("contrast", "contrast", jnp.exp2(nv[:, 0] * CONTRAST_STD), 1.0)
    _, uv, _ = row("lumaflip")
    out["lumaflip"] = gated("lumaflip", "lumaflip", jnp.floor(uv[:, 0] * 2), 0.0)
    _, uv, _ = row("hue")
    out["hue"] = gated("hue", "hue", (uv[:, 0] * 2 - 1) * math.pi * HUE_MAX, 0.0)
    _, _, nv = row("saturation")
    out["saturation"] = gated("saturation", "saturation", jnp.exp2(nv[:, 0] * SATURATION_STD), 1.0)
    return out


# ----------------------------------------------------------------------------- matrices


def _matrix(rows: list[list]) -> jax.Array:
    """[B, R, C] from rows of scalars and [B] arrays."""
    batch = next(x.shape[0] for row in rows for x in row if isinstance(x, jax.Array))
    return jnp.stack(
        [
            jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.float32), (batch,)) for x in row], -1)
            for row in rows
        ],
        -2,
    )


def _translate2d(tx, ty):
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale2d(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate2d(theta):
    c, s = jnp.cos(theta), jnp.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def geometric_matrix(params: dict[str, jax.Array], height: int, width: int) -> jax.Array:
    """G_inv float32 [B, 3, 3], output pixel -> input pixel in coordinates centred on the image
    (augment.py l.192-263): I @ flip @ rot90 @ int. translation @ scale @ pre-rotation @ aniso
    @ post-rotation @ frac. translation, each the inverse of its operation."""
    g = params
    m = _scale2d(1 - 2 * g["xflip"], 1.0)  # its own inverse
    m = m @ _rotate2d(math.pi / 2 * g["rotate90"])  # rotate2d_inv(-pi/2 i)
    t = jnp.round(g["xint"] * jnp.asarray([width, height], jnp.float32))
    m = m @ _translate2d(-t[:, 0], -t[:, 1])
    m = m @ _scale2d(1 / g["scale"], 1 / g["scale"])
    m = m @ _rotate2d(g["rotate_pre"])  # rotate2d_inv(-theta)
    m = m @ _scale2d(1 / g["aniso"], g["aniso"])  # scale2d_inv(s, 1 / s)
    m = m @ _rotate2d(g["rotate_post"])
    t = g["xfrac"] * jnp.asarray([width, height], jnp.float32)
    return m @ _translate2d(-t[:, 0], -t[:, 1])


def color_matrix(params: dict[str, jax.Array]) -> jax.Array:
    """C float32 [B, 4, 4] on homogeneous colours (augment.py l.307-350): saturation @ hue @
    luma flip @ contrast @ brightness."""
    g = params
    batch = g["brightness"].shape[0]
    eye = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (batch, 4, 4))
    v = jnp.asarray([1, 1, 1, 0], jnp.float32) / math.sqrt(3)  # the luma axis
    vv = jnp.outer(v, v)
    b = g["brightness"]
    c = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]])
    k = g["contrast"]
    c = _matrix([[k, 0, 0, 0], [0, k, 0, 0], [0, 0, k, 0], [0, 0, 0, 1]]) @ c
    c = (eye - 2 * vv * g["lumaflip"][:, None, None]) @ c
    theta = g["hue"]
    s, co = jnp.sin(theta), jnp.cos(theta)
    cc = 1 - co
    vx = vy = vz = 1 / math.sqrt(3)
    hue = _matrix(
        [
            [vx * vx * cc + co, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
            [vy * vx * cc + vz * s, vy * vy * cc + co, vy * vz * cc - vx * s, 0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + co, 0],
            [0, 0, 0, 1],
        ]
    )
    c = hue @ c
    sat = g["saturation"][:, None, None]
    return (vv + (eye - vv) * sat) @ c


# ----------------------------------------------------------------------------- resampling


def _filter() -> np.ndarray:
    f = np.asarray(SYM6, np.float64)
    return (f / f.sum()).astype(np.float32)


def _upfirdn_matrix(
    n: int, taps: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """``upfirdn2d``'s reference steps along one axis of length ``n`` as a matrix [out, n]:
    ``up - 1`` zeros inserted after each sample, zero padding ``pad`` (negative: a crop), 'valid'
    correlation with ``taps``, every ``down``-th sample kept. Applied with a matrix product, whose
    gradient is another one (faster on CPU than the shifted slices of a short filter, and run at
    full float32 precision on accelerators)."""
    z = np.zeros((n * up, n))
    z[::up] = np.eye(n)
    z = np.pad(z, ((max(pad[0], 0), max(pad[1], 0)), (0, 0)))
    z = z[max(-pad[0], 0) : z.shape[0] - max(-pad[1], 0)]
    k = len(taps)
    rows = np.stack([taps @ z[i : i + k] for i in range(z.shape[0] - k + 1)])
    return rows[::down].astype(np.float32)


def _along(matrix: np.ndarray, x: jax.Array, axis: int) -> jax.Array:
    """``matrix`` [out, n] applied along ``axis`` (1: rows, 2: columns) of x [B, H, W, C]."""
    spec = "ph,bhwc->bpwc" if axis == 1 else "pw,bhwc->bhpc"
    return jnp.einsum(spec, jnp.asarray(matrix), x, precision=jax.lax.Precision.HIGHEST)


def _upsample(x: jax.Array, axis: int) -> jax.Array:
    """upfirdn2d.upsample2d along one axis (up 2, gain 2 per axis, a convolution: the filter
    flipped): zeros inserted after each sample, padded by (fw + 1) // 2 before and (fw - 2) // 2
    after."""
    f = _filter()
    fw = len(f)
    pad = ((fw + 1) // 2, (fw - 2) // 2)
    return _along(_upfirdn_matrix(x.shape[axis], f[::-1] * 2.0, up=2, pad=pad), x, axis)


def _downsample(x: jax.Array, axis: int, crop: int) -> jax.Array:
    """upfirdn2d.downsample2d along one axis (down 2, ``padding=-crop``, ``flip_filter``: a
    correlation): the input padded by (fw - 1) // 2 - crop before and (fw - 2) // 2 - crop after
    (negative: cropped), filtered, every second sample kept."""
    f = _filter()
    fw = len(f)
    pad = ((fw - 1) // 2 - crop, (fw - 2) // 2 - crop)
    return _along(_upfirdn_matrix(x.shape[axis], f, down=2, pad=pad), x, axis)


def execute_geometric(images: jax.Array, g_inv: jax.Array) -> jax.Array:
    """The pipe's geometric execution (augment.py l.269-301) of ``g_inv`` [B, 3, 3] on
    ``images`` float32 [B, H, W, C].

    The pipe pads the batch by a margin computed from all of its transformed corners, which is
    data-dependent while shapes under ``jit`` must not be. So the images are reflect-padded by the
    largest margin the pipe allows (H - 1 and W - 1 on every side), and everything outside the
    batch's own margin is set to zero, before and after the upsampling: the pipe's padded image
    ends there, and both its filter (``upfirdn2d``) and ``grid_sample`` read zeros beyond it. The
    sampling coordinates are the pipe's, shifted by the extra padding, so the result is the
    pipe's. The bilinear sampling is ``_bilinear`` (``grid_sample`` with zeros outside); the
    pixel coordinates are ``affine_grid``'s and ``grid_sample``'s with ``align_corners=False``,
    written out here. The 1-D filters are matrix products (``_upfirdn_matrix``).
    """
    batch, height, width, _ = images.shape
    hz_pad = len(SYM6) // 4
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = jnp.asarray([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], jnp.float32)
    cp = g_inv @ corners.T  # [B, 3, 4]
    xs, ys = cp[:, 0].reshape(-1), cp[:, 1].reshape(-1)
    margin = jnp.stack([jnp.max(-xs), jnp.max(-ys), jnp.max(xs), jnp.max(ys)])
    margin = margin + jnp.asarray([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, jnp.float32)
    margin = jnp.clip(margin, 0.0, jnp.asarray([width - 1, height - 1] * 2, jnp.float32))
    mx0, my0, mx1, my1 = jnp.ceil(margin).astype(jnp.int32)

    big_x, big_y = width - 1, height - 1
    canvas = jnp.pad(images, ((0, 0), (big_y, big_y), (big_x, big_x), (0, 0)), mode="reflect")

    def window(x, y0, y1, x0, x1):
        rows = jnp.arange(x.shape[1])
        cols = jnp.arange(x.shape[2])
        inside = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
        return jnp.where(inside[None, :, :, None], x, 0.0)

    canvas = window(canvas, big_y - my0, big_y + height + my1, big_x - mx0, big_x + width + mx1)
    up = _upsample(_upsample(canvas, 1), 2)
    up = window(
        up,
        2 * (big_y - my0),
        2 * (big_y + height + my1),
        2 * (big_x - mx0),
        2 * (big_x + width + mx1),
    )

    # The pipe's matrix adjustments (l.287-296), with its padded image's size.
    f32 = jnp.float32
    g = (
        _translate2d(
            jnp.full((batch,), (mx0 - mx1) / 2, f32), jnp.full((batch,), (my0 - my1) / 2, f32)
        )
        @ g_inv
    )
    two = jnp.full((batch,), 2.0, f32)
    g = _scale2d(two, two) @ g @ _scale2d(1 / two, 1 / two)
    half = jnp.full((batch,), 0.5, f32)
    g = _translate2d(-half, -half) @ g @ _translate2d(half, half)
    up_w = (2 * (width + mx0 + mx1)).astype(f32)
    up_h = (2 * (height + my0 + my1)).astype(f32)
    out_h, out_w = (height + hz_pad * 2) * 2, (width + hz_pad * 2) * 2
    g = (
        _scale2d(jnp.full((batch,), 2 / up_w), jnp.full((batch,), 2 / up_h))
        @ g
        @ _scale2d(jnp.full((batch,), out_w / 2.0), jnp.full((batch,), out_h / 2.0))
    )

    # affine_grid (align_corners=False): normalised output pixel centres.
    xn = (2 * jnp.arange(out_w, dtype=f32) + 1) / out_w - 1
    yn = (2 * jnp.arange(out_h, dtype=f32) + 1) / out_h - 1
    gx = g[:, 0, 0, None, None] * xn[None, None, :] + g[:, 0, 1, None, None] * yn[None, :, None]
    gx = gx + g[:, 0, 2, None, None]
    gy = g[:, 1, 0, None, None] * xn[None, None, :] + g[:, 1, 1, None, None] * yn[None, :, None]
    gy = gy + g[:, 1, 2, None, None]
    # grid_sample (align_corners=False): pixel coordinates of the pipe's upsampled image, then
    # of the canvas's.
    ix = ((gx + 1) * up_w - 1) / 2 + 2 * (big_x - mx0)
    iy = ((gy + 1) * up_h - 1) / 2 + 2 * (big_y - my0)

    sampled = _bilinear(up, iy, ix)  # [B, out_h, out_w, C]
    return _downsample(_downsample(sampled, 1, hz_pad * 2), 2, hz_pad * 2)


def _bilinear(images: jax.Array, iy: jax.Array, ix: jax.Array) -> jax.Array:
    """``grid_sample``'s bilinear interpolation with ``padding_mode='zeros'``: images [B, H, W, C]
    at pixel coordinates iy, ix [B, Ho, Wo] -> [B, Ho, Wo, C]; each of the four neighbours
    outside the image reads 0. Written out rather than ``jax.scipy.ndimage.map_coordinates``
    (order 1, mode 'constant', the same numbers) so that one gather serves all channels: its
    gradient, a scatter-add, is about twice as fast on CPU as the per-channel one."""
    batch, height, width, channels = images.shape
    flat = images.reshape(batch, height * width, channels)
    y0, x0 = jnp.floor(iy), jnp.floor(ix)
    out = jnp.zeros((*iy.shape, channels), images.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            weight = (1 - jnp.abs(iy - yy)) * (1 - jnp.abs(ix - xx))
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = jnp.clip(yy, 0, height - 1) * width + jnp.clip(xx, 0, width - 1)
            index = index.astype(jnp.int32).reshape(batch, -1, 1)
            values = jnp.take_along_axis(flat, index, axis=1).reshape(out.shape)
            out = out + jnp.where(inside, weight, 0.0)[..., None] * values
    return out


def execute_color(images: jax.Array, c: jax.Array) -> jax.Array:
    """C @ colour for 3 channels; for 1, the mean of C's first three rows (augment.py
    l.357-366)."""
    channels = images.shape[-1]
    if channels == 3:
        return jnp.einsum("bij,bhwj->bhwi", c[:, :3, :3], images) + c[:, None, None, :3, 3]
    if channels == 1:
        row = jnp.mean(c[:, :3, :], axis=1)  # [B, 4]
        return images * jnp.sum(row[:, :3], -1)[:, None, None, None] + row[:, None, None, 3:]
    raise ValueError(f"ADA needs 3 or 1 channels, got {channels}")


def augment_pipe(
    key: jax.Array, images: jax.Array, p: jax.Array, ops: Sequence[str] = OPS
) -> jax.Array:
    """StyleGAN2-ADA's ``AugmentPipe`` with ``ops`` at multiplier 1, on ``images`` float32
    [B, H, W, C] as given. The geometric stage runs when ``ops`` has a geometric operation, the
    colour stage when it has a colour one (hue and saturation act on 3 channels only)."""
    images = jnp.asarray(images, jnp.float32)
    batch, height, width, channels = images.shape
    u, n = draw(key, batch)
    if channels == 1:
        ops = tuple(op for op in ops if op not in ("hue", "saturation"))
    params = parameters(u, n, p, ops)
    if any(op in GEOMETRIC_OPS for op in ops):
        images = execute_geometric(images, geometric_matrix(params, height, width))
    if any(op in COLOR_OPS for op in ops):
        images = execute_color(images, color_matrix(params))
    return images


def ada_augment(
    key: jax.Array,
    images: jax.Array,
    p: jax.Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    space: str = "standardised",
    ops: Sequence[str] = OPS,
) -> jax.Array:
    """Each image augmented by every operation of ``ops`` with probability ``p``.

    Args:
      key: PRNG key.
      images: float [B, H, W, C], standardised with ``mean`` and ``std`` (the classifier's input).
      p: float32 [], the augmentation probability.
      mean, std: the standardisation's per-channel statistics of [0, 1] images.
      space: 'standardised' (the reference): the pipe acts on ``images`` as given; 'signed': on
        their [-1, 1] pixel values, mapped back afterwards.
      ops: the pipe's operations to enable (``OPS``: Genifer's twelve).

    Returns:
      float32 [B, H, W, C] in the same space; with p = 0, ``images`` up to float rounding.
    """
    if space not in SPACES:
        raise ValueError(f"unknown ADA space {space!r}; valid: {SPACES}")
    images = jnp.asarray(images, jnp.float32)
    if space == "standardised":
        return augment_pipe(key, images, p, ops)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    signed = (images * std + mean) * 2 - 1
    out = augment_pipe(key, signed, p, ops)
    return ((out + 1) / 2 - mean) / std


def ada_adjust(
    p: jax.Array, signs: jax.Array, step: jax.Array, *, target: float, max_p: float
) -> jax.Array:
    """ADA's update of p after a discriminator step (``update_ada``).

    Args:
      p: float32 [], the current probability.
      signs: float32 [ADJUST_INTERVAL], the mean sign of D(real) of the latest steps (r_t is
        their mean).
      step: int32 [], the GAN iteration; p moves on multiples of ``ADJUST_INTERVAL`` only.
      target: the target of r_t (0.5 in Genifer, 0.6 in StyleGAN2-ADA).
      max_p: the cap of p (Genifer: 0.5).

    Returns:
      float32 [] in [0, max_p]: p + sign(r_t - target) * ADJUST_INTERVAL / (ADJUST_KIMG * 1000).
    """
    r_t = jnp.mean(signs)
    step_size = ADJUST_INTERVAL / (ADJUST_KIMG * 1000)
    moved = jnp.clip(p + jnp.sign(r_t - target) * step_size, 0.0, max_p)
    return jnp.where(step % ADJUST_INTERVAL == 0, moved, p)
