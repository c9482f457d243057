"""Base self-supervised objectives as pure functions of arrays.

Every function takes embeddings or scores shaped ``[batch, dim]`` and hyper-parameters as keyword
arguments, computes in float32 (float64 inputs stay float64) and returns a scalar, except where the
docstring says otherwise. Batch means and batch statistics cover the *global* batch:

* under ``jax.jit`` on arrays sharded along the batch, the functions see the global batch directly
  and need no ``axis_name``, on a mesh of ``AxisType.Explicit`` axes (``jax.make_mesh``'s default)
  as on one of ``AxisType.Auto`` axes. On an Explicit mesh, where a product's sharding is part of
  its type and JAX refuses one that is ambiguous, the operands that play the role of
  ``all_gather``'s columns are replicated with ``jax.sharding.reshard`` and the products summed
  over the batch are asked for replicated (``out_sharding``), the global-view counterparts of the
  ``all_gather`` and ``psum`` of the ``shard_map`` path;
* inside ``jax.shard_map``, pass the mesh axis that splits the batch as ``axis_name``: negatives are
  gathered with ``lax.all_gather`` and statistics reduced with ``lax.psum``/``lax.pmean``, so the
  result equals the global call (each device must hold the same number of rows). Called inside
  ``shard_map`` *without* ``axis_name``, a function works on the local rows only, which reproduces
  CaSSLe's per-device SimCLR negatives and VICReg statistics (``cassle/losses/simclr.py``,
  ``cassle/losses/vicreg.py``); average the result with ``lax.pmean`` yourself.

Shapes that cannot work and non-positive temperatures raise ``ValueError`` at trace time.
Temperatures and epsilon given as Python or NumPy numbers are checked; traced values are not.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

_NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps, used by the reference implementations.

Views = Sequence[jax.Array]
"""A tuple (or list) with one [batch, dim] array per view."""


def _as_float(x: jax.Array) -> jax.Array:
    """Promotes to at least float32 (bf16 and f16 become f32; f64 stays f64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jax.Array, *, axis: int = -1) -> jax.Array:
    """n(x) = x / max(||x||_2, 1e-12) along ``axis``, as PyTorch's ``F.normalize``."""
    sq_norm = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * lax.rsqrt(jnp.maximum(sq_norm, _NORM_EPS**2))


