"""Classification terms: cross-entropy on the labelled rows of a batch, and soft-label
cross-entropy against a teacher's logits (knowledge distillation, Hinton et al., "Distilling the
knowledge in a neural network", NIPS 2014 Deep Learning Workshop, Sec. 2).

Conventions (float32 compute, global batch under ``jit``, optional ``axis_name`` inside
``shard_map``) are those of ``cl_ssl.losses.objectives``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cl_ssl.losses.objectives import _as_float, _batch_mean, _batch_sum, _check_positive


def _check_logits(fn: str, **arrays: jax.Array) -> None:
    shapes = {name: jnp.shape(x) for name, x in arrays.items()}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{fn}: {name} must be [batch, classes] logits, got shape {shape}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"{fn}: the logits must have one [batch, classes] shape, got {listed}")


def soft_cross_entropy(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """The batch mean of -sum_k softmax(t_i / T)_k log softmax(s_i / T)_k.

    PyTorch's ``F.cross_entropy(student, softmax(teacher / T))`` with probability targets, as
    Kaizen's classifier distillation computes it at T = 1 (``kaizen/distiller_factories/
    soft_label.py`` l.77). No T^2 factor; the teacher passes through ``stop_gradient``.

    Args:
      student_logits: [B, C].
      teacher_logits: [B, C], the targets' logits.
      temperature: T > 0 of both distributions.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_logits(
        "soft_cross_entropy", student_logits=student_logits, teacher_logits=teacher_logits
    )
    _check_positive("soft_cross_entropy", temperature=temperature)
    target = jax.nn.softmax(lax.stop_gradient(_as_float(teacher_logits)) / temperature, axis=-1)
    log_prob = jax.nn.log_softmax(_as_float(student_logits) / temperature, axis=-1)
    return -_batch_mean(jnp.sum(target * log_prob, axis=-1), axis_name)


def labelled_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, axis_name: str | None = None
) -> jax.Array:
    """Cross-entropy averaged over the rows whose label is >= 0; 0 when no row has one.

    PyTorch's ``F.cross_entropy(logits, labels, ignore_index=-1)`` (Kaizen
    ``kaizen/methods/base.py`` l.445) for any negative label, except that a batch without any
    label gives 0 (PyTorch gives NaN), so that unlabelled data contribute nothing.

    Args:
      logits: [B, C].
      labels: int [B], a class in [0, C) or negative for a row without a label.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_logits("labelled_cross_entropy", logits=logits)
    if jnp.shape(labels) != jnp.shape(logits)[:1]:
        raise ValueError(
            f"labelled_cross_entropy: labels must be [batch] = [{jnp.shape(logits)[0]}], got "
            f"shape {jnp.shape(labels)}"
        )
    has_label = labels >= 0
    log_prob = jax.nn.log_softmax(_as_float(logits), axis=-1)
    picked = jnp.take_along_axis(log_prob, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
    total = _batch_sum(jnp.where(has_label, -picked, 0.0), axis_name)
    count = _batch_sum(has_label.astype(jnp.float32), axis_name)
    return total / jnp.maximum(count, 1.0)
