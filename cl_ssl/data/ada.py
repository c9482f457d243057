"""Differentiable augmentation with an adaptive probability (ADA; Karras et al., "Training
generative adversarial networks with limited data", NeurIPS 2020), for Genifer's discriminator.

Genifer augments real and generated images with StyleGAN2-ADA's non-leaking pipeline before the
frozen classifier computes the features its discriminator judges, with the probability p adapted
so that the share of real images the discriminator scores positive, r_t, stays near 0.5
(kevthan/feature-driven-image-replay ``genifer/trainers/genifer_trainer.py``: ``aug_pipe`` and
``update_ada``).

cl_ssl implements ADA's "bgc" subset with its default strengths (``stylegan2-ada-pytorch
training/augment.py``): x-flip, integer translation by up to 1/8 of the image with reflect
padding, brightness (additive, N(0, 0.2)), contrast (multiplicative, 2^N(0, 0.5)) and saturation
(2^N(0, 1) about the luma axis), each applied to each image with probability p. Genifer also
enables ADA's rot90, general geometric and hue operations, which this implementation leaves out
(they need ADA's wavelet-filtered resampling). Every operation is linear in the image, so
gradients reach the generator through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

TRANSLATE_MAX = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
SATURATION_STD = 1.0
ADJUST_INTERVAL = 4
"""Steps between two updates of p; r_t is the mean over this many steps (``ada_interval``)."""
ADJUST_KIMG = 4
"""p moves by ``ADJUST_INTERVAL / (ADJUST_KIMG * 1000)`` per update (Genifer's
``dis_augmentation_nk_iter``, counted in steps rather than images)."""


def _augment_one(u: jax.Array, n: jax.Array, image: jax.Array, p: jax.Array) -> jax.Array:
    """One image in [-1, 1], [H, W, 3]; u uniform [9], n standard normal [3]."""
    h, w = image.shape[:2]
    apply = u[:5] < p
    flip = apply[0] & (u[5] < 0.5)
    image = jnp.where(flip, image[:, ::-1], image)
    pad_h, pad_w = max(1, round(TRANSLATE_MAX * h)), max(1, round(TRANSLATE_MAX * w))
    shift = jnp.round((u[6:8] * 2 - 1) * TRANSLATE_MAX * jnp.array([h, w]))
    shift = jnp.where(apply[1], shift, 0).astype(jnp.int32)
    padded = jnp.pad(image, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect")
    image = jax.lax.dynamic_slice(padded, (pad_h - shift[0], pad_w - shift[1], 0), image.shape)
    image = image + jnp.where(apply[2], n[0] * BRIGHTNESS_STD, 0.0)
    image = image * jnp.where(apply[3], jnp.exp2(n[1] * CONTRAST_STD), 1.0)
    luma = jnp.mean(image, axis=-1, keepdims=True)  # the projection on (1, 1, 1) / sqrt(3)
    saturation = jnp.where(apply[4], jnp.exp2(n[2] * SATURATION_STD), 1.0)
    return luma + (image - luma) * saturation


def ada_augment(
    key: jax.Array,
    images: jax.Array,
    p: jax.Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> jax.Array:
    """Each image augmented by every operation with probability ``p``.

    Args:
      key: PRNG key.
      images: float [B, H, W, 3], standardised with ``mean`` and ``std`` (the classifier's input).
      p: float32 [], the augmentation probability.
      mean, std: the standardisation's per-channel statistics of [0, 1] images.

    Returns:
      float32 [B, H, W, 3] in the same space; with p = 0, ``images`` unchanged.
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    signed = (jnp.asarray(images, jnp.float32) * std + mean) * 2 - 1  # ADA's [-1, 1] space
    k_u, k_n = jax.random.split(key)
    u = jax.random.uniform(k_u, (images.shape[0], 9))
    n = jax.random.normal(k_n, (images.shape[0], 3))
    out = jax.vmap(_augment_one, in_axes=(0, 0, 0, None))(u, n, signed, p)
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
