"""GAN terms of Genifer's generator training (Thandiackal et al.; kevthan/feature-driven-image-
replay ``genifer/trainers/genifer_trainer.py::prepare_next_training``): StyleGAN2's
non-saturating logistic losses with a lazy R1 penalty (Karras et al., CVPR 2020, Sec. 2.1 and
4.1; Mescheder et al., ICML 2018), and the distillation of the previous generator into the new
one.

Conventions as in ``cl_ssl.losses.objectives``: float32, the global batch under ``jit``; inside
``jax.shard_map`` pass the mesh axis that splits the batch as ``axis_name`` (every device holding
as many rows), and the means cover the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cl_ssl.losses.objectives import _as_float

__all__ = ["discriminator_loss", "generator_distillation", "generator_loss", "r1_penalty"]


def _mean(x: jax.Array, axis_name: str | None) -> jax.Array:
    """The mean of every element of the global batch (equal rows on every device)."""
    return jnp.mean(x) if axis_name is None else lax.pmean(jnp.mean(x), axis_name)


def discriminator_loss(
    real_scores: jax.Array, fake_scores: jax.Array, *, axis_name: str | None = None
) -> jax.Array:
    """mean softplus(D(fake)) + mean softplus(-D(real)): real scores [B], fake scores [B']."""
    return _mean(jax.nn.softplus(_as_float(fake_scores)), axis_name) + _mean(
        jax.nn.softplus(-_as_float(real_scores)), axis_name
    )


def generator_loss(fake_scores: jax.Array, *, axis_name: str | None = None) -> jax.Array:
    """The non-saturating generator loss, mean softplus(-D(fake)), of scores [B]."""
    return _mean(jax.nn.softplus(-_as_float(fake_scores)), axis_name)


def r1_penalty(
    gradients: jax.Array, *, gamma: float, interval: int = 1, axis_name: str | None = None
) -> jax.Array:
    """(gamma / 2) * mean_i ||grad_h D(h_i)||^2, times interval / (interval + 1) when applied
    lazily every ``interval`` steps, as Genifer does (``_get_r1``: ``lazy_c``; StyleGAN2 multiplies
    by the interval instead, and folds interval / (interval + 1) into Adam's hyperparameters,
    which Genifer does too).

    Args:
      gradients: [B, ...], the gradient of the summed real scores with respect to the
        discriminator's input (Genifer: the classifier's feature maps, not pixels).
      gamma: the R1 weight.
      interval: steps between two R1 evaluations (1: every step, no lazy factor).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 penalty.
    """
    g = _as_float(gradients)
    squared = jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=-1)
    lazy = interval / (interval + 1) if interval > 1 else 1.0
    return _mean(squared, axis_name) * (gamma / 2) * lazy


def generator_distillation(
    new_images: jax.Array, old_images: jax.Array, *, axis_name: str | None = None
) -> jax.Array:
    """mean |G_t(z, c; n) - G_{t-1}(z, c; n)| over every pixel and channel: the L1 distillation
    of the previous generator (through ``stop_gradient``) into the new one, on the same codes and
    noise (``gen_dist_loss "L1"``, ``gen_dist_layer "stage0"``)."""
    if jnp.shape(new_images) != jnp.shape(old_images):
        raise ValueError(
            "generator_distillation: the two generators' images must have one shape, got "
            f"{jnp.shape(new_images)} and {jnp.shape(old_images)}"
        )
    return _mean(
        jnp.abs(_as_float(new_images) - lax.stop_gradient(_as_float(old_images))), axis_name
    )