def _explicit_mesh(*arrays: jax.Array):
    """The mesh of the first array whose type is sharded over mesh axes (``jit`` on an Explicit
    mesh), or None: outside any mesh, on Auto axes (their shardings are not part of the type) and
    inside ``shard_map`` (Manual axes) no operand needs resharding."""
    for x in arrays:
        sharding = jax.typeof(x).sharding
        if any(axis is not None for axis in sharding.spec):
            return sharding.mesh
    return None


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` replicated on every device when its type is sharded (an Explicit mesh): every row,
    as ``lax.all_gather(..., tiled=True)`` inside ``shard_map``; ``x`` itself otherwise."""
    mesh = _explicit_mesh(x)
    return x if mesh is None else jax.sharding.reshard(x, NamedSharding(mesh, P()))


def _gathered_rows(u: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array | int]:
    """The rows of the global batch (every device's, in device order) and the index among them
    of this call's first row: 0 outside ``shard_map``, where ``u`` is the global batch."""
    if axis_name is None:
        return _replicated(u), 0
    return lax.all_gather(u, axis_name, tiled=True), lax.axis_index(axis_name) * u.shape[0]


def _batch_product(a: jax.Array, b: jax.Array, axis_name: str | None) -> jax.Array:
    """a^T b summed over the global batch (the leading axis of both): [Da, Db], replicated."""
    mesh = _explicit_mesh(a, b)
    sharding = None if mesh is None else NamedSharding(mesh, P())
    product = jnp.matmul(a.T, b, out_sharding=sharding)
    return product if axis_name is None else lax.psum(product, axis_name)


def _axis_size(axis_name: str | None) -> int:
    return 1 if axis_name is None else lax.axis_size(axis_name)


def _batch_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Sum over the leading (batch) axis of the global batch."""
    total = jnp.sum(x, axis=0)
    return total if axis_name is None else lax.psum(total, axis_name)


def _batch_mean(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Mean over the leading (batch) axis of the global batch (equal rows on every device)."""
    return _batch_sum(x, axis_name) / (x.shape[0] * _axis_size(axis_name))


def _check_embeddings(fn: str, **arrays: jax.Array) -> None:
    """Every array is [batch, dim] and all share one shape."""
    for name, x in arrays.items():
        if jnp.ndim(x) != 2:
            raise ValueError(
                f"{fn}: {name} must be a 2-D [batch, dim] array, got shape {jnp.shape(x)}; "
                f"flatten or reshape it to [batch, dim] before calling {fn}"
            )
    shapes = {name: jnp.shape(x) for name, x in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(
            f"{fn}: the inputs must have the same [batch, dim] shape, got {listed}; row i of each "
            f"must come from the same image, through heads of the same width"
        )


def _check_min_batch(fn: str, rows: int, minimum: int, axis_name: str | None) -> None:
    """The global batch (local rows times the axis size) has at least ``minimum`` rows."""
    global_rows = rows * _axis_size(axis_name)
    if global_rows < minimum:
        raise ValueError(
            f"{fn}: needs a global batch of at least {minimum} rows, got {global_rows}; "
            f"increase the batch size"
        )


def _check_view_tuple(fn: str, name: str, views: Views, minimum: int = 0) -> None:
    """``views`` is a tuple or list of at least ``minimum`` arrays, not one array (whose rows
    would pass for views)."""
    if hasattr(views, "shape") or not isinstance(views, Sequence):
        got = f"an array of shape {jnp.shape(views)}" if hasattr(views, "shape") else type(views)
        raise TypeError(
            f"{fn}: {name} must be a tuple with one [batch, dim] array per view, got {got}; pass "
            f"{name}=(view1, view2) for two views, or (view,) for one"
        )
    if len(views) < minimum:
        raise ValueError(f"{fn}: needs at least {minimum} views, got {len(views)}")


def _take_rows(columns: jax.Array, indices: jax.Array) -> jax.Array:
    """Rows ``columns[indices]``: ``columns`` [N, D] holds every row of the global batch
    (replicated, or gathered inside ``shard_map``), ``indices`` int [B] is split like the batch;
    on an Explicit mesh the result is split along the batch as ``indices``."""
    mesh = _explicit_mesh(indices)
    rows = None if mesh is None else NamedSharding(mesh, P(jax.typeof(indices).sharding.spec[0]))
    return _replicated(columns).at[indices].get(out_sharding=rows)


def _check_positive(fn: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, numbers.Real) and not value > 0:
            raise ValueError(f"{fn}: {name} must be > 0, got {value}; pass a positive {name}")


def _check_unit_interval(fn: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, numbers.Real) and not 0 <= value <= 1:
            raise ValueError(f"{fn}: {name} must be in [0, 1], got {value}")


def _check_num_iters(fn: str, num_iters: int | jax.Array) -> None:
    """A Python (or NumPy) integer >= 1, or a traced integer scalar (not checked further)."""
    if isinstance(num_iters, jax.core.Tracer):
        if jnp.shape(num_iters) != () or not jnp.issubdtype(
            jnp.result_type(num_iters), jnp.integer
        ):
            raise TypeError(
                f"{fn}: num_iters must be an integer scalar, got a traced "
                f"{jax.typeof(num_iters).str_short()}; pass an int such as num_iters=3"
            )
    elif isinstance(num_iters, bool) or not (
        isinstance(num_iters, numbers.Integral) and num_iters >= 1
    ):
        raise ValueError(f"{fn}: num_iters must be an integer >= 1, got {num_iters!r}")


# ---------------------------------------------------------------------------------------------
# SimCLR


def nt_xent(
    z1: jax.Array, z2: jax.Array, *, temperature: float = 0.1, axis_name: str | None = None
) -> jax.Array:
    """SimCLR's NT-Xent loss (Chen et al., ICML 2020, Sec. 2.1, Eq. 1).

    Reference code: CaSSLe ``cassle/losses/simclr.py::simclr_loss_func``.

    With u = n([z1; z2]) (2B rows, L2-normalised here), s_ij = u_i . u_j / temperature and pi(i)
    the row of the other view of the same image (pi(i) = i + B mod 2B):

      L = -(1 / 2B) sum_{i=1}^{2B} log( exp(s_{i,pi(i)}) / sum_{j != i} exp(s_ij) )

    i.e. the mean over all 2B rows of both views. The default temperature is the code default
    (0.1); CaSSLe's CIFAR scripts pass 0.2.

    Args:
      z1: [B, D] projections of the first view (any float dtype).
      z2: [B, D] projections of the second view, row i the same image as ``z1[i]``.
      temperature: softmax temperature tau > 0.
      axis_name: mesh axis that splits the batch, when called inside ``jax.shard_map``; each
        device scores its local rows against the gathered rows of all devices.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("nt_xent", z1=z1, z2=z2)
    _check_positive("nt_xent", temperature=temperature)
    b = z1.shape[0]
    _check_min_batch("nt_xent", b, 2, axis_name)
    u = l2_normalize(_as_float(jnp.concatenate([z1, z2], axis=0)))  # [2b, D], local rows
    return -_batch_mean(_positive_log_prob(u, temperature, axis_name), axis_name)


def _positive_log_prob(
    u: jax.Array, temperature: float | jax.Array, axis_name: str | None
) -> jax.Array:
    """NT-Xent's log softmax at the positive, one per row of u = n([z1; z2]) [2b, D]: over the
    2N - 1 other rows of the global batch, the positive the same image's row of the other view."""
    b = u.shape[0] // 2
    # [2N, D]; under shard_map device d's block of columns is [its view-1 rows; its view-2 rows].
    columns, offset = _gathered_rows(u, axis_name)
    logits = u @ columns.T / temperature  # [2b, 2N]
    rows = jnp.arange(2 * b)
    self_column = offset + rows
    positive_column = offset + (rows + b) % (2 * b)
    is_self = jnp.arange(columns.shape[0])[None, :] == self_column[:, None]
    log_prob = jax.nn.log_softmax(jnp.where(is_self, -jnp.inf, logits), axis=-1)
    return jnp.take_along_axis(log_prob, positive_column[:, None], axis=-1)[:, 0]


# ---------------------------------------------------------------------------------------------
# MoCoV2+


def info_nce(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    *,
    temperature: float = 0.2,
    axis_name: str | None = None,
) -> jax.Array:
    """MoCo's InfoNCE loss against a queue of negative keys (He et al., CVPR 2020, Eq. 1).

    One direction of the symmetric MoCoV2+ loss; reference code: CaSSLe ``cassle/losses/moco.py``.

    q, k and the queue rows are L2-normalised here (idempotent for the already normalised MoCo
    embeddings); k and the queue pass through ``stop_gradient``:

      l(q, k, Q) = -(1/B) sum_i log( exp(q_i . k_i / tau) /
                                     (exp(q_i . k_i / tau) + sum_{n in Q} exp(q_i . n / tau)) )

    i.e. the mean over the batch of a cross-entropy whose target is the positive key. MoCoV2+
    averages the two directions: (l(q1, k2, Q2) + l(q2, k1, Q1)) / 2.

    Args:
      q: [B, D] queries (student side).
      k: [B, D] keys of the other view from the momentum encoder, row i the positive of ``q[i]``.
      queue: [K, D] past keys, one per row (the same on every device).
      temperature: softmax temperature tau > 0 (0.2 in MoCo v2, Chen et al., arXiv:2003.04297,
        and in CaSSLe's MoCoV2+ scripts; the default of CaSSLe's and solo-learn's code is 0.1).
      axis_name: mesh axis that splits q and k inside ``jax.shard_map``; only the batch mean is
        reduced over it, the negatives are the queue alone.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("info_nce", q=q, k=k)
    if jnp.ndim(queue) != 2 or jnp.shape(queue)[1] != q.shape[1]:
        raise ValueError(
            f"info_nce: queue must be [K, D] with D = {q.shape[1]} (one key per row), got shape "
            f"{jnp.shape(queue)}; transpose a [D, K] queue"
        )
    _check_positive("info_nce", temperature=temperature)
    q = l2_normalize(_as_float(q))
    k = lax.stop_gradient(l2_normalize(_as_float(k)))
    queue = lax.stop_gradient(l2_normalize(_as_float(queue)))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)  # [B, 1]
    negative = q @ queue.T  # [B, K]
    log_prob = jax.nn.log_softmax(jnp.concatenate([positive, negative], axis=-1) / temperature)
    return -_batch_mean(log_prob[:, 0], axis_name)


# ---------------------------------------------------------------------------------------------
# BYOL and SimSiam


def _mean_cosine(fn: str, p: jax.Array, z: jax.Array, axis_name: str | None) -> jax.Array:
    """mean_i cos(p_i, sg(z_i)) over the global batch."""
    _check_embeddings(fn, p=p, z=z)
    p = l2_normalize(_as_float(p))
    z = lax.stop_gradient(l2_normalize(_as_float(z)))
    return _batch_mean(jnp.sum(p * z, axis=-1), axis_name)


def byol_loss(p: jax.Array, z: jax.Array, *, axis_name: str | None = None) -> jax.Array:
    """BYOL's regression loss, one direction (Grill et al., NeurIPS 2020, Sec. 3.1).

    Reference code: CaSSLe ``cassle/losses/byol.py``.

      L = 2 - 2 mean_i cos(p_i, sg(z_i)),   cos(a, b) = n(a) . n(b)

    Both inputs are L2-normalised here; the target z passes through ``stop_gradient``. BYOL *sums*
    the two directions: byol_loss(p1, z2) + byol_loss(p2, z1).

    Args:
      p: [B, D] online predictions of one view.
      z: [B, D] target-network projections of the other view.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [0, 4].
    """
    return 2.0 - 2.0 * _mean_cosine("byol_loss", p, z, axis_name)


def simsiam_loss(p: jax.Array, z: jax.Array, *, axis_name: str | None = None) -> jax.Array:
    """SimSiam's negative cosine similarity (solo-learn ``simsiam_loss_func``, one direction).

      L = -mean_i cos(p_i, sg(z_i))

    Both inputs are L2-normalised here; z passes through ``stop_gradient``. SimSiam averages the two
    directions: (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2.

    Args:
      p: [B, D] predictor outputs of one view.
      z: [B, D] projections of the other view.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [-1, 1].
    """
    return -_mean_cosine("simsiam_loss", p, z, axis_name)


# ---------------------------------------------------------------------------------------------
# Barlow Twins and VICReg


def _off_diagonal_square_sum(m: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(jnp.eye(m.shape[0], dtype=bool), 0.0, m * m))


def barlow_twins_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    lambd: float = 5e-3,
    scale: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al., ICML 2021, Eqs. 1-2).

    Reference code: CaSSLe ``cassle/losses/barlow.py``.

    Each view is standardised per feature over the batch, as the reference's parameter-free
    ``BatchNorm1d(affine=False)`` in training mode: z-hat = (z - mean) / sqrt(var + 1e-5), with the
    biased variance. Then C = z-hat1^T z-hat2 / N (D x D, averaged over the batch) and

      L = scale * [ sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 ]

    The reference's code default is scale 0.025; every CaSSLe CIFAR script sets 0.1, the default
    here. With ``axis_name`` the standardisation statistics and C both cover the global batch, as
    the global call. (CaSSLe standardises each device's rows with that device's statistics before
    averaging C over devices; that variant is not provided.)

    Args:
      z1: [N, D] projections of the first view.
      z2: [N, D] projections of the second view, row i the same image as ``z1[i]``.
      lambd: weight of the off-diagonal (redundancy) term.
      scale: overall factor (``scale_loss`` in the reference).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("barlow_twins_loss", z1=z1, z2=z2)
    _check_min_batch("barlow_twins_loss", z1.shape[0], 2, axis_name)

    def standardise(z):
        z = _as_float(z)
        centred = z - _batch_mean(z, axis_name)
        return centred * lax.rsqrt(_batch_mean(centred * centred, axis_name) + 1e-5)

    z1, z2 = standardise(z1), standardise(z2)
    n = z1.shape[0] * _axis_size(axis_name)
    c = _batch_product(z1, z2, axis_name) / n
    on_diagonal = jnp.sum((1.0 - jnp.diagonal(c)) ** 2)
    return scale * (on_diagonal + lambd * _off_diagonal_square_sum(c))


def vicreg_terms(
    z1: jax.Array, z2: jax.Array, *, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """VICReg's three unweighted terms (Bardes et al., ICLR 2022, Sec. 3, Eqs. 1-6), which
    ``vicreg_loss`` weighs and sums; for logging them (collapse shows in ``variance``).

    Reference code: CaSSLe ``cassle/losses/vicreg.py`` (``invariance_loss``, ``variance_loss``,
    ``covariance_loss``).

    No normalisation. With N rows, D features, Var and Cov the unbiased (1/(N-1)) estimators on
    features centred over the batch:

      invariance = (1 / ND) sum_{n,d} (z1_nd - z2_nd)^2
      variance   = sum_{v=1,2} (1/D) sum_d ReLU(1 - sqrt(Var(z^v_d) + 1e-4))
      covariance = sum_{v=1,2} (1/D) sum_{i != j} Cov(z^v)_ij^2

    Args:
      z1: [N, D] projections of the first view.
      z2: [N, D] projections of the second view, row i the same image as ``z1[i]``.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; means, variances and
        covariances then cover the global batch (CaSSLe uses per-device statistics).

    Returns:
      ``{"invariance", "variance", "covariance"}``: three scalar float32 arrays.
    """
    return _vicreg_terms("vicreg_terms", z1, z2, axis_name)


def _vicreg_terms(
    fn: str, z1: jax.Array, z2: jax.Array, axis_name: str | None
) -> dict[str, jax.Array]:
    _check_embeddings(fn, z1=z1, z2=z2)
    _check_min_batch(fn, z1.shape[0], 2, axis_name)
    z1, z2 = _as_float(z1), _as_float(z2)
    n, d = z1.shape[0] * _axis_size(axis_name), z1.shape[1]
    invariance = jnp.mean(_batch_mean((z1 - z2) ** 2, axis_name))

    def variance_and_covariance(z):
        centred = z - _batch_mean(z, axis_name)
        variance = _batch_sum(centred * centred, axis_name) / (n - 1)
        covariance = _batch_product(centred, centred, axis_name) / (n - 1)
        return (
            jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(variance + 1e-4))),
            _off_diagonal_square_sum(covariance) / d,
        )

    var1, cov1 = variance_and_covariance(z1)
    var2, cov2 = variance_and_covariance(z2)
    return {"invariance": invariance, "variance": var1 + var2, "covariance": cov1 + cov2}


def vicreg_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """VICReg's variance-invariance-covariance loss (Bardes et al., ICLR 2022, Sec. 3, Eq. 6).

    Reference code: CaSSLe ``cassle/losses/vicreg.py::vicreg_loss_func``.

      L = sim_weight * invariance + var_weight * variance + cov_weight * covariance

    with the terms of ``vicreg_terms`` (which see for their formulas); to log the terms, call
    ``vicreg_terms`` and weigh them as above, which computes the same loss once.

    Args:
      z1: [N, D] projections of the first view.
      z2: [N, D] projections of the second view, row i the same image as ``z1[i]``.
      sim_weight, var_weight, cov_weight: term weights (25, 25, 1 in the reference).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    terms = _vicreg_terms("vicreg_loss", z1, z2, axis_name)
    return (
        sim_weight * terms["invariance"]
        + var_weight * terms["variance"]
        + cov_weight * terms["covariance"]
    )


# ---------------------------------------------------------------------------------------------
# SwAV


def sinkhorn(
    scores: jax.Array, *, epsilon: float = 0.05, num_iters: int = 3, axis_name: str | None = None
) -> jax.Array:
    """SwAV's Sinkhorn-Knopp codes (Caron et al., NeurIPS 2020, Sec. 3.1).

    Reference code: solo-learn ``solo/utils/sinkhorn_knopp.py`` (CaSSLe's copy:
    ``cassle/utils/sinkhorn_knopp.py``).

    With B samples (global) and K prototypes, Q = exp(scores / epsilon) (B x K), divided by its total;
    then ``num_iters`` times: divide each prototype column by K times its sum over all samples, then
    each sample row by B times its sum. The result, times B, gives every sample a code that sums to 1
    over the prototypes, and (approximately, exactly in the limit) every prototype a total mass of
    B / K. The global maximum score is subtracted before the exponential, which leaves the result
    unchanged and avoids overflow. No gradient flows (``stop_gradient``).

    Args:
      scores: [B, K] sample-to-prototype scores (cosines between normalised embeddings and
        normalised prototypes in SwAV). Rows of a feature queue may be appended to the batch.
      epsilon: entropic regularisation > 0.
      num_iters: number of column-then-row normalisation rounds, >= 1. A Python int unrolls into
        a fixed loop; a traced integer (``jax.jit(sinkhorn)(scores, num_iters=3)`` traces keyword
        arguments) runs a loop of that many rounds and, like traced temperatures, is not checked.
      axis_name: mesh axis that splits the samples inside ``jax.shard_map``; prototype sums, the
        total and B then cover all devices, and each device returns the codes of its own rows.

    Returns:
      [B, K] float32 codes (assignments), each row summing to 1.
    """
    if jnp.ndim(scores) != 2:
        raise ValueError(
            f"sinkhorn: scores must be a 2-D [batch, prototypes] array, got shape {jnp.shape(scores)}"
        )
    _check_positive("sinkhorn", epsilon=epsilon)
    _check_num_iters("sinkhorn", num_iters)
    logits = lax.stop_gradient(_as_float(scores)) / epsilon
    n, k = scores.shape[0] * _axis_size(axis_name), scores.shape[1]
    peak = jnp.max(logits)
    if axis_name is not None:
        peak = lax.pmax(peak, axis_name)
    q = jnp.exp(logits - peak)
    q = q / jnp.sum(_batch_sum(q, axis_name))

    def normalise(_, q):
        q = q / (_batch_sum(q, axis_name) * k)  # every prototype's mass 1/K
        return q / (jnp.sum(q, axis=1, keepdims=True) * n)  # every sample's mass 1/B

    return lax.fori_loop(0, num_iters, normalise, q) * n


def swav_loss(
    scores1: jax.Array,
    scores2: jax.Array,
    *,
    temperature: float = 0.1,
    epsilon: float = 0.05,
    num_iters: int = 3,
    queue_scores1: jax.Array | None = None,
    queue_scores2: jax.Array | None = None,
    axis_name: str | None = None,
) -> jax.Array:
    """SwAV's swapped-prediction loss (Caron et al., NeurIPS 2020, Sec. 3.1).

    Reference code: solo-learn ``solo/losses/swav.py`` (CaSSLe's copy: ``cassle/losses/swav.py``).

    Codes q^v = sinkhorn(s^v) (no gradient), then each view predicts the other view's codes:

      L = -(1/2) sum_{(a,b) in {(1,2),(2,1)}} mean_i sum_k q^a_ik log softmax(s^b_i / tau)_k

    The scores are used as given (SwAV's are cosines: normalised embeddings against normalised
    prototypes). With queue scores (past embeddings of view v scored against the current
    prototypes), Sinkhorn runs on the batch and queue rows together and only the batch rows' codes
    enter the loss, as in solo-learn.

    Args:
      scores1: [B, K] prototype scores of the first view.
      scores2: [B, K] prototype scores of the second view, row i the same image as ``scores1[i]``.
      temperature: softmax temperature tau > 0 of the predictions.
      epsilon, num_iters: Sinkhorn parameters (see ``sinkhorn``).
      queue_scores1, queue_scores2: optional [Q, K] scores of queued embeddings of each view (both
        or neither). Inside ``shard_map`` each device passes its own queue rows, as SwAV's per-GPU
        queues.
      axis_name: mesh axis that splits the batch (and queues) inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("swav_loss", scores1=scores1, scores2=scores2)
    _check_positive("swav_loss", temperature=temperature)
    if (queue_scores1 is None) != (queue_scores2 is None):
        raise ValueError("swav_loss: pass both queue_scores1 and queue_scores2, or neither")
    b = scores1.shape[0]

    def codes(scores, queue_scores):
        if queue_scores is not None:
            _check_embeddings("swav_loss", queue_scores=queue_scores)
            if queue_scores.shape[1] != scores.shape[1]:
                raise ValueError(
                    f"swav_loss: queue scores must have {scores.shape[1]} prototype columns like the "
                    f"batch scores, got shape {queue_scores.shape}"
                )
            scores = jnp.concatenate([scores, queue_scores], axis=0)
        return sinkhorn(scores, epsilon=epsilon, num_iters=num_iters, axis_name=axis_name)[:b]

    def cross_entropy(targets, scores):
        log_prob = jax.nn.log_softmax(_as_float(scores) / temperature, axis=-1)
        return -_batch_mean(jnp.sum(targets * log_prob, axis=-1), axis_name)

    codes1, codes2 = codes(scores1, queue_scores1), codes(scores2, queue_scores2)
    return 0.5 * (cross_entropy(codes1, scores2) + cross_entropy(codes2, scores1))


# ---------------------------------------------------------------------------------------------
# ISD and DINO


def similarity_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.01,
    axis_name: str | None = None,
) -> jax.Array:
    """ISD's similarity distillation KL(P_t || P_s) (Tejankar et al., ICCV 2021).

    Reference code: ``UMBCvision/ISD`` ``train_isd_plus.py``.

    With s_ij and t_ij the student's and teacher's similarities to anchor j of the bank (for ISD,
    dot products of L2-normalised embeddings with the L2-normalised anchors, before temperature):

      P_t(i, .) = softmax_j(t_ij / tau_t),   P_s(i, .) = softmax_j(s_ij / tau_s)
      L = (1/B) sum_i sum_j P_t(i, j) [log P_t(i, j) - log P_s(i, j)]   ("batchmean")

    The teacher side passes through ``stop_gradient``. Defaults are ``train_isd_plus.py``'s
    (tau_t 0.01, tau_s 0.1); ``train_isd.py`` (the README's ResNet-18 run) uses 0.02 for both.

    Args:
      student_logits: [B, K] student similarities to the K anchors.
      teacher_logits: [B, K] teacher similarities to the same anchors.
      student_temperature, teacher_temperature: temperatures > 0.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map`` (the bank is the same on
        every device).

    Returns:
      Scalar float32 loss (>= 0).
    """
    _check_embeddings("similarity_kl", student_logits=student_logits, teacher_logits=teacher_logits)
    _check_positive(
        "similarity_kl",
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
    )
    kl = similarity_kl_rows(
        student_logits, teacher_logits, student_temperature, teacher_temperature
    )
    return _batch_mean(kl, axis_name)


# A logit far below any other, for anchors left out of a softmax (finite, so that 0 * it stays 0).
_MASKED_LOGIT = -1e30


def similarity_kl_rows(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    student_temperature: float,
    teacher_temperature: float,
    anchor_valid: jax.Array | None = None,
) -> jax.Array:
    """Per row i, KL(softmax_j(t_ij / tau_t) || softmax_j(s_ij / tau_s)) over the anchors j with
    ``anchor_valid`` (bool [K]; None: all); float32 [B]. The teacher side passes through
    ``stop_gradient``. The core of ``similarity_kl`` and of ``relational_distillation``."""

    def log_softmax(logits, temperature):
        z = _as_float(logits) / temperature
        if anchor_valid is not None:
            z = jnp.where(anchor_valid[None, :], z, _MASKED_LOGIT)
        return jax.nn.log_softmax(z, axis=-1)

    log_p_s = log_softmax(student_logits, student_temperature)
    log_p_t = lax.stop_gradient(log_softmax(teacher_logits, teacher_temperature))
    terms = jnp.exp(log_p_t) * (log_p_t - log_p_s)
    if anchor_valid is not None:
        terms = jnp.where(anchor_valid[None, :], terms, 0.0)
    return jnp.sum(terms, axis=-1)


def dino_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    center: jax.Array,
    *,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    axis_name: str | None = None,
) -> jax.Array:
    """DINO's cross-entropy between a centred, sharpened teacher and the student (one view pair).

    Following ``cassle/losses/dino.py`` for one (teacher view, student view) pair:

      L = -(1/B) sum_i sum_k softmax((t_i - c) / tau_t)_k log softmax(s_i / tau_s)_k

    The teacher side passes through ``stop_gradient``. DINO averages over the pairs of different
    views. The centre is state: update it outside with c <- m c + (1 - m) mean_i t_i (over the
    teacher logits of all views and the global batch).

    Args:
      student_logits: [B, P] student head outputs of one view.
      teacher_logits: [B, P] teacher head outputs of another view.
      center: [P] (or [1, P]) running centre of the teacher outputs.
      student_temperature, teacher_temperature: temperatures > 0 (the teacher's is often warmed up
        by a schedule; pass the current value).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("dino_loss", student_logits=student_logits, teacher_logits=teacher_logits)
    p = student_logits.shape[1]
    if jnp.shape(center) not in ((p,), (1, p)):
        raise ValueError(
            f"dino_loss: center must have shape ({p},) or (1, {p}) to match the logits, got "
            f"{jnp.shape(center)}"
        )
    _check_positive(
        "dino_loss",
        student_temperature=student_temperature,
        teacher_temperature=teacher_temperature,
    )
    teacher = lax.stop_gradient(
        jax.nn.softmax(
            (_as_float(teacher_logits) - _as_float(center)) / teacher_temperature, axis=-1
        )
    )
    log_student = jax.nn.log_softmax(_as_float(student_logits) / student_temperature, axis=-1)
    return -_batch_mean(jnp.sum(teacher * log_student, axis=-1), axis_name)


# ---------------------------------------------------------------------------------------------
# DCL and DCLW


def _global_softmax(logits: jax.Array, axis_name: str | None) -> jax.Array:
    """softmax of the [B] ``logits`` over the global batch (this call's rows of it)."""
    peak = jnp.max(logits)
    if axis_name is not None:
        peak = lax.pmax(peak, axis_name)
    e = jnp.exp(logits - peak)
    return e / _batch_sum(e, axis_name)


def _dcl(
    fn: str, z1: jax.Array, z2: jax.Array, temperature: float, sigma: float | None, axis_name
) -> jax.Array:
    _check_embeddings(fn, z1=z1, z2=z2)
    _check_positive(fn, temperature=temperature)
    if sigma is not None:
        _check_positive(fn, sigma=sigma)
    b = z1.shape[0]
    _check_min_batch(fn, b, 2, axis_name)
    u1, u2 = l2_normalize(_as_float(z1)), l2_normalize(_as_float(z2))
    positive = jnp.sum(u1 * u2, axis=-1) / temperature  # [b]
    if sigma is None:
        weight = 1.0
    else:
        n = b * _axis_size(axis_name)
        cosine = lax.stop_gradient(jnp.sum(u1 * u2, axis=-1))
        weight = 2.0 - n * _global_softmax(cosine / sigma, axis_name)
    columns1, offset = _gathered_rows(u1, axis_name)
    columns2, _ = _gathered_rows(u2, axis_name)
    is_self = jnp.arange(columns1.shape[0])[None, :] == (offset + jnp.arange(b))[:, None]

    def one_direction(u, same_view, other_view):
        # Every other image of either view; the image's own two rows are left out.
        negatives = jnp.concatenate([u @ same_view.T, u @ other_view.T], axis=-1) / temperature
        negatives = jnp.where(jnp.concatenate([is_self, is_self], axis=-1), -jnp.inf, negatives)
        return -weight * positive + jax.nn.logsumexp(negatives, axis=-1)

    rows = one_direction(u1, columns1, columns2) + one_direction(u2, columns2, columns1)
    return 0.5 * _batch_mean(rows, axis_name)


def dcl_loss(
    z1: jax.Array, z2: jax.Array, *, temperature: float = 0.1, axis_name: str | None = None
) -> jax.Array:
    """Decoupled contrastive loss, DCL (Yeh et al., ECCV 2022, Sec. 3;
    arXiv:2110.06848, Eq. 6 as lightly cites it, with w = 1).

    Reference code: lightly ``lightly/loss/dcl_loss.py::DCLLoss``.

    NT-Xent without the positive pair in the denominator. With u^v = n(z^v) (L2-normalised here),
    N the global batch and s(a, b) = a . b / tau:

      l^(1)_i = -s(u^1_i, u^2_i) + log sum_{j != i} [exp s(u^1_i, u^1_j) + exp s(u^1_i, u^2_j)]
      L = (1 / 2N) sum_i (l^(1)_i + l^(2)_i)

    with l^(2) the same with the views swapped: 2N - 2 negatives per row, both views of every
    other image.

    Args:
      z1: [B, D] projections of the first view (any float dtype).
      z2: [B, D] projections of the second view, row i the same image as ``z1[i]``.
      temperature: tau > 0 (0.1, lightly's default and the paper's SimCLR setting).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; negatives are gathered
        from every device.

    Returns:
      Scalar float32 loss.
    """
    return _dcl("dcl_loss", z1, z2, temperature, None, axis_name)


def dclw_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float = 0.1,
    sigma: float = 0.5,
    axis_name: str | None = None,
) -> jax.Array:
    """Weighted decoupled contrastive loss, DCLW (Yeh et al., ECCV 2022, Sec. 3;
    arXiv:2110.06848, Eq. 6 as lightly cites it).

    Reference code: lightly ``lightly/loss/dcl_loss.py::DCLWLoss`` (``negative_mises_fisher_weights``).

    ``dcl_loss`` with the positive term of image i weighted by the paper's negative von
    Mises-Fisher weighting function w, computed without gradient over the global batch of N images:

      w_i = 2 - N exp(u^1_i . u^2_i / sigma) / sum_k exp(u^1_k . u^2_k / sigma)
      l^(1)_i = -w_i s(u^1_i, u^2_i) + log sum_{j != i} [exp s(u^1_i, u^1_j) + exp s(u^1_i, u^2_j)]

    so that the weights average 1 and the harder positive pairs (lower cosine) weigh more. Inside
    ``shard_map`` with ``axis_name`` the softmax and N cover every device (lightly's
    ``gather_distributed`` weighs each GPU's rows among its own).

    Args:
      z1, z2: [B, D] projections of the two views, row i the same image.
      temperature: tau > 0 of the similarities.
      sigma: sigma > 0 of the weights (0.5, the paper's and lightly's).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    return _dcl("dclw_loss", z1, z2, temperature, sigma, axis_name)


# ---------------------------------------------------------------------------------------------
# TiCo


def _tico_covariance(
    fn: str, z1: jax.Array, covariance: jax.Array, beta: float, axis_name: str | None
) -> jax.Array:
    _check_embeddings(fn, z1=z1)
    d = z1.shape[1]
    if jnp.shape(covariance) != (d, d):
        raise ValueError(
            f"{fn}: covariance must be [{d}, {d}] for {d}-dimensional embeddings, got shape "
            f"{jnp.shape(covariance)}; start it at jnp.zeros(({d}, {d}))"
        )
    _check_min_batch(fn, z1.shape[0], 2, axis_name)
    u1 = l2_normalize(_as_float(z1))
    n = z1.shape[0] * _axis_size(axis_name)
    batch_covariance = _batch_product(u1, u1, axis_name) / n
    return lax.stop_gradient(beta * _as_float(covariance) + (1.0 - beta) * batch_covariance)


def tico_covariance(
    z1: jax.Array, covariance: jax.Array, *, beta: float = 0.9, axis_name: str | None = None
) -> jax.Array:
    """TiCo's running covariance after this batch (Zhu et al., 2022, arXiv:2206.10698, Sec. 3):
    the state ``tico_loss`` uses and the caller carries to the next step.

    Reference code: lightly ``lightly/loss/tico_loss.py::TiCoLoss`` (its ``self.C`` update).

    With u^1 = n(z^1) (L2-normalised here) and N the global batch,

      C' = beta C + (1 - beta) sg(u^1^T u^1 / N)

    No gradient flows (the reference detaches both parts). Start C at zeros, as the reference.

    Args:
      z1: [B, D] projections of the first view, as passed to ``tico_loss``.
      covariance: [D, D] running covariance C from the previous step (the same on every device).
      beta: EMA coefficient in [0, 1] (0.9, the paper's and lightly's).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      C', [D, D] float32.
    """
    return _tico_covariance("tico_covariance", z1, covariance, beta, axis_name)


def tico_loss(
    z1: jax.Array,
    z2: jax.Array,
    covariance: jax.Array,
    *,
    beta: float = 0.9,
    rho: float = 8.0,
    axis_name: str | None = None,
) -> jax.Array:
    """TiCo's transformation-invariance and covariance-contrast loss (Zhu et al., 2022,
    arXiv:2206.10698, Sec. 3).

    Reference code: lightly ``lightly/loss/tico_loss.py::TiCoLoss``.

    With u^v = n(z^v) (L2-normalised here), N the global batch, C the running covariance of the
    previous step and C' = ``tico_covariance(z1, C, beta=beta)`` the one updated with this batch:

      L = 1 - (1/N) sum_i u^1_i . u^2_i + rho (1/N) sum_i u^1_i^T C' u^1_i

    No gradient flows into C'; u^2 is not detached (the reference does not). The function is
    pure: pass C' = ``tico_covariance(z1, C, beta=beta)`` on to the next step (under ``jit`` the
    shared product is computed once); not passing it on is the reference's
    ``update_covariance_matrix=False``.

    Args:
      z1: [B, D] projections of the first view (the online network's in the paper).
      z2: [B, D] projections of the second view, row i the same image as ``z1[i]``.
      covariance: [D, D] running covariance C from the previous step (the same on every device).
      beta: EMA coefficient of C in [0, 1] (0.9, the paper's and lightly's).
      rho: weight of the covariance-contrast term (8.0, the paper's and lightly's).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; C' and the means then
        cover the global batch (as lightly's ``gather_distributed``).

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("tico_loss", z1=z1, z2=z2)
    new_covariance = _tico_covariance("tico_loss", z1, covariance, beta, axis_name)
    u1, u2 = l2_normalize(_as_float(z1)), l2_normalize(_as_float(z2))
    invariance = 1.0 - _batch_mean(jnp.sum(u1 * u2, axis=-1), axis_name)
    contrast = _batch_mean(jnp.sum((u1 @ new_covariance) * u1, axis=-1), axis_name)
    return invariance + rho * contrast


# ---------------------------------------------------------------------------------------------
# NNCLR


def nearest_neighbours(z: jax.Array, support: jax.Array) -> tuple[jax.Array, jax.Array]:
    """NNCLR's nearest-neighbour lookup in a support set (Dwibedi et al., ICCV 2021, Sec. 3).

    Reference code: solo-learn ``solo/methods/nnclr.py::NNCLR.find_nn``.

    For each row z_i, the support row with the largest cosine similarity:

      NN(z_i) = Q_{k*},   k* = argmax_k n(z_i) . n(Q_k)

    (solo-learn takes the argmax of z_i . Q_k with rows of z and Q L2-normalised beforehand; the
    cosine is the same.) Ties go to the first such row. The returned rows pass through
    ``stop_gradient``, as the reference's queue is a buffer. Row-wise: nothing reduces over the
    batch, so there is no ``axis_name``; inside ``shard_map`` give every device the whole support.

    Args:
      z: [B, D] projections of one view.
      support: [K, D] support set (NNCLR's queue of past projections).

    Returns:
      ``(neighbours, indices)``: [B, D] the support rows as given (float32), and int32 [B] their
      row indices in ``support`` (for NNCLR's nearest-neighbour accuracy).
    """
    _check_embeddings("nearest_neighbours", z=z)
    if jnp.ndim(support) != 2 or jnp.shape(support)[1] != z.shape[1]:
        raise ValueError(
            f"nearest_neighbours: support must be [K, D] with D = {z.shape[1]} (one row per "
            f"sample), got shape {jnp.shape(support)}"
        )
    support = lax.stop_gradient(_as_float(support))
    similarity = lax.stop_gradient(l2_normalize(_as_float(z))) @ l2_normalize(support).T
    indices = jnp.argmax(similarity, axis=-1).astype(jnp.int32)
    return _take_rows(support, indices), indices


def nnclr_loss(
    neighbours: jax.Array,
    p: jax.Array,
    *,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """NNCLR's contrastive loss, one direction (Dwibedi et al., ICCV 2021, Sec. 3).

    Reference code: solo-learn ``solo/losses/nnclr.py::nnclr_loss_func``.

    The NT-Xent between the nearest neighbours of one view and the predictions of the other, the
    other images' predictions as negatives. With a = n(NN(z^1)), b = n(p^2) (L2-normalised here)
    and N the global batch:

      L = -(1/N) sum_i log( exp(a_i . b_i / tau) / sum_{j=1}^{N} exp(a_i . b_j / tau) )

    NNCLR averages the two directions: (nnclr_loss(NN(z1), p2) + nnclr_loss(NN(z2), p1)) / 2,
    with ``nearest_neighbours`` giving NN(z) from the support set.

    Args:
      neighbours: [B, D] nearest neighbours of the first view's projections in the support set.
      p: [B, D] predictions of the second view, row i the same image.
      temperature: tau > 0 (0.1, the paper's and solo-learn's).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; the predictions are
        gathered from every device, as solo-learn's ``gather(p)``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("nnclr_loss", neighbours=neighbours, p=p)
    _check_positive("nnclr_loss", temperature=temperature)
    a, b = l2_normalize(_as_float(neighbours)), l2_normalize(_as_float(p))
    columns, offset = _gathered_rows(b, axis_name)
    log_prob = jax.nn.log_softmax(a @ columns.T / temperature, axis=-1)  # [b, N]
    positive = offset + jnp.arange(a.shape[0])
    return -_batch_mean(jnp.take_along_axis(log_prob, positive[:, None], axis=-1)[:, 0], axis_name)


# ---------------------------------------------------------------------------------------------
# ReSSL


def ressl_loss(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    *,
    temperature_q: float = 0.1,
    temperature_k: float = 0.04,
    axis_name: str | None = None,
) -> jax.Array:
    """ReSSL's relational loss (Zheng et al., NeurIPS 2021, Sec. 3).

    Reference code: solo-learn ``solo/losses/ressl.py::ressl_loss_func``.

    The cross-entropy between the key's and the query's similarity distributions over a queue of
    past keys. q, k and the queue rows are L2-normalised here (solo-learn's ReSSL normalises its
    projections before the loss, ``solo/methods/ressl.py``); k and the queue pass through
    ``stop_gradient``:

      L = -(1/B) sum_i sum_j softmax_j(k_i . Q_j / tau_k) log softmax_j(q_i . Q_j / tau_q)

    Args:
      q: [B, D] online projections of the strongly augmented view.
      k: [B, D] momentum-encoder projections of the weakly augmented view, row i the same image.
      queue: [K, D] past keys, one per row (the same on every device).
      temperature_q: tau_q > 0 of the query (0.1, the paper's and solo-learn's).
      temperature_k: tau_k > 0 of the key, sharper (0.04, the paper's and solo-learn's).
      axis_name: mesh axis that splits q and k inside ``jax.shard_map``; only the batch mean is
        reduced over it.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("ressl_loss", q=q, k=k)
    if jnp.ndim(queue) != 2 or jnp.shape(queue)[1] != q.shape[1]:
        raise ValueError(
            f"ressl_loss: queue must be [K, D] with D = {q.shape[1]} (one key per row), got "
            f"shape {jnp.shape(queue)}"
        )
    _check_positive("ressl_loss", temperature_q=temperature_q, temperature_k=temperature_k)
    queue = lax.stop_gradient(l2_normalize(_as_float(queue)))
    q = l2_normalize(_as_float(q))
    k = lax.stop_gradient(l2_normalize(_as_float(k)))
    target = jax.nn.softmax(k @ queue.T / temperature_k, axis=-1)
    log_prob = jax.nn.log_softmax(q @ queue.T / temperature_q, axis=-1)
    return -_batch_mean(jnp.sum(target * log_prob, axis=-1), axis_name)


# ---------------------------------------------------------------------------------------------
# W-MSE


def whiten(
    x: jax.Array,
    *,
    whitening_size: int | None = None,
    eps: float = 0.0,
    axis_name: str | None = None,
) -> jax.Array:
    """W-MSE's Cholesky whitening of each sub-batch (Ermolov et al., ICML 2021, Sec. 3).

    Reference code: solo-learn ``solo/utils/whitening.py::Whitening2d`` (in training mode; the
    same as lightly ``lightly/loss/wmse_loss.py::Whitening2d``).

    The global batch of N rows is cut into consecutive sub-batches of w = ``whitening_size`` rows
    (rows 0..w-1, w..2w-1, ...; N a multiple of w). Within each, with mean mu and the unbiased
    covariance Sigma = (x - mu)^T (x - mu) / (w - 1) (D x D),

      Sigma_eps = (1 - eps) Sigma + eps I = L L^T   (Cholesky, L lower-triangular)
      whiten(x)_n = L^{-1} (x_n - mu)

    so that each sub-batch's output has identity covariance. Gradients flow through mu and L
    (as in the reference). Sigma_eps must be positive definite: w > D, and in practice w >= 2D
    (lightly requires it), or eps > 0.

    The G factorisations and solves run one matrix per LAPACK call (a ``lax.map`` loop), in the
    gradient too. Batched, jaxlib 0.10's CPU kernels (``ParallelBatchMap``,
    ``jaxlib/cpu/lapack_kernels.cc``) split the batch over XLA's intra-op thread pool and wait for
    it from a thread of that pool: with two such calls at once (W-MSE's two views) on a pool of
    2 threads, both threads wait for tasks that no thread is left to run, and the program never
    returns (seen with ``jit(value_and_grad(wmse_loss))``, [512, 64] views, w = 256, 2 CPUs under
    load: 5 hangs in 20 runs; none in 25 with the loop). Other batched linear algebra in the
    same program can still meet it. The same pool re-entrancy through FFTs is reported avoided
    by XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
    (https://github.com/PyAutoLabs/PyAutoFit/issues/1528); not checked here for LAPACK.

    Args:
      x: [B, D] projections (any float dtype).
      whitening_size: rows w per sub-batch; None: the whole global batch is one sub-batch.
        solo-learn's default is 256, its CIFAR script 128 with D = 64. To draw sub-batches at
        random, as the reference's ``torch.randperm``, permute the rows before the call.
      eps: shrinkage towards I in [0, 1) (0, the reference's default).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; a sub-batch may then
        span devices, and its statistics are reduced over the axis.

    Returns:
      [B, D] float32 whitened rows, in the input's order.
    """
    _check_embeddings("whiten", x=x)
    b, d = x.shape
    n = b * _axis_size(axis_name)
    w = n if whitening_size is None else whitening_size
    if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 2 or n % w:
        raise ValueError(
            f"whiten: whitening_size must be an integer >= 2 that divides the global batch of {n} "
            f"rows, got {whitening_size!r}"
        )
    x = _as_float(x)
    groups = n // w
    # One-hot sub-batch of each of this call's rows: [b, G].
    first_row = 0 if axis_name is None else lax.axis_index(axis_name) * b
    member = jax.nn.one_hot((first_row + jnp.arange(b)) // w, groups, dtype=x.dtype)
    mean = _batch_product(member, x, axis_name) / w  # [G, D]
    centred = x - member @ mean
    # Sigma_g = sum_n member_ng centred_n centred_n^T, as one product over the batch.
    spread = (member[:, :, None] * centred[:, None, :]).reshape(b, groups * d)
    sigma = _batch_product(spread, centred, axis_name).reshape(groups, d, d) / (w - 1)
    sigma = (1.0 - eps) * sigma + eps * jnp.eye(d, dtype=x.dtype)

    def inverse_cholesky(s):
        lower = jnp.linalg.cholesky(s)
        return jax.scipy.linalg.solve_triangular(lower, jnp.eye(d, dtype=x.dtype), lower=True)

    # One [D, D] matrix per LAPACK call, not a batch of G: a batch can deadlock (docstring).
    inverse = lax.map(inverse_cholesky, sigma)  # [G, D, D]
    row_inverse = (member @ inverse.reshape(groups, d * d)).reshape(b, d, d)
    return jnp.einsum("nij,nj->ni", row_inverse, centred)


def wmse_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    whitening_size: int | None = None,
    eps: float = 0.0,
    axis_name: str | None = None,
) -> jax.Array:
    """W-MSE's loss for one pair of views (Ermolov et al., ICML 2021, Sec. 3).

    Reference code: solo-learn ``solo/losses/wmse.py::wmse_loss_func`` after
    ``solo/methods/wmse.py``'s whitening (``solo/utils/whitening.py``).

    Each view is whitened on its own, sub-batch by sub-batch (``whiten``), then

      L = (1/N) sum_i || n(whiten(z1)_i) - n(whiten(z2)_i) ||^2
        = 2 - 2 (1/N) sum_i cos(whiten(z1)_i, whiten(z2)_i)

    Both views receive the gradient, as the paper's and lightly's ``norm_mse_loss`` and
    solo-learn's ``simplified=False``; solo-learn's default ``simplified=True`` has the same value
    but stops the gradient into the second view. For V views average over the V(V-1)/2 pairs; for
    solo-learn's ``whitening_iters`` > 1 average over calls with differently permuted rows.

    Args:
      z1: [B, D] projections of the first view.
      z2: [B, D] projections of the second view, row i the same image as ``z1[i]``.
      whitening_size, eps: see ``whiten``.
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [0, 4].
    """
    _check_embeddings("wmse_loss", z1=z1, z2=z2)
    w1, w2 = (
        l2_normalize(whiten(z, whitening_size=whitening_size, eps=eps, axis_name=axis_name))
        for z in (z1, z2)
    )
    return 2.0 - 2.0 * _batch_mean(jnp.sum(w1 * w2, axis=-1), axis_name)


# ---------------------------------------------------------------------------------------------
# DeepClusterV2


def deepclusterv2_loss(
    scores: jax.Array,
    assignments: jax.Array,
    *,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> jax.Array:
    """DeepClusterV2's cross-entropy against k-means assignments (Caron et al., NeurIPS 2020:
    the SwAV paper's appendix on DeepCluster-v2).

    Reference code: solo-learn ``solo/losses/deepclusterv2.py::deepclusterv2_loss_func``.

    With s_i the prototype scores of row i (cosines of the normalised projection to the
    normalised prototypes in solo-learn) and a_i its cluster from the k-means run on the memory
    bank (an input here; -1 or any negative value for a row without one):

      L = -(1 / |{i : a_i >= 0}|) sum_{i : a_i >= 0} log softmax(s_i / tau)_{a_i}

    a batch without any assigned row gives 0 (PyTorch's ``ignore_index`` gives NaN). solo-learn
    stacks the views (which share one assignment per image) and averages over the prototype
    heads: average this function over views and heads.

    Args:
      scores: [B, K] prototype scores of one view by one prototype head.
      assignments: int [B] cluster of each row in [0, K), negative for none.
      temperature: tau > 0 (0.1, solo-learn's and SwAV's DeepCluster-v2 setting).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    if jnp.ndim(scores) != 2:
        raise ValueError(
            f"deepclusterv2_loss: scores must be a 2-D [batch, prototypes] array, got shape "
            f"{jnp.shape(scores)}"
        )
    if jnp.shape(assignments) != scores.shape[:1]:
        raise ValueError(
            f"deepclusterv2_loss: assignments must be [{scores.shape[0]}], one cluster per row of "
            f"scores, got shape {jnp.shape(assignments)}"
        )
    _check_positive("deepclusterv2_loss", temperature=temperature)
    log_prob = jax.nn.log_softmax(_as_float(scores) / temperature, axis=-1)
    assigned = assignments >= 0
    target = jnp.where(assigned, assignments, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(log_prob, target[:, None], axis=-1)[:, 0]
    total = _batch_sum(jnp.where(assigned, picked, 0.0), axis_name)
    count = _batch_sum(assigned.astype(log_prob.dtype), axis_name)
    return -total / jnp.maximum(count, 1.0)


# ---------------------------------------------------------------------------------------------
# Alignment and uniformity on the hypersphere


def _alignment(u1: jax.Array, u2: jax.Array, alpha: float, axis_name: str | None) -> jax.Array:
    squared = jnp.sum((u1 - u2) ** 2, axis=-1)
    if alpha == 2:
        return _batch_mean(squared, axis_name)
    # ||.||^alpha with a zero gradient, not NaN, where the two rows are equal.
    positive = squared > 0
    power = jnp.where(positive, jnp.where(positive, squared, 1.0) ** (alpha / 2), 0.0)
    return _batch_mean(power, axis_name)


def _uniformity(u: jax.Array, t: float, axis_name: str | None) -> jax.Array:
    columns, offset = _gathered_rows(u, axis_name)
    n = columns.shape[0]
    # ||u_i - u_j||^2 = 2 - 2 u_i . u_j for unit rows.
    squared = jnp.maximum(2.0 - 2.0 * (u @ columns.T), 0.0)  # [b, N]
    is_self = jnp.arange(n)[None, :] == (offset + jnp.arange(u.shape[0]))[:, None]
    kernel = jnp.sum(jnp.where(is_self, 0.0, jnp.exp(-t * squared)), axis=-1)
    return jnp.log(_batch_sum(kernel, axis_name) / (n * (n - 1)))


def alignment_loss(
    z1: jax.Array, z2: jax.Array, *, alpha: float = 2.0, axis_name: str | None = None
) -> jax.Array:
    """Alignment of positive pairs on the hypersphere (Wang & Isola, ICML 2020, Sec. 4.1, Eq. 4).

    Reference code: ``SsnL/align_uniform`` ``align_uniform/__init__.py::align_loss`` (as lightly
    ``lightly/loss/hypersphere_loss.py::HypersphereLoss.forward``'s ``lalign``).

    With u^v = n(z^v) (L2-normalised here; the reference takes normalised inputs) and N the
    global batch:

      L_align = (1/N) sum_i ||u^1_i - u^2_i||_2^alpha

    Args:
      z1: [B, D] embeddings of the first view.
      z2: [B, D] embeddings of the second view, row i the same image as ``z1[i]``.
      alpha: exponent > 0 (2, the paper's and the reference's).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss in [0, 2^alpha].
    """
    _check_embeddings("alignment_loss", z1=z1, z2=z2)
    _check_positive("alignment_loss", alpha=alpha)
    u1, u2 = l2_normalize(_as_float(z1)), l2_normalize(_as_float(z2))
    return _alignment(u1, u2, alpha, axis_name)


def uniformity_loss(z: jax.Array, *, t: float = 2.0, axis_name: str | None = None) -> jax.Array:
    """Uniformity on the hypersphere (Wang & Isola, ICML 2020, Sec. 4.1, Eq. 5): the log of the
    mean Gaussian potential over the pairs of the batch.

    Reference code: ``SsnL/align_uniform`` ``align_uniform/__init__.py::uniform_loss`` (as lightly
    ``lightly/loss/hypersphere_loss.py``'s ``lunif``).

    With u = n(z) (L2-normalised here) and N the global batch, over the N(N-1)/2 pairs i < j:

      L_uniform = log( (2 / (N(N-1))) sum_{i<j} exp(-t ||u_i - u_j||_2^2) )

    Args:
      z: [B, D] embeddings of one view.
      t: t > 0 of the Gaussian kernel (2, the paper's and the reference's; lightly's default 1).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; the pairs then span
        every device.

    Returns:
      Scalar float32 loss in [-4t, 0].
    """
    _check_embeddings("uniformity_loss", z=z)
    _check_positive("uniformity_loss", t=t)
    _check_min_batch("uniformity_loss", z.shape[0], 2, axis_name)
    return _uniformity(l2_normalize(_as_float(z)), t, axis_name)


def hypersphere_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    alpha: float = 2.0,
    t: float = 2.0,
    uniformity_weight: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """Alignment plus uniformity (Wang & Isola, ICML 2020, Sec. 4.1 and 5): lightly's
    ``HypersphereLoss`` (``lightly/loss/hypersphere_loss.py``).

      L = alignment_loss(z1, z2) + uniformity_weight * (uniformity_loss(z1) + uniformity_loss(z2)) / 2

    The official training script weighs the two terms 1 and 1 (``SsnL/align_uniform``
    ``examples/stl10/main.py``: ``align_w``, ``unif_w``).

    Args:
      z1, z2: [B, D] embeddings of the two views, row i the same image.
      alpha: exponent of the alignment term (see ``alignment_loss``).
      t: kernel parameter of the uniformity term (see ``uniformity_loss``; lightly's default 1).
      uniformity_weight: weight of the uniformity term (lightly's ``lam``, default 1).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("hypersphere_loss", z1=z1, z2=z2)
    _check_positive("hypersphere_loss", alpha=alpha, t=t)
    _check_min_batch("hypersphere_loss", z1.shape[0], 2, axis_name)
    u1, u2 = l2_normalize(_as_float(z1)), l2_normalize(_as_float(z2))
    uniformity = _uniformity(u1, t, axis_name) + _uniformity(u2, t, axis_name)
    return _alignment(u1, u2, alpha, axis_name) + uniformity_weight * uniformity / 2


# ---------------------------------------------------------------------------------------------
# KoLeo


def koleo_loss(z: jax.Array, *, eps: float = 1e-8, axis_name: str | None = None) -> jax.Array:
    """The KoLeo regulariser: the Kozachenko-Leonenko entropy estimator's distance term
    (Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019, Sec. 3.3, Eq. 4;
    added to DINO's loss by DINOv2, Oquab et al., TMLR 2024, Sec. 4).

    Reference code: facebookresearch/dinov2 ``dinov2/loss/koleo_loss.py::KoLeoLoss`` (lightly
    ``lightly/loss/koleo_loss.py`` is a copy).

    With u_i = z_i / max(||z_i||, eps) and rho_i the distance of u_i to its nearest other row of
    the global batch of N rows (nearest by cosine, as the reference),

      rho_i = || u_i - u_{j*} + eps ||_2,   j* = argmax_{j != i} u_i . u_j
      L = -(1/N) sum_i log(rho_i + eps)

    (the eps inside the norm is PyTorch's ``PairwiseDistance``). The gradient reaches both u_i
    and its neighbour, as in the reference. DINOv2 applies it to each view's class tokens on each
    GPU's rows: call it per view, inside ``shard_map`` without ``axis_name`` for that; with
    ``axis_name`` the neighbours are sought in the global batch.

    Args:
      z: [B, D] embeddings of one view.
      eps: the reference's eps > 0 (1e-8).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("koleo_loss", z=z)
    _check_positive("koleo_loss", eps=eps)
    _check_min_batch("koleo_loss", z.shape[0], 2, axis_name)
    z = _as_float(z)
    u = z * lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), eps**2))
    columns, offset = _gathered_rows(u, axis_name)
    is_self = jnp.arange(columns.shape[0])[None, :] == (offset + jnp.arange(u.shape[0]))[:, None]
    similarity = jnp.where(is_self, -jnp.inf, lax.stop_gradient(u @ columns.T))
    neighbour = _take_rows(columns, jnp.argmax(similarity, axis=-1).astype(jnp.int32))
    distance = jnp.sqrt(jnp.sum((u - neighbour + eps) ** 2, axis=-1))
    return -_batch_mean(jnp.log(distance + eps), axis_name)


# ---------------------------------------------------------------------------------------------
# MMCR


def mmcr_loss(views: Views, *, lambd: float = 0.0, axis_name: str | None = None) -> jax.Array:
    """Maximum manifold capacity representations, MMCR (Yerxa et al., NeurIPS 2023, Sec. 3).

    Reference code: ``ThomasYerxa/mmcr`` (``MMCR_Loss``), as lightly
    ``lightly/loss/mmcr_loss.py::MMCRLoss`` with its inputs L2-normalised.

    With u^k = n(z^k) for the K views (L2-normalised here), the centroid of image i
    c_i = (1/K) sum_k u^k_i, C = [c_1; ...; c_N] (N x D, the global batch), U_i = [u^1_i; ...;
    u^K_i] (K x D) and ||.||_* the nuclear norm (the sum of singular values):

      L = -||C||_* + lambd (1/N) sum_i ||U_i||_*

    Args:
      views: tuple of K >= 2 arrays [B, D], one per view, row i the same image in each (lightly's
        ``online`` and ``momentum`` [B, k, D] are the 2k views ``(*online.swapaxes(0, 1),
        *momentum.swapaxes(0, 1))``).
      lambd: weight >= 0 of the local nuclear norms (0, the paper's objective; lightly's default
        5e-3).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; C is then gathered
        from every device and each computes its singular values.

    Returns:
      Scalar float32 loss.
    """
    _check_view_tuple("mmcr_loss", "views", views, minimum=2)
    _check_embeddings("mmcr_loss", **{f"views[{k}]": v for k, v in enumerate(views)})
    if isinstance(lambd, numbers.Real) and lambd < 0:
        raise ValueError(f"mmcr_loss: lambd must be >= 0, got {lambd}")
    stacked = l2_normalize(jnp.stack([_as_float(v) for v in views], axis=1))  # [b, K, D]
    centroids, _ = _gathered_rows(jnp.mean(stacked, axis=1), axis_name)
    loss = -jnp.sum(jnp.linalg.svd(centroids, compute_uv=False))
    if axis_name is not None:
        # Every device computed the same value from the gathered C; the mean over devices says
        # so (an invariant value) and divides the gradient among their copies.
        loss = lax.pmean(loss, axis_name)
    if isinstance(lambd, numbers.Real) and lambd == 0:
        return loss
    local = jnp.sum(jnp.linalg.svd(stacked, compute_uv=False), axis=-1)
    return loss + lambd * _batch_mean(local, axis_name)


# ---------------------------------------------------------------------------------------------
# VIbCReg


def vibcreg_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 200.0,
    axis_name: str | None = None,
) -> jax.Array:
    """VIbCReg's loss: VICReg with a normalised covariance term (Lee & Aune, "VIbCReg:
    Variance-Invariance-better-Covariance Regularization for Self-Supervised Learning on Time
    Series", arXiv:2109.00783, 2021, Sec. 3; official code ``danelee2601/VIbCReg``).

    Reference code: solo-learn ``solo/losses/vibcreg.py::vibcreg_loss_func``.

    invariance and variance are those of ``vicreg_terms``; the covariance term correlates the
    features instead: with z-tilde^v the batch-centred z^v whose feature columns are L2-normalised
    over the batch (F.normalize(dim=0)), G^v = z-tilde^v^T z-tilde^v (D x D, a correlation
    matrix),

      covariance = sum_{v=1,2} (1/D^2) sum_{i != j} (G^v_ij)^2
      L = sim_weight * invariance + var_weight * variance + cov_weight * covariance

    VIbCReg's IterNorm whitening is part of its projector, not of the loss.

    Args:
      z1: [N, D] projections of the first view.
      z2: [N, D] projections of the second view, row i the same image as ``z1[i]``.
      sim_weight, var_weight, cov_weight: term weights (25, 25, 200: solo-learn's defaults).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map`` (solo-learn gathers the
        batch for the variance and covariance terms; this covers the global batch for all three).

    Returns:
      Scalar float32 loss.
    """
    terms = _vicreg_terms("vibcreg_loss", z1, z2, axis_name)
    d = z1.shape[1]

    def correlation(z):
        centred = _as_float(z) - _batch_mean(_as_float(z), axis_name)
        norm = jnp.sqrt(_batch_sum(centred * centred, axis_name))
        normalised = centred / jnp.maximum(norm, _NORM_EPS)
        return _off_diagonal_square_sum(_batch_product(normalised, normalised, axis_name)) / d**2

    return (
        sim_weight * terms["invariance"]
        + var_weight * terms["variance"]
        + cov_weight * (correlation(z1) + correlation(z2))
    )


# ---------------------------------------------------------------------------------------------
# FroSSL


def frossl_loss(
    views: Views, *, invariance_weight: float = 1.0, axis_name: str | None = None
) -> jax.Array:
    """FroSSL's loss (Skean et al., "FroSSL: Frobenius Norm Minimization for Self-Supervised
    Learning", ECCV 2024, Sec. 3; official code ``OFSkean/FroSSL``).

    Reference code: lightly ``lightly/loss/frossl_loss.py::FroSSLLoss``.

    Each of the V views is normalised per feature over the global batch of N rows, z-hat^v =
    z^v / ||z^v_{:,d}||_2 (F.normalize(dim=0)); z-bar is their mean over views. With
    K^v = z-hat^v^T z-hat^v (D x D, the same Frobenius norm as the N x N Gram matrix) divided by
    its trace (through ``stop_gradient``, as the reference's ``.item()``):

      L = sum_v 2 log ||K^v / tr(K^v)||_F + invariance_weight * sum_v V D (1/(N D)) ||z-hat^v - z-bar||_F^2

    Args:
      views: tuple of V >= 2 arrays [B, D], one per view, row i the same image in each.
      invariance_weight: weight of the invariance term (1, lightly's default).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_view_tuple("frossl_loss", "views", views, minimum=2)
    _check_embeddings("frossl_loss", **{f"views[{k}]": v for k, v in enumerate(views)})
    num_views, d = len(views), views[0].shape[1]

    def normalise(z):
        z = _as_float(z)
        return z / jnp.maximum(jnp.sqrt(_batch_sum(z * z, axis_name)), _NORM_EPS)

    normalised = [normalise(z) for z in views]
    mean = sum(normalised) / num_views
    regularisation, invariance = 0.0, 0.0
    for z in normalised:
        gram = _batch_product(z, z, axis_name)
        gram = gram / lax.stop_gradient(jnp.trace(gram))
        regularisation = regularisation + jnp.log(jnp.sum(gram * gram))  # 2 log ||.||_F
        squared = jnp.mean((z - mean) ** 2, axis=-1)
        invariance = invariance + num_views * d * _batch_mean(squared, axis_name)
    return regularisation + invariance_weight * invariance


# ---------------------------------------------------------------------------------------------
# MACL


def macl_loss(
    z1: jax.Array,
    z2: jax.Array,
    *,
    temperature: float = 0.1,
    alpha: float = 0.5,
    a0: float = 0.0,
    axis_name: str | None = None,
) -> jax.Array:
    """Model-aware contrastive loss, MACL (Huang et al., "Model-Aware Contrastive Learning:
    Towards Escaping the Dilemmas", ICML 2023, arXiv:2207.07874): NT-Xent with a temperature that
    follows the batch's alignment and a gradient reweighting of each row.

    Reference code: lightly ``lightly/loss/macl_loss.py::MACLLoss`` (commit 6c3dbc8).

    With u = n([z1; z2]) (2N rows of the global batch, L2-normalised here), A = sg(mean_i
    u1_i . u2_i) the alignment magnitude and the model-aware temperature
    t = temperature * (1 + alpha (A - a0)):

      P_i = exp(u_i . u_pi(i) / t) / sum_{j != i} exp(u_i . u_j / t)   (pi(i) the other view)
      L = -(1 / 2N) sum_{i=1}^{2N} sg(V_i) log P_i,   V_i = 1 / (1 - P_i + 1e-8)

    i.e. ``nt_xent`` at temperature t with each row weighted by sg(V_i); t and V carry no
    gradient, as in the reference.

    Args:
      z1: [B, D] projections of the first view (any float dtype).
      z2: [B, D] projections of the second view, row i the same image as ``z1[i]``.
      temperature: the base temperature > 0 (0.1, lightly's default).
      alpha: how much the temperature follows the alignment, in [0, 1] (0.5).
      a0: the alignment threshold A_0 in [0, 1] (0).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; negatives are gathered
        from every device and A covers the global batch.

    Returns:
      Scalar float32 loss.
    """
    _check_embeddings("macl_loss", z1=z1, z2=z2)
    _check_positive("macl_loss", temperature=temperature)
    _check_unit_interval("macl_loss", alpha=alpha, a0=a0)
    _check_min_batch("macl_loss", z1.shape[0], 2, axis_name)
    u = l2_normalize(_as_float(jnp.concatenate([z1, z2], axis=0)))  # [2b, D]
    b = z1.shape[0]
    alignment = lax.stop_gradient(_batch_mean(jnp.sum(u[:b] * u[b:], axis=-1), axis_name))
    log_prob = _positive_log_prob(u, temperature * (1.0 + alpha * (alignment - a0)), axis_name)
    weight = lax.stop_gradient(1.0 / (1.0 - jnp.exp(log_prob) + 1e-8))
    return -_batch_mean(weight * log_prob, axis_name)


# ---------------------------------------------------------------------------------------------
# CO2


def co2_loss(
    z1: jax.Array,
    z2: jax.Array,
    queue: jax.Array | None = None,
    *,
    temperature: float = 0.05,
    alpha: float = 1.0,
    axis_name: str | None = None,
) -> jax.Array:
    """CO2's consistency regulariser (Wei et al., "CO2: Consistent Contrast for Unsupervised
    Visual Representation Learning", ICLR 2021, Sec. 3, arXiv:2010.02217): a symmetric KL between
    the query's and the positive key's similarity distributions over the same negatives; add it
    to the contrastive loss (``info_nce`` for MoCo, as the paper).

    Reference code: lightly ``lightly/loss/regularizer/co2.py::CO2Regularizer`` (commit
    fc27082), with its ``MemoryBankModule`` as the ``queue`` input.

    With u1 = n(z1), u2 = n(z2) (L2-normalised here) and tau = ``temperature``, for each row i
    the logits over the positive and the negatives n_1..n_K are

      p_i = [u1_i . u2_i, u1_i . n_1, ..., u1_i . n_K] / tau,   q_i = [u2_i . u1_i, u2_i . n_1, ...] / tau
      P_i = softmax(p_i), Q_i = softmax(q_i)
      L = alpha * (1/2) (1/N) sum_i [KL(P_i || Q_i) + KL(Q_i || P_i)]
        = alpha * (1/2) (1/N) sum_i sum_k (P_ik - Q_ik) (log P_ik - log Q_ik)

    The negatives are the rows of ``queue`` (sg(n(queue))), or, without a queue (lightly's
    default ``memory_bank_size=0``), the other images of the global batch: u2_j (j != i) for p_i
    and u1_j for q_i. Both views receive the gradient (pass momentum keys as z2: their encoder
    takes none). The reference wraps its result in ``torch.tensor(...)``, which detaches it, so
    that at fc27082 lightly's regulariser moves no weights; this function is differentiable, as
    the paper intends.

    Args:
      z1: [B, D] queries (first view).
      z2: [B, D] positive keys (second view), row i the same image as ``z1[i]``.
      queue: [K, D] negative keys, one per row (the same on every device), or None for the
        in-batch negatives.
      temperature: tau_con > 0 (0.05, lightly's ``t_consistency``).
      alpha: the regulariser's weight (1, lightly's default).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``; in-batch negatives are
        gathered from every device.

    Returns:
      Scalar float32 loss (0 when both views agree).
    """
    _check_embeddings("co2_loss", z1=z1, z2=z2)
    _check_positive("co2_loss", temperature=temperature)
    u1, u2 = l2_normalize(_as_float(z1)), l2_normalize(_as_float(z2))
    if queue is None:
        _check_min_batch("co2_loss", z1.shape[0], 2, axis_name)
        # Column j is image j for both distributions: the positive on the diagonal, the other
        # images' rows of the other view as negatives, in the same order.
        logits_p = u1 @ _gathered_rows(u2, axis_name)[0].T
        logits_q = u2 @ _gathered_rows(u1, axis_name)[0].T
    else:
        if jnp.ndim(queue) != 2 or jnp.shape(queue)[1] != z1.shape[1]:
            raise ValueError(
                f"co2_loss: queue must be [K, D] with D = {z1.shape[1]} (one key per row), got "
                f"shape {jnp.shape(queue)}; transpose a [D, K] queue"
            )
        negatives = lax.stop_gradient(l2_normalize(_as_float(queue)))
        positive = jnp.sum(u1 * u2, axis=-1, keepdims=True)
        logits_p = jnp.concatenate([positive, u1 @ negatives.T], axis=-1)
        logits_q = jnp.concatenate([positive, u2 @ negatives.T], axis=-1)
    log_p = jax.nn.log_softmax(logits_p / temperature, axis=-1)
    log_q = jax.nn.log_softmax(logits_q / temperature, axis=-1)
    divergence = jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=-1)
    return alpha * 0.5 * _batch_mean(divergence, axis_name)


# ---------------------------------------------------------------------------------------------
# VISReg


def visreg_terms(
    global_views: Views,
    *,
    key: jax.Array,
    local_views: Views = (),
    num_slices: int = 4096,
    eps: float = 1e-4,
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """VISReg's four unweighted terms, which ``visreg_loss`` weighs and sums; for logging them.

    Reference code: lightly ``lightly/loss/visreg_loss.py`` (commit 948454f):
    ``VISRegLoss.forward_components``, ``visreg_center_loss``, ``visreg_scale_loss``,
    ``visreg_shape_loss`` and ``lightly/loss/lejepa_loss.py::lejepa_invariance_loss``.

    Over the V = Vg + Vl views z^v (global first), each [N, D] over the global batch, with mu^v
    and sigma^v the per-feature batch mean and (biased) standard deviation, c the mean of the Vg
    global views, w_1..w_S unit directions drawn from ``key`` (the same for every view) and
    g_r = Phi^{-1}(r / (N + 1)) the standard normal quantiles:

      pred   = mean_{v, n, d} (c_nd - z^v_nd)^2                               (LeJEPA's invariance)
      center = mean_{v, d} (mu^v_d)^2
      scale  = mean_{v, d} (1 - sigma^v_d)^2
      shape  = mean_{v, s, r} (sort_n(x^v_ns)_r - g_r)^2,   x^v = ((z^v - mu^v) / (sg(sigma^v) + eps)) w

    (shape: the sliced 2-Wasserstein distance of the standardised embeddings to N(0, I)).

    Args:
      global_views: tuple of Vg >= 1 arrays [B, D], one per global view, row i the same image.
      key: a ``jax.random`` key for the slices; pass a fresh one each step, the same on every
        device.
      local_views: tuple of Vl >= 0 arrays [B, D], one per local (small-crop) view.
      num_slices: S >= 1, random directions per call (4096, lightly's default).
      eps: > 0, added to sigma before standardising (1e-4).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      ``{"pred", "center", "scale", "shape"}``: four scalar float32 arrays.
    """
    return _visreg_terms("visreg_terms", global_views, local_views, key, num_slices, eps, axis_name)


def _visreg_terms(
    fn: str,
    global_views: Views,
    local_views: Views,
    key: jax.Array,
    num_slices: int,
    eps: float,
    axis_name: str | None,
) -> dict[str, jax.Array]:
    _check_view_tuple(fn, "global_views", global_views, minimum=1)
    _check_view_tuple(fn, "local_views", local_views)
    views = [*global_views, *local_views]
    _check_embeddings(fn, **{f"views[{k}]": v for k, v in enumerate(views)})
    if isinstance(num_slices, bool) or not (
        isinstance(num_slices, numbers.Integral) and num_slices >= 1
    ):
        raise ValueError(f"{fn}: num_slices must be an integer >= 1, got {num_slices!r}")
    _check_positive(fn, eps=eps)
    b, d = views[0].shape
    _check_min_batch(fn, b, 2, axis_name)
    n = b * _axis_size(axis_name)
    views = [_as_float(z) for z in views]
    # Drawn in float32 whatever the inputs' dtype, so that a key gives the same slices.
    slices = jax.random.normal(key, (d, num_slices), jnp.float32).astype(views[0].dtype)
    slices = slices / jnp.linalg.norm(slices, axis=0)
    # Standard normal quantiles at r / (N + 1), r = 1..N: [N].
    quantiles = jax.scipy.special.ndtri(jnp.arange(1, n + 1, dtype=views[0].dtype) / (n + 1))
    centre = sum(views[: len(global_views)]) / len(global_views)
    pred, center, scale, shape = [], [], [], []
    for z in views:
        pred.append(jnp.mean(_batch_mean((centre - z) ** 2, axis_name)))
        mean = _batch_mean(z, axis_name)
        variance = _batch_mean((z - mean) ** 2, axis_name)
        # sqrt with a zero gradient at a zero variance (a collapsed feature), where sqrt's is inf.
        positive = variance > 0
        std = jnp.where(positive, jnp.sqrt(jnp.where(positive, variance, 1.0)), 0.0)
        center.append(jnp.mean(mean**2))
        scale.append(jnp.mean((1.0 - std) ** 2))
        projections = (z - mean) / (lax.stop_gradient(std) + eps) @ slices  # [b, S]
        # sort_n(x)_r - g_r summed over r equals x_n - g_{rank(n)} summed over n: each row is
        # compared with the quantile at its rank in the global batch, so that the rows stay on
        # their devices (a stable argsort breaks ties).
        columns, offset = _gathered_rows(lax.stop_gradient(projections), axis_name)
        order = jnp.argsort(columns, axis=0)  # [N, S]: the rows of each slice in sorted order
        ranks = (
            jnp.zeros_like(order)
            .at[order, jnp.arange(num_slices)]
            .set(jnp.broadcast_to(jnp.arange(n)[:, None], order.shape), unique_indices=True)
        )  # the inverse permutation: each row's rank, half the time of a second argsort
        ranks = lax.dynamic_slice_in_dim(ranks, offset, b, axis=0)
        shape.append(jnp.mean(_batch_mean((projections - quantiles[ranks]) ** 2, axis_name)))
    return {
        name: sum(terms) / len(views)
        for name, terms in zip(
            ("pred", "center", "scale", "shape"), (pred, center, scale, shape), strict=True
        )
    }


def visreg_loss(
    global_views: Views,
    *,
    key: jax.Array,
    local_views: Views = (),
    lambda_param: float = 0.9,
    num_slices: int = 4096,
    lambda_scale: float = 1.0,
    lambda_shape: float = 1.0,
    lambda_center: float = 1.0,
    eps: float = 1e-4,
    axis_name: str | None = None,
) -> jax.Array:
    """VISReg (Wu et al., 2026, arXiv:2606.02572, Algorithm 1; Eqs. 1, 2, 5, 6 and 8 as lightly
    cites them): LeJEPA's multi-view invariance plus decoupled centre, scale and sliced-Wasserstein
    shape regularisers of the embedding distribution.

    Reference code: lightly ``lightly/loss/visreg_loss.py::VISRegLoss`` (commit 948454f).

      L = (1 - lambda_param) pred + lambda_param (lambda_scale scale + lambda_shape shape
                                                  + lambda_center center)

    with the terms of ``visreg_terms`` (formulas there). Statistics, sorts and quantiles cover
    the global batch with one set of slices: lightly's default computes the regularisers on each
    device's rows with slices of its own (its ``gather_distributed=True`` gathers the rows but
    keeps per-device slices); on one device the two agree.

    Args:
      global_views: tuple of Vg >= 1 arrays [B, D], one per global view, row i the same image.
      key: a ``jax.random`` key for the slices; pass a fresh one each step, the same on every
        device.
      local_views: tuple of Vl >= 0 arrays [B, D], one per local view (lightly's ``local_proj``).
      lambda_param: the regularisers' share in [0, 1] (0.9, the paper's ImageNet setting; it
        recommends 0.6 for small datasets).
      num_slices: S >= 1 random directions (4096).
      lambda_scale, lambda_shape, lambda_center: the regularisers' weights >= 0 (1 each).
      eps: > 0, added to sigma before standardising (1e-4).
      axis_name: mesh axis that splits the batch inside ``jax.shard_map``.

    Returns:
      Scalar float32 loss.
    """
    _check_unit_interval("visreg_loss", lambda_param=lambda_param)
    for name, value in (
        ("lambda_scale", lambda_scale),
        ("lambda_shape", lambda_shape),
        ("lambda_center", lambda_center),
    ):
        if isinstance(value, numbers.Real) and value < 0:
            raise ValueError(f"visreg_loss: {name} must be >= 0, got {value}")
    terms = _visreg_terms("visreg_loss", global_views, local_views, key, num_slices, eps, axis_name)
    regularisation = (
        lambda_scale * terms["scale"]
        + lambda_shape * terms["shape"]
        + lambda_center * terms["center"]
    )
    return (1.0 - lambda_param) * terms["pred"] + lambda_param * regularisation
