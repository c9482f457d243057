"""Genifer's class-conditional generator and its feature-driven discriminator (Thandiackal et
al., "Generative feature-driven image replay for continual learning"; kevthan/feature-driven-
image-replay ``genifer/model/conditional_eql_style_generator.py``,
``conditional_eql_discriminator.py`` and ``layers.py``).

Every layer has an equalised learning rate (Karras et al., ICLR 2018, Sec. 4.1): weights are
drawn from N(0, 1 / lr_mul) and scaled at run time by lr_mul / sqrt(fan_in) (linear layers) or
sqrt(2 / fan_in) (convolutions), biases by lr_mul, so that Adam's per-parameter step moves every
layer at the same relative speed. Images are NHWC here (NCHW in the reference).

Generator: one-hot class -> 256-d embedding, concatenated with z, two linear layers (lr_mul 0.01,
LeakyReLU 0.2) -> w; a learned constant at ``base_resolution``; 3x3 convolutions whose input is
modulated by w (x * y1(w) + y2(w), y1's bias initialised to 1, no demodulation, no
normalisation), each followed by per-pixel noise with a learned per-channel scale and
LeakyReLU; bilinear x2 upsampling after every second convolution; a last modulated convolution
to 3 channels, without noise. Images come out in the normalised space of the classifier's input.

Discriminator: it never sees pixels, only a frozen classifier's feature map (Genifer matches
ResNet's layer3, 256 x 8 x 8 on CIFAR): two blocks of two 3x3 convolutions, each block followed
by a 2x2 average pool; minibatch standard deviation (one channel, groups of up to 32); a 3x3
convolution; a dense layer; a 128-d output projected on the class (projection discriminator,
Miyato & Koyama, ICLR 2018): D(h, c) = <phi(h), W onehot(c)> / sqrt(128).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LEAK = 0.2
EMBED_DIM = 256
PROJECTION_DIM = 128
MBSTD_GROUP = 32


def _leaky(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, LEAK)


class EqDense(nn.Module):
    """Linear layer with an equalised learning rate (``layers.py::EQLinear``).

    Attributes:
      features: output width.
      use_bias: whether to add a bias.
      bias_init: the bias's initial value (before its run-time scale lr_mul).
      lr_mul: learning-rate multiplier (0.01 for the mapping network).
    """

    features: int
    use_bias: bool = True
    bias_init: float = 0.0
    lr_mul: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., D_in] -> [..., features]."""
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel",
            nn.initializers.normal(1.0 / self.lr_mul),
            (fan_in, self.features),
            jnp.float32,
        )
        y = x @ (kernel * (self.lr_mul / math.sqrt(fan_in)))
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.constant(self.bias_init), (self.features,), jnp.float32
            )
            y = y + bias * self.lr_mul
        return y


class EqConv(nn.Module):
    """3x3 (or k x k) convolution, stride 1, 'same' zero padding, with an equalised learning rate
    (``layers.py::EQConv2d``: weights N(0, 1) scaled by sqrt(2 / fan_in), bias initialised to 0).

    Attributes:
      features: output channels.
      kernel_size: side of the square kernel.
    """

    features: int
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C_in] -> [B, H, W, features]."""
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.normal(1.0), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        scale = math.sqrt(2.0 / (shape[0] * shape[1] * shape[2]))
        y = jax.lax.conv_general_dilated(
            x, kernel * scale, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias


class StyleConv(nn.Module):
    """Input-modulated convolution with optional noise (``layers.py::StyleEQConv2dWithBias``).

    Attributes:
      features: output channels.
      noise: whether to add per-pixel noise with a learned per-channel scale (initialised to 0).
    """

    features: int
    noise: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array, noise: jax.Array | None) -> jax.Array:
        """x [B, H, W, C_in], w [B, W_dim], noise [B, H, W, 1] (or None when ``noise`` is off) ->
        [B, H, W, features]."""
        channels = x.shape[-1]
        scale = EqDense(channels, bias_init=1.0, name="y1")(w)
        shift = EqDense(channels, bias_init=0.0, name="y2")(w)
        x = x * scale[:, None, None, :] + shift[:, None, None, :]
        x = EqConv(self.features, name="conv")(x)
        if self.noise:
            strength = self.param("noise_scale", nn.initializers.zeros, (self.features,))
            x = x + strength * noise
        return x


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float32 [n_out, n_in]: linear interpolation weights with aligned corners."""
    pos = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.clip(lo + 1, 0, n_in - 1)
    t = pos - lo
    weights = np.zeros((n_out, n_in), np.float32)
    np.add.at(weights, (np.arange(n_out), lo), 1 - t)
    np.add.at(weights, (np.arange(n_out), hi), t)
    return weights


def upsample(x: jax.Array) -> jax.Array:
    """Bilinear x2 upsampling with aligned corners (PyTorch ``UpsamplingBilinear2d``, which the
    reference uses), as two small matrix products (no gathers, cheap to differentiate)."""
    _, h, w, _ = x.shape
    rows = jnp.asarray(_align_corners_matrix(h, 2 * h), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(w, 2 * w), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols)


