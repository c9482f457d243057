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


def _rows_mean(values: jax.Array, rows: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean of ``values`` [B] over the rows where ``rows`` (bool [B]); 0 when there are none."""
    total = _batch_sum(jnp.where(rows, values, 0.0), axis_name)
    return total / jnp.maximum(_batch_sum(rows.astype(jnp.float32), axis_name), 1.0)


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
    return _rows_mean(-picked, has_label, axis_name)


def old_class_distillation(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    old: jax.Array,
    seen: jax.Array,
    rows: jax.Array,
    temperature: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """Output distillation on the old classes (Genifer's ``KD_sep``).

    The mean over the selected rows of -sum_{c in old} p_c log q_c, where p = softmax(t / T) over
    the old classes (the previous model's output layer) and q = softmax(s / T) over every class
    seen so far, then read on the old classes only: the term also pushes the new classes' share
    down on the rows it sees (kevthan/feature-driven-image-replay ``genifer/trainers/
    genifer_trainer.py::get_modified_loss``, ``out_distill_loss == "KD_sep"``). No T^2 factor;
    the teacher passes through ``stop_gradient``.

    Args:
      student_logits: [B, C] over the data set's classes.
      teacher_logits: [B, C], the previous model's logits (only the old classes are read).
      old: bool [C], the classes of the earlier tasks (non-empty).
      seen: bool [C], the classes seen so far (a superset of ``old``).
      rows: bool [B], the rows distilled (Genifer: the generated ones); 0 when none is.
      temperature: T > 0 of both distributions.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_logits(
        "old_class_distillation", student_logits=student_logits, teacher_logits=teacher_logits
    )
    _check_positive("old_class_distillation", temperature=temperature)
    teacher = jnp.where(old, lax.stop_gradient(_as_float(teacher_logits)), -jnp.inf)
    student = jnp.where(seen, _as_float(student_logits), -jnp.inf)
    target = jax.nn.softmax(teacher / temperature, axis=-1)
    log_prob = jax.nn.log_softmax(student / temperature, axis=-1)
    per_row = -jnp.sum(jnp.where(old, target * log_prob, 0.0), axis=-1)
    return _rows_mean(per_row, rows, axis_name)


def feature_distance(
    student: jax.Array, teacher: jax.Array, *, rows: jax.Array, axis_name: str | None = None
) -> jax.Array:
    """The mean over the selected rows of the Euclidean distance ||s_i - t_i||_2 between two
    models' activations, each row flattened (Genifer's ``single_L2`` feature distillation on the
    layer-3 maps, ``genifer_trainer.py::get_modified_loss``).

    The gradient at a zero distance is 0 (as PyTorch's ``torch.norm``), not NaN: the student
    starts each task equal to its teacher.

    Args:
      student: [B, ...] activations.
      teacher: [B, ...] activations of the same shape (through ``stop_gradient``).
      rows: bool [B], the rows compared; 0 when none is.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    if jnp.shape(student) != jnp.shape(teacher) or jnp.ndim(student) < 2:
        raise ValueError(
            "feature_distance: student and teacher must be [batch, ...] activations of one "
            f"shape, got {jnp.shape(student)} and {jnp.shape(teacher)}"
        )
    diff = _as_float(student) - lax.stop_gradient(_as_float(teacher))
    squared = jnp.sum(jnp.reshape(diff, (diff.shape[0], -1)) ** 2, axis=-1)
    positive = squared > 0
    distance = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
    return _rows_mean(distance, rows, axis_name)
