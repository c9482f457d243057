"""ADA's pipe (cl_ssl.data.ada) against a NumPy transcription of StyleGAN2-ADA's
``training/augment.py`` (AugmentPipe.forward) and ``torch_utils/ops/upfirdn2d.py`` (the reference
``_upfirdn2d_ref``), with PyTorch's ``affine_grid`` / bilinear ``grid_sample`` (zeros padding,
align_corners=False) written out: each operation's matrix with its probability and default
strength, the filtered geometric resampling with the batch's own reflect margin, the colour
transform, and the whole pipe at p = 0."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_ssl.data import ada

SYM6 = [
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
]  # fmt: skip
ROW = {
    "xflip": 0, "rotate90": 1, "xint": 2, "scale": 3, "rotate_pre": 4, "aniso": 5,
    "rotate_post": 6, "xfrac": 7, "brightness": 8, "contrast": 9, "lumaflip": 10, "hue": 11,
    "saturation": 12,
}  # fmt: skip


# --------------------------------------------------------------------------- the transcription


def translate2d(tx, ty):
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], np.float64)


def scale2d(sx, sy):
    return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], np.float64)


def rotate2d(t):
    return np.array([[np.cos(t), np.sin(-t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def rotate3d(v, t):
    vx, vy, vz = v[:3]
    s, c = np.sin(t), np.cos(t)
    cc = 1 - c
    return np.array(
        [
            [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
            [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
            [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
            [0, 0, 0, 1],
        ]
    )


def np_matrices(u, n, p, ops, width, height):
    """augment.py l.192-263 and l.307-350 for each image: G_inv [B, 3, 3] and C [B, 4, 4], with
    multiplier 1 for the operations in ``ops`` and 0 (skipped) for the others."""
    gs, cs = [], []
    for b in range(u.shape[0]):

        def gate(name, prob=p):
            return u[b, ROW[name], 0] < prob

        g = np.eye(3)
        if "xflip" in ops:
            i = np.floor(u[b, ROW["xflip"], 1] * 2) if gate("xflip") else 0.0
            g = g @ scale2d(1 / (1 - 2 * i), 1)
        if "rotate90" in ops:
            i = np.floor(u[b, ROW["rotate90"], 1] * 4) if gate("rotate90") else 0.0
            g = g @ rotate2d(-(-np.pi / 2 * i))
        if "xint" in ops:
            t = (u[b, ROW["xint"], 1:3] * 2 - 1) * 0.125 if gate("xint") else np.zeros(2)
            g = g @ translate2d(-np.round(t[0] * width), -np.round(t[1] * height))
        if "scale" in ops:
            s = 2 ** (n[b, ROW["scale"], 0] * 0.2) if gate("scale") else 1.0
            g = g @ scale2d(1 / s, 1 / s)
        p_rot = 1 - np.sqrt(np.clip(1 - p, 0, 1))
        if "rotate" in ops:
            on = gate("rotate_pre", p_rot)
            theta = (u[b, ROW["rotate_pre"], 1] * 2 - 1) * np.pi if on else 0.0
            g = g @ rotate2d(theta)  # the official rotate2d_inv(-theta)
        if "aniso" in ops:
            s = 2 ** (n[b, ROW["aniso"], 0] * 0.2) if gate("aniso") else 1.0
            g = g @ scale2d(1 / s, 1 / (1 / s))
        if "rotate" in ops:
            on = gate("rotate_post", p_rot)
            theta = (u[b, ROW["rotate_post"], 1] * 2 - 1) * np.pi if on else 0.0
            g = g @ rotate2d(theta)  # the official rotate2d_inv(-theta)
        if "xfrac" in ops:
            t = n[b, ROW["xfrac"], 0:2] * 0.125 if gate("xfrac") else np.zeros(2)
            g = g @ translate2d(-t[0] * width, -t[1] * height)
        gs.append(g)

        c = np.eye(4)
        if "brightness" in ops:
            v = n[b, ROW["brightness"], 0] * 0.2 if gate("brightness") else 0.0
            c = np.array([[1, 0, 0, v], [0, 1, 0, v], [0, 0, 1, v], [0, 0, 0, 1]]) @ c
        if "contrast" in ops:
            k = 2 ** (n[b, ROW["contrast"], 0] * 0.5) if gate("contrast") else 1.0
            c = np.diag([k, k, k, 1.0]) @ c
        v = np.array([1, 1, 1, 0]) / np.sqrt(3)
        if "lumaflip" in ops:
            i = np.floor(u[b, ROW["lumaflip"], 1] * 2) if gate("lumaflip") else 0.0
            c = (np.eye(4) - 2 * np.outer(v, v) * i) @ c
        if "hue" in ops:
            theta = (u[b, ROW["hue"], 1] * 2 - 1) * np.pi if gate("hue") else 0.0
            c = rotate3d(v, theta) @ c
        if "saturation" in ops:
            s = 2 ** (n[b, ROW["saturation"], 0] * 1.0) if gate("saturation") else 1.0
            c = (np.outer(v, v) + (np.eye(4) - np.outer(v, v)) * s) @ c
        cs.append(c)
    return np.stack(gs), np.stack(cs)


def np_upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), flip_filter=False, gain=1):
    """``_upfirdn2d_ref`` on x [B, C, H, W] with a separable 1-D filter f."""
    b, ch, h, w = x.shape
    padx0, padx1, pady0, pady1 = padding
    z = np.zeros((b, ch, h * up, w * up))
    z[:, :, ::up, ::up] = x
    z = np.pad(z, ((0, 0), (0, 0), (max(pady0, 0), max(pady1, 0)), (max(padx0, 0), max(padx1, 0))))
    z = z[:, :, max(-pady0, 0) : z.shape[2] - max(-pady1, 0),
          max(-padx0, 0) : z.shape[3] - max(-padx1, 0)]  # fmt: skip
    f = np.asarray(f) * gain**0.5
    if not flip_filter:
        f = f[::-1]
    k = len(f)
    rows = np.stack([sum(f[j] * z[:, :, i + j, :] for j in range(k))
                     for i in range(z.shape[2] - k + 1)], 2)  # fmt: skip
    cols = np.stack([sum(f[j] * rows[:, :, :, i + j] for j in range(k))
                     for i in range(rows.shape[3] - k + 1)], 3)  # fmt: skip
    return cols[:, :, ::down, ::down]


def np_grid_sample(img, grid):
    """torch grid_sample, bilinear, zeros padding, align_corners=False; img [C, H, W],
    grid [Ho, Wo, 2] (x, y normalised)."""
    ch, h, w = img.shape
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
    out = np.zeros((ch, *ix.shape))
    for dx in (0, 1):
        for dy in (0, 1):
            xx, yy = x0 + dx, y0 + dy
            wgt = (1 - np.abs(ix - xx)) * (1 - np.abs(iy - yy))
            ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
            vals = img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
            out += np.where(ok, wgt, 0.0) * vals
    return out


def np_geometric(images, g_inv):
    """augment.py l.269-301 on images [B, H, W, C] (NHWC in and out)."""
    x = np.transpose(images, (0, 3, 1, 2)).astype(np.float64)
    b, ch, h, w = x.shape
    f = np.asarray(SYM6) / np.sum(SYM6)
    hz_pad = len(f) // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cp = np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]])
    cp = g_inv @ cp.T
    margin = np.transpose(cp[:, :2, :], (1, 0, 2)).reshape(2, -1)
    margin = np.concatenate([-margin, margin]).max(axis=1)
    margin = margin + np.array([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2)
    margin = np.minimum(np.maximum(margin, 0), [w - 1, h - 1] * 2)
    mx0, my0, mx1, my1 = np.ceil(margin).astype(int)
    x = np.pad(x, ((0, 0), (0, 0), (my0, my1), (mx0, mx1)), mode="reflect")
    g = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv
    fw = len(f)
    x = np_upfirdn2d(x, f, up=2, padding=((fw + 1) // 2, (fw - 2) // 2) * 2, gain=4)
    g = scale2d(2, 2) @ g @ scale2d(1 / 2, 1 / 2)
    g = translate2d(-0.5, -0.5) @ g @ translate2d(0.5, 0.5)
    ho, wo = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
    g = scale2d(2 / x.shape[3], 2 / x.shape[2]) @ g @ scale2d(wo / 2, ho / 2)
    xn = (2 * np.arange(wo) + 1) / wo - 1
    yn = (2 * np.arange(ho) + 1) / ho - 1
    base = np.stack(np.meshgrid(xn, yn), -1)  # [ho, wo, 2] (x, y)
    homog = np.concatenate([base, np.ones((ho, wo, 1))], -1)
    sampled = np.stack([np_grid_sample(x[i], homog @ g[i, :2, :].T) for i in range(b)])
    pad = -hz_pad * 2
    p0, p1 = pad + (fw - 2 + 1) // 2, pad + (fw - 2) // 2
    out = np_upfirdn2d(sampled, f, down=2, padding=(p0, p1, p0, p1), flip_filter=True)
    return np.transpose(out, (0, 2, 3, 1))


# --------------------------------------------------------------------------- the tests


def _draws(batch, seed=0):
    u, n = ada.draw(jax.random.PRNGKey(seed), batch)
    return np.asarray(u, np.float64), np.asarray(n, np.float64), u, n


@pytest.mark.parametrize("op", ada.OPS)
def test_each_operation_builds_the_pipes_matrix_with_its_probability_and_strength(op):
    """One operation at a time (the others at multiplier 0), p = 0.6 over 64 images: the
    matrices equal the transcription's, and the operation applies to some images and not others."""
    u64, n64, u, n = _draws(64)
    params = ada.parameters(u, n, jnp.float32(0.6), ops=(op,))
    want_g, want_c = np_matrices(u64, n64, 0.6, (op,), width=12, height=10)
    got_g = np.asarray(ada.geometric_matrix(params, 10, 12))
    got_c = np.asarray(ada.color_matrix(params))
    np.testing.assert_allclose(got_g, want_g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_c, want_c, rtol=1e-5, atol=1e-5)
    moved = [not np.allclose(g, np.eye(3)) or not np.allclose(c, np.eye(4))
             for g, c in zip(want_g, want_c, strict=True)]  # fmt: skip
    assert 0 < sum(moved) < 64


