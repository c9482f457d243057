"""Distillation terms of the continual strategies as pure functions of arrays.

CaSSLe (Fini et al., CVPR 2022; ``cassle/distillers/*.py``) turns each SSL loss into a
distillation term: a learnable predictor h maps the student's projection z^v of view v onto the
frozen previous-task model's projection z-bar^v *of the same view*, through a loss of the same
kind as the SSL objective; PFR (Gomez-Villa et al., CVPRW 2022) applies a predictor the same way
to backbone features. Every function here takes the predictions p^v = h(z^v) and the teacher's
outputs as tuples with one [B, D] array per view (the student's views, usually two) and averages
its per-view terms, the (1/2) sum_v of CaSSLe's distillers: ``fn((p1, p2), (z1, z2))``, or
``fn((p,), (z,))`` for one view. A bare array in place of a tuple raises ``TypeError`` (a
[V, B, D] stack would otherwise pass for V views, and a [B, D] array for B of them). The teacher
side always passes through ``stop_gradient``.

Conventions (float32 compute, global batch under ``jit``, optional ``axis_name`` inside
``shard_map``) are those of ``cl_ssl.losses.objectives``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cl_ssl.losses.classification import soft_cross_entropy
from cl_ssl.losses.objectives import (
    Views,
    _as_float,
    _batch_mean,
    _batch_sum,
    _check_embeddings,
    _check_min_batch,
    _check_positive,
    _check_view_tuple,
    _gathered_rows,
    barlow_twins_loss,
    byol_loss,
    l2_normalize,
    similarity_kl,
    similarity_kl_rows,
    simsiam_loss,
)


def _check_views(
    fn: str, predictions: Views, targets: Views, names: tuple[str, str] = ("predictions", "targets")
) -> None:
    _check_view_tuple(fn, names[0], predictions)
    _check_view_tuple(fn, names[1], targets)
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(
            f"{fn}: pass one prediction and one teacher output per view, got {len(predictions)} "
            f"predictions and {len(targets)} teacher outputs"
        )
    for v, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        _check_embeddings(fn, **{f"predictions[{v}]": p, f"targets[{v}]": t})
    shapes = {jnp.shape(p) for p in predictions}
    if len(shapes) > 1:
        raise ValueError(
            f"{fn}: every view must have the same [batch, dim] shape, got {sorted(shapes)}; pass "
            f"the same images in every view, through the same heads"
        )


def _mean_over_views(
    fn: str,
    term,
    predictions: Views,
    targets: Views,
    names: tuple[str, str] = ("predictions", "targets"),
) -> jax.Array:
    _check_views(fn, predictions, targets, names)
    values = [term(p, lax.stop_gradient(t)) for p, t in zip(predictions, targets, strict=True)]
    return sum(values) / len(values)


def contrastive_distillation(
    predictions: Views,
    targets: Views,
    *,
    temperature: float = 0.2,
    axis_name: str | None = None,
) -> jax.Array:
    """CaSSLe's contrastive distiller (SimCLR, MoCoV2+; ``simclr_distill_loss_func``).

    With P = n([p^1; p^2; ...]) and Z = n([z-bar^1; z-bar^2; ...]) (N = views x B rows each):

      L_c(A, C) = -(1/N) sum_i log( exp(a_i . c_i / tau) / sum_j exp(a_i . c_j / tau) )
      L = (1/2) [ L_c(P, Z) + L_c(Z, P) ]

    The denominator runs over all N columns, including the other view of the same image: the
    reference means to mask it but its mask is a no-op, and this reproduces the code (CaSSLe
    ``cassle/losses/simclr.py::simclr_distill_loss_func``). Gradient reaches P through both terms.

    Args:
      predictions: per view, [B, D] predictor outputs h(z^v) of the student.
      targets: per view, [B, D] teacher projections z-bar^v of the same view.
      temperature: tau > 0 (CaSSLe: 0.2).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_views("contrastive_distillation", predictions, targets)
    _check_positive("contrastive_distillation", temperature=temperature)
    p = l2_normalize(_as_float(jnp.concatenate(predictions, axis=0)))
    z = lax.stop_gradient(l2_normalize(_as_float(jnp.concatenate(targets, axis=0))))

    def cross_entropy(rows, columns):
        gathered, offset = _gathered_rows(columns, axis_name)
        log_prob = jax.nn.log_softmax(rows @ gathered.T / temperature, axis=-1)
        own = offset + jnp.arange(rows.shape[0])
        return -_batch_mean(jnp.take_along_axis(log_prob, own[:, None], axis=-1)[:, 0], axis_name)

    return 0.5 * (cross_entropy(p, z) + cross_entropy(z, p))