class Generator(nn.Module):
    """The class-conditional generator G(z, c).

    Attributes:
      num_classes: C, the width of the one-hot condition.
      latent_dim: the width of z and of w (512 in the reference).
      channels: output channels of the modulated convolutions, two per resolution: the reference's
        (512, 256, 256, 128, 128, 64, 64) from a 512-channel constant, i.e. 2k + 1 convolutions for
        k upsamplings.
      constant_channels: channels of the learned constant (512).
      base_resolution: side of the learned constant (4; the image side is base * 2**k).
      image_channels: channels of the output image (3).
    """

    num_classes: int
    latent_dim: int = 512
    channels: Sequence[int] = (512, 256, 256, 128, 128, 64, 64)
    constant_channels: int = 512
    base_resolution: int = 4
    image_channels: int = 3

    @property
    def num_upsamplings(self) -> int:
        return (len(self.channels) - 1) // 2

    @property
    def image_size(self) -> int:
        return self.base_resolution * 2**self.num_upsamplings

    def noise_shapes(self, batch: int) -> list[tuple[int, ...]]:
        """The shape of each convolution's noise map, [B, H_i, W_i, 1]."""
        shapes, side = [], self.base_resolution
        for i in range(len(self.channels)):
            shapes.append((batch, side, side, 1))
            if i % 2 == 1:
                side *= 2
        return shapes

    def sample_noise(self, key: jax.Array, batch: int) -> list[jax.Array]:
        """Standard normal noise maps for every convolution (as ``sample_noise_maps``)."""
        keys = jax.random.split(key, len(self.channels))
        return [
            jax.random.normal(k, s) for k, s in zip(keys, self.noise_shapes(batch), strict=True)
        ]

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array, noise: Sequence[jax.Array]) -> jax.Array:
        """z float [B, latent_dim], labels int [B], noise from ``sample_noise`` ->
        float32 images [B, S, S, image_channels] in the classifier's normalised space."""
        if len(self.channels) % 2 != 1:
            raise ValueError(
                f"Generator.channels needs an odd count (2 per upsampling, plus one); got "
                f"{tuple(self.channels)}"
            )
        onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        embedded = EqDense(EMBED_DIM, name="onehot_embed")(onehot)
        x = jnp.concatenate([jnp.asarray(z, jnp.float32), embedded], axis=-1)
        w = _leaky(EqDense(self.latent_dim, lr_mul=0.01, name="w1")(x))
        w = _leaky(EqDense(self.latent_dim, lr_mul=0.01, name="w2")(w))
        side = self.base_resolution
        const = self.param(
            "const", nn.initializers.ones, (1, side, side, self.constant_channels), jnp.float32
        )
        x = jnp.broadcast_to(const, (z.shape[0], side, side, self.constant_channels))
        for i, features in enumerate(self.channels):
            x = _leaky(StyleConv(features, name=f"conv{i + 1}")(x, w, noise[i]))
            if i % 2 == 1:
                x = upsample(x)
        return StyleConv(self.image_channels, noise=False, name="out_layer")(x, w, None)


def minibatch_std(x: jax.Array, group_size: int = MBSTD_GROUP) -> jax.Array:
    """StyleGAN's minibatch standard deviation (``MinibatchStdLayer``, one channel): x [B, H, W,
    C] with one more channel holding, for each group of min(group_size, B) rows taken with stride
    B / G (row i belongs to group i mod (B / G)), the mean over channels and pixels of the
    within-group standard deviation. B must be a multiple of the group size."""
    b, h, w, c = x.shape
    g = min(group_size, b)
    y = x.reshape(g, b // g, h, w, c)  # row i = (i // (B/G), i % (B/G)), as torch reshape(G, -1)
    y = jnp.sqrt(jnp.mean((y - y.mean(axis=0)) ** 2, axis=0) + 1e-8)
    y = jnp.mean(y, axis=(1, 2, 3))  # [B/G]
    y = jnp.tile(y, g)[:, None, None, None]
    return jnp.concatenate([x, jnp.broadcast_to(y, (b, h, w, 1))], axis=-1)


def downsample(x: jax.Array) -> jax.Array:
    """2x2 average pool, stride 2 (``AvgPool2d(2)``); an odd side keeps its last row or column
    averaged with zeros."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class FeatureDiscriminator(nn.Module):
    """The conditional discriminator D(h, c) on a classifier's feature map h.

    Attributes:
      num_classes: C.
      channels: the width of each block of two convolutions (the reference's stage-4 prologue,
        for ResNet-18's layer3: 256, 512).
      epilogue_channels: the width of the epilogue's convolution and dense layer (512).
    """

    num_classes: int
    channels: Sequence[int] = (256, 512)
    epilogue_channels: int = 512

    @nn.compact
    def __call__(self, features: jax.Array, labels: jax.Array) -> jax.Array:
        """features float [B, H, W, C_h], labels int [B] -> float32 [B] scores (logits)."""
        x = jnp.asarray(features, jnp.float32)
        for i, width in enumerate(self.channels):
            x = _leaky(EqConv(width, name=f"block{i}_conv0")(x))
            x = _leaky(EqConv(width, name=f"block{i}_conv1")(x))
            x = downsample(x)
        x = minibatch_std(x)
        x = _leaky(EqConv(self.epilogue_channels, name="epilogue_conv")(x))
        x = _leaky(
            EqDense(self.epilogue_channels, name="epilogue_dense")(x.reshape(x.shape[0], -1))
        )
        phi = EqDense(PROJECTION_DIM, name="logits")(x)
        onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        projected = EqDense(PROJECTION_DIM, use_bias=False, name="onehot_project")(onehot)
        return jnp.sum(phi * projected, axis=-1) / math.sqrt(PROJECTION_DIM)