def test_all_operations_compose_in_the_pipes_order():
    u64, n64, u, n = _draws(16, seed=1)
    params = ada.parameters(u, n, jnp.float32(0.9))
    want_g, want_c = np_matrices(u64, n64, 0.9, ada.OPS, width=8, height=8)
    np.testing.assert_allclose(ada.geometric_matrix(params, 8, 8), want_g, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ada.color_matrix(params), want_c, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def geometric():
    return jax.jit(ada.execute_geometric)


@pytest.mark.parametrize(
    ("seed", "ops", "size"),
    [
        (2, ada.GEOMETRIC_OPS, 8),  # rotations: the margin is the largest, size - 1
        (9, ("scale", "aniso", "xfrac"), 16),  # a margin of 8 of 15: the zeros beyond it matter
    ],
)
def test_geometric_resampling_matches_the_pipes_pad_upsample_grid_sample_downsample(
    geometric, seed, ops, size
):
    """Geometric operations at p = 0.8 on 3 images of 3 channels (the batch's reflect margin, the
    sym6 filters, the bilinear sampling with zeros outside)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((3, size, size, 3)).astype(np.float32)
    _, _, u, n = _draws(3, seed=seed)
    g_inv = ada.geometric_matrix(ada.parameters(u, n, jnp.float32(0.8), ops), size, size)
    got = np.asarray(geometric(jnp.asarray(images), g_inv))
    want = np_geometric(images, np.asarray(g_inv, np.float64))
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert not np.allclose(got, images, atol=1e-2)


def test_integer_translation_is_an_exact_shift_with_reflection(geometric):
    """Through the filtered resampling, an integer translation moves the pixels (reflected at the
    border) unchanged: the sym6 filter is orthogonal."""
    images = np.random.default_rng(4).standard_normal((1, 8, 8, 3)).astype(np.float32)
    g_inv = jnp.asarray(translate2d(-2, 1)[None], jnp.float32)  # out (x, y) reads in (x-2, y+1)
    got = np.asarray(geometric(jnp.asarray(images), g_inv))[0]
    padded = np.pad(images[0], ((4, 4), (4, 4), (0, 0)), mode="reflect")
    want = padded[4 + 1 : 4 + 1 + 8, 4 - 2 : 4 - 2 + 8]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_colour_transform_is_the_matrix_on_each_pixels_channels():
    rng = np.random.default_rng(5)
    images = rng.standard_normal((4, 3, 5, 3)).astype(np.float32)
    _, _, u, n = _draws(4, seed=5)
    c = ada.color_matrix(ada.parameters(u, n, jnp.float32(1.0)))
    got = np.asarray(ada.execute_color(jnp.asarray(images), c))
    cn = np.asarray(c, np.float64)
    want = np.einsum("bij,bhwj->bhwi", cn[:, :3, :3], images) + cn[:, None, None, :3, 3]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    grey = images[..., :1]
    want1 = (
        grey * cn[:, :3, :3].mean(1).sum(-1)[:, None, None, None]
        + cn[:, :3, 3].mean(-1)[:, None, None, None]
    )
    np.testing.assert_allclose(ada.execute_color(jnp.asarray(grey), c), want1, rtol=1e-5, atol=1e-5)


def test_pipe_is_the_identity_at_p_zero_and_differentiable():
    images = jnp.asarray(np.random.default_rng(6).standard_normal((2, 8, 8, 3)), jnp.float32)
    kw = dict(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))
    for space in ada.SPACES:
        key = jax.random.PRNGKey(0)
        fn = jax.jit(lambda x, p, s=space, k=key: ada.ada_augment(k, x, p, space=s, **kw))
        np.testing.assert_allclose(fn(images, jnp.float32(0.0)), images, atol=2e-5)
        assert not np.allclose(fn(images, jnp.float32(1.0)), images, atol=1e-2)
    grad = jax.jit(  # compiled: op by op, the pipeline's many small ops take seconds
        jax.grad(lambda x: jnp.sum(ada.ada_augment(jax.random.PRNGKey(0), x, 1.0, **kw) ** 2))
    )
    assert np.abs(np.asarray(grad(images))).sum() > 0  # the generator learns through it


def test_adjust_moves_p_towards_the_target_at_each_interval_only():
    """At GAN steps that are multiples of ADJUST_INTERVAL, p moves by ADJUST_INTERVAL /
    (ADJUST_KIMG * 1000), up where the discriminator's mean sign on real images exceeds the
    target and down where it does not; in between it holds."""
    step = ada.ADJUST_INTERVAL / (ada.ADJUST_KIMG * 1000)
    up = ada.ada_adjust(jnp.float32(0.1), jnp.ones(4), jnp.int32(8), target=0.5, max_p=0.5)
    down = ada.ada_adjust(jnp.float32(0.1), -jnp.ones(4), jnp.int32(8), target=0.5, max_p=0.5)
    held = ada.ada_adjust(jnp.float32(0.1), jnp.ones(4), jnp.int32(9), target=0.5, max_p=0.5)
    np.testing.assert_allclose([up, down, held], [0.1 + step, 0.1 - step, 0.1], rtol=1e-6)


def test_standardised_and_signed_spaces_differ_in_brightness_only_by_the_scale():
    """Brightness alone at p = 1: the reference adds b in the standardised space; 'signed' adds
    b in [-1, 1] pixels, i.e. b / (2 std) standard deviations."""
    images = jnp.zeros((4, 4, 4, 3), jnp.float32)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, ops=("brightness",))
    key = jax.random.PRNGKey(7)
    ref = np.asarray(ada.ada_augment(key, images, 1.0, space="standardised", **kw))
    signed = np.asarray(ada.ada_augment(key, images, 1.0, space="signed", **kw))
    np.testing.assert_allclose(signed, ref / (2 * 0.25), rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(np.abs(ref).max())) and np.abs(ref).max() > 0