def predictive_distillation(
    predictions: Views, targets: Views, *, axis_name: str | None = None
) -> jax.Array:
    """CaSSLe's predictive distiller (BYOL): L = (1/V) sum_v [2 - 2 mean_i cos(p^v_i, z-bar^v_i)].

    Note the average over views, where BYOL's own loss sums its two directions.

    Args:
      predictions: per view, [B, D] predictor outputs h(z^v).
      targets: per view, [B, D] teacher projections z-bar^v.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [0, 4].
    """
    return _mean_over_views(
        "predictive_distillation",
        lambda p, t: byol_loss(p, t, axis_name=axis_name),
        predictions,
        targets,
    )


def cosine_distillation(
    predictions: Views, targets: Views, *, axis_name: str | None = None
) -> jax.Array:
    """Negative cosine: L = -(1/V) sum_v mean_i cos(p^v_i, sg(t^v_i)).

    PFR's term on backbone features (Gomez-Villa et al., CVPRW 2022; distiller
    ``cassle/distillers/pfr.py`` of ``alviur/CVPR_PFR``: -(1/2) sum_v cos(h(f^v), f-bar^v)), and
    the CaSSLe-style distiller of SimSiam, whose own loss is this negative cosine.

    Args:
      predictions: per view, [B, D] predictor outputs.
      targets: per view, [B, D] teacher outputs of the same view.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [-1, 1].
    """
    return _mean_over_views(
        "cosine_distillation",
        lambda p, t: simsiam_loss(p, t, axis_name=axis_name),
        predictions,
        targets,
    )


def decorrelative_distillation(
    predictions: Views,
    targets: Views,
    *,
    lambd: float = 5e-3,
    scale: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """CaSSLe's decorrelative distiller (Barlow Twins): L = (1/V) sum_v BT(p^v, z-bar^v).

    BT is ``barlow_twins_loss``; the cross-correlation pairs a view's prediction with the teacher's
    projection of the same view.

    Args:
      predictions: per view, [B, D] predictor outputs h(z^v).
      targets: per view, [B, D] teacher projections z-bar^v.
      lambd, scale: Barlow Twins' off-diagonal weight and overall factor (CaSSLe: 5e-3, 0.1).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    return _mean_over_views(
        "decorrelative_distillation",
        lambda p, t: barlow_twins_loss(p, t, lambd=lambd, scale=scale, axis_name=axis_name),
        predictions,
        targets,
    )


def mse_distillation(
    predictions: Views, targets: Views, *, axis_name: str | None = None
) -> jax.Array:
    """CaSSLe's predictive-MSE distiller (VICReg): L = (1/V) sum_v mean_{i,d} (p^v_id - z-bar^v_id)^2.

    The mean runs over the batch and the D dimensions, as ``F.mse_loss``. CaSSLe weighs this term
    by 25, VICReg's invariance weight; the weight is the caller's.

    Args:
      predictions: per view, [B, D] predictor outputs h(z^v).
      targets: per view, [B, D] teacher projections z-bar^v.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss (>= 0).
    """

    def mse(p, t):
        err = _as_float(p) - _as_float(t)
        return _batch_mean(jnp.mean(err * err, axis=-1), axis_name)

    return _mean_over_views("mse_distillation", mse, predictions, targets)


def knowledge_distillation(
    student_scores: Views,
    teacher_scores: Views,
    *,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """CaSSLe's knowledge distiller (SwAV): soft-label cross-entropy over prototypes.

      L = -(1/V) sum_v mean_i sum_k softmax(t^v_i / tau)_k log softmax(s^v_i / tau)_k

    with t^v = W-bar n(z-bar^v), the previous task's (frozen) prototypes scoring the teacher's
    projection, used directly (no Sinkhorn step), and s^v = W_d n(h(z^v)), new learnable
    prototypes scoring the prediction.

    Args:
      student_scores: per view, [B, K] scores of the predictions against the new prototypes.
      teacher_scores: per view, [B, K] scores of the teacher's projections against its prototypes.
      temperature: tau > 0 of both distributions (CaSSLe: 0.1).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_positive("knowledge_distillation", temperature=temperature)

    def cross_entropy(s, t):
        return soft_cross_entropy(s, t, temperature=temperature, axis_name=axis_name)

    return _mean_over_views(
        "knowledge_distillation",
        cross_entropy,
        student_scores,
        teacher_scores,
        ("student_scores", "teacher_scores"),
    )


def similarity_distillation(
    predictions: Views,
    targets: Views,
    *,
    student_temperature: float = 0.2,
    teacher_temperature: float = 0.02,
    axis_name: str | None = None,
) -> jax.Array:
    """ISD's similarity KL as a distiller: the teacher's similarity distribution over the batch.

    For view v, with s_i = n(p^v_i) and t_i = n(z-bar^v_i), the anchors of image i are the
    teacher's embeddings of the *other* images of the batch, t_j for j != i, and

      L = (1/V) sum_v similarity_kl(s_i . t_j, t_i . t_j; tau_s, tau_t)   over j != i

    ISD's anchor bank holds embeddings of the current momentum teacher, in a space the frozen
    previous-task teacher does not share; the batch of teacher embeddings is the anchor set both
    networks can score (a project choice: neither CaSSLe nor ISD defines an ISD distiller).

    Args:
      predictions: per view, [B, D] predictor outputs h(z^v).
      targets: per view, [B, D] teacher projections z-bar^v.
      student_temperature, teacher_temperature: temperatures > 0 (ISD-plus R-18: 0.2, 0.02).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; the anchors are then the
        teacher embeddings of the global batch.

    Returns:
      Scalar float32 loss (>= 0).
    """

    def term(p, t):
        _check_min_batch("similarity_distillation", p.shape[0], 2, axis_name)
        s, t = l2_normalize(_as_float(p)), l2_normalize(_as_float(t))
        anchors, offset = _gathered_rows(t, axis_name)
        rows = jnp.arange(s.shape[0])
        # Column k of row i is anchor k, skipping the row's own image.
        others = jnp.arange(anchors.shape[0] - 1)[None, :]
        others = others + (others >= (offset + rows)[:, None])
        return similarity_kl(
            jnp.take_along_axis(s @ anchors.T, others, axis=-1),
            jnp.take_along_axis(t @ anchors.T, others, axis=-1),
            student_temperature=student_temperature,
            teacher_temperature=teacher_temperature,
            axis_name=axis_name,
        )

    return _mean_over_views("similarity_distillation", term, predictions, targets)


def relational_distillation(
    student_queries: jax.Array,
    student_anchors: jax.Array,
    teacher_queries: jax.Array,
    teacher_anchors: jax.Array,
    *,
    student_temperature: float = 0.07,
    teacher_temperature: float = 0.04,
    valid: jax.Array | None = None,
    anchor_valid: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """CCL's self-supervised knowledge distillation (Lin et al., ICME 2022, Sec. 3.3): the
    teacher's distribution of similarities to a set of anchors, distilled into the student's.

    With q, a the L2-normalised queries [B, D] and anchors [K, D] of each network,

      S^S_ij = q^S_i . a^S_j,   S^T_ij = q^T_i . a^T_j
      L = (1/|valid|) sum_{valid i} KL( softmax_j(S^T_ij / tau_t) || softmax_j(S^S_ij / tau_s) )

    over the valid anchors j, the diagonal included (``VDIGPKU/ContinualContrastiveLearning``
    ``moco/builder.py`` l.232-255: ``F.kl_div(..., reduction='batchmean')`` over the replayed
    rows; tau_s 0.07, tau_t 0.04). Unlike ISD's bank, each network embeds the anchors itself, and
    the student receives gradient through its queries and its anchors; the teacher side passes
    through ``stop_gradient``. 0 when no row is valid.

    Args:
      student_queries, teacher_queries: [B, D] embeddings of the queries (CCL: the query view of
        each image).
      student_anchors, teacher_anchors: [K, D] embeddings of the anchors (CCL: the centre-crop
        view of the same images, K = B).
      student_temperature, teacher_temperature: tau_s, tau_t > 0.
      valid: bool [B], the rows that count (CCL: replayed images); None: every row.
      anchor_valid: bool [K], the anchors that count; None: ``valid`` when K = B, else every one.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``: the anchors (and their
        mask) are then gathered from every device, and the mean runs over the global valid rows.

    Returns:
      Scalar float32 loss (>= 0).
    """
    fn = "relational_distillation"
    _check_embeddings(fn, student_queries=student_queries, teacher_queries=teacher_queries)
    _check_embeddings(fn, student_anchors=student_anchors, teacher_anchors=teacher_anchors)
    _check_positive(
        fn, student_temperature=student_temperature, teacher_temperature=teacher_temperature
    )
    rows, num_anchors = student_queries.shape[0], student_anchors.shape[0]
    if anchor_valid is None and valid is not None and num_anchors == rows:
        anchor_valid = valid
    if anchor_valid is None:
        anchor_valid = jnp.ones(num_anchors, bool)
    if valid is None:
        valid = jnp.ones(rows, bool)
    student_anchors, _ = _gathered_rows(l2_normalize(_as_float(student_anchors)), axis_name)
    teacher_anchors, _ = _gathered_rows(l2_normalize(_as_float(teacher_anchors)), axis_name)
    anchor_valid, _ = _gathered_rows(anchor_valid, axis_name)
    kl = similarity_kl_rows(
        l2_normalize(_as_float(student_queries)) @ student_anchors.T,
        lax.stop_gradient(l2_normalize(_as_float(teacher_queries)) @ teacher_anchors.T),
        student_temperature,
        teacher_temperature,
        anchor_valid,
    )
    total = _batch_sum(jnp.where(valid, kl, 0.0), axis_name)
    count = _batch_sum(valid.astype(jnp.float32), axis_name)
    return total / jnp.maximum(count, 1.0)
