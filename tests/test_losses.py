"""Tests of cl_ssl.losses against independent NumPy transcriptions, closed forms and invariances.
The single-device, sharded-jit and shard_map paths are compared in tests/test_losses_sharded.py."""

import functools
import inspect
import re
import statistics

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_ssl import losses
from cl_ssl.losses import gan

RTOL = 1e-5
ATOL = 1e-5
N_DEVICES = 4


def _normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _central_difference(f, x, direction, h):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= N_DEVICES, "tests/conftest.py should force 4 CPU devices"
    return jax.make_mesh((N_DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# ---------------------------------------------------------------------------------------------
# NumPy references, written from the papers' formulas with explicit loops.


def np_nt_xent(z1, z2, temperature):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    b = len(z1)
    u = _np_normalize(np.concatenate([z1, z2]))
    total = 0.0
    for i in range(2 * b):
        positive = (i + b) % (2 * b)
        denominator = sum(np.exp(u[i] @ u[j] / temperature) for j in range(2 * b) if j != i)
        total += -np.log(np.exp(u[i] @ u[positive] / temperature) / denominator)
    return total / (2 * b)


def np_info_nce(q, k, queue, temperature):
    q, k, queue = (_np_normalize(np.asarray(a, np.float64)) for a in (q, k, queue))
    total = 0.0
    for i in range(len(q)):
        positive = np.exp(q[i] @ k[i] / temperature)
        negatives = sum(np.exp(q[i] @ n / temperature) for n in queue)
        total += -np.log(positive / (positive + negatives))
    return total / len(q)


def np_mean_cosine(p, z):
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    return np.mean(
        [p[i] @ z[i] / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))]
    )


def np_barlow_twins(z1, z2, lambd, scale):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    n, d = z1.shape

    def batch_norm(z):
        return (z - z.mean(axis=0)) / np.sqrt(z.var(axis=0) + 1e-5)  # biased variance, as BN

    z1, z2 = batch_norm(z1), batch_norm(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(z1[m, i] * z2[m, j] for m in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return scale * loss


def np_vicreg(z1, z2, sim_weight, var_weight, cov_weight):
    z1, z2 = np.asarray(z1, np.float64), np.asarray(z2, np.float64)
    d = z1.shape[1]
    invariance = np.mean((z1 - z2) ** 2)
    variance = covariance = 0.0
    for z in (z1, z2):
        std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
        variance += np.mean(np.maximum(0.0, 1.0 - std))
        cov = np.cov(z, rowvar=False)
        covariance += sum(cov[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


def np_sinkhorn(scores, epsilon, num_iters):
    """solo-learn's SinkhornKnopp.forward, line by line (prototypes x samples layout)."""
    q = np.exp(np.asarray(scores, np.float64) / epsilon).T
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(num_iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def np_swav(scores1, scores2, temperature, epsilon, num_iters, queue1=None, queue2=None):
    b = len(scores1)
    codes = []
    for scores, queue in ((scores1, queue1), (scores2, queue2)):
        stacked = scores if queue is None else np.concatenate([scores, queue])
        codes.append(np_sinkhorn(stacked, epsilon, num_iters)[:b])
    preds = [_np_log_softmax(np.asarray(s, np.float64) / temperature) for s in (scores1, scores2)]
    total = 0.0
    for a, other in ((0, 1), (1, 0)):
        total += -np.mean([np.sum(codes[a][i] * preds[other][i]) for i in range(b)])
    return total / 2


def np_similarity_kl(student, teacher, student_temperature, teacher_temperature):
    log_p_s = _np_log_softmax(np.asarray(student, np.float64) / student_temperature)
    log_p_t = _np_log_softmax(np.asarray(teacher, np.float64) / teacher_temperature)
    return np.mean(
        [np.sum(np.exp(log_p_t[i]) * (log_p_t[i] - log_p_s[i])) for i in range(len(student))]
    )


def np_dino(student, teacher, center, student_temperature, teacher_temperature):
    t = np.exp(_np_log_softmax((np.asarray(teacher, np.float64) - center) / teacher_temperature))
    log_s = _np_log_softmax(np.asarray(student, np.float64) / student_temperature)
    return np.mean([-np.sum(t[i] * log_s[i]) for i in range(len(student))])


# ---------------------------------------------------------------------------------------------
# nt_xent


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_numpy_reference(temperature):
    z1, z2 = _normal(0, (6, 5)), _normal(1, (6, 5))
    value = losses.nt_xent(z1, z2, temperature=temperature)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, np_nt_xent(z1, z2, temperature), rtol=RTOL)


def test_nt_xent_closed_forms():
    tau, b = 0.2, 3
    # Identical views of orthonormal embeddings: the positive scores 1/tau, the 2B - 2 others 0.
    e = np.eye(4, dtype=np.float32)[:b]
    expected = np.log(1 + (2 * b - 2) * np.exp(-1 / tau))
    np.testing.assert_allclose(losses.nt_xent(e, e, temperature=tau), expected, rtol=RTOL)
    # Collapsed embeddings: every score is 1/tau, so each row is a uniform pick among 2B - 1.
    c = np.ones((b, 4), np.float32)
    np.testing.assert_allclose(losses.nt_xent(c, c, temperature=tau), np.log(2 * b - 1), rtol=RTOL)


def test_nt_xent_invariances():
    z1, z2 = _normal(2, (8, 6)), _normal(3, (8, 6))
    value = losses.nt_xent(z1, z2)
    perm = np.random.default_rng(0).permutation(8)
    np.testing.assert_allclose(losses.nt_xent(z1[perm], z2[perm]), value, rtol=RTOL)
    np.testing.assert_allclose(losses.nt_xent(z2, z1), value, rtol=RTOL)
    scale = np.random.default_rng(1).uniform(0.1, 10.0, (8, 1)).astype(np.float32)
    np.testing.assert_allclose(losses.nt_xent(z1 * scale, 3 * z2), value, rtol=RTOL)


def test_nt_xent_bf16_inputs_compute_in_float32():
    z1, z2 = _normal(4, (8, 6)), _normal(5, (8, 6))
    z1_bf16, z2_bf16 = jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16)
    value = losses.nt_xent(z1_bf16, z2_bf16)
    assert value.dtype == jnp.float32
    expected = np_nt_xent(np.asarray(z1_bf16, np.float32), np.asarray(z2_bf16, np.float32), 0.1)
    np.testing.assert_allclose(value, expected, rtol=RTOL)


def test_nt_xent_gradient_matches_finite_differences():
    z1, z2 = _normal(6, (4, 3)).astype(np.float64), _normal(7, (4, 3)).astype(np.float64)
    tau = 0.5
    with jax.enable_x64(True):
        g1, g2 = jax.grad(functools.partial(losses.nt_xent, temperature=tau), argnums=(0, 1))(
            jnp.asarray(z1), jnp.asarray(z2)
        )
        assert g1.dtype == jnp.float64
    rng = np.random.default_rng(8)
    for _ in range(4):
        d1, d2 = rng.standard_normal(z1.shape), rng.standard_normal(z2.shape)
        numeric = _central_difference(
            lambda t: np_nt_xent(z1 + t * d1, z2 + t * d2, tau), 0.0, 1.0, 1e-6
        )
        analytic = np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.ones((4, 3)), np.ones((5, 3))), "same"),
        ((np.ones((4, 3)), np.ones((4, 2))), "same"),
        ((np.ones((4,)), np.ones((4,))), "2-D"),
        ((np.ones((1, 3)), np.ones((1, 3))), "at least 2"),
    ],
)
def test_nt_xent_rejects_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        losses.nt_xent(*args)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_nt_xent_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.nt_xent(np.ones((4, 3)), np.ones((4, 3)), temperature=temperature)


def test_nt_xent_batch_check_counts_global_rows_under_shard_map(mesh):
    per_device = jax.shard_map(
        functools.partial(losses.nt_xent, axis_name="data"),
        mesh=mesh,
        in_specs=P("data"),
        out_specs=P(),
    )
    # One row per device is a global batch of 4: allowed.
    assert np.isfinite(per_device(_normal(11, (4, 3)), _normal(12, (4, 3))))


# ---------------------------------------------------------------------------------------------
# Other losses against their NumPy references


def _cosine_scores(seed, rows, prototypes=5, dim=4):
    """Cosines between random unit embeddings and random unit prototypes, as SwAV's scores."""
    z = _np_normalize(_normal(seed, (rows, dim)))
    w = _np_normalize(_normal(seed + 1000, (prototypes, dim)))
    return (z @ w.T).astype(np.float32)


def test_info_nce_matches_numpy_reference():
    q, k, queue = _normal(20, (6, 4)), _normal(21, (6, 4)), _normal(22, (7, 4))
    np.testing.assert_allclose(
        losses.info_nce(q, k, queue, temperature=0.2), np_info_nce(q, k, queue, 0.2), rtol=RTOL
    )


def test_byol_and_simsiam_match_numpy_reference():
    p, z = _normal(23, (6, 4)), _normal(24, (6, 4))
    np.testing.assert_allclose(losses.byol_loss(p, z), 2 - 2 * np_mean_cosine(p, z), rtol=RTOL)
    np.testing.assert_allclose(losses.simsiam_loss(p, z), -np_mean_cosine(p, z), rtol=RTOL)


@pytest.mark.parametrize("lambd, scale", [(5e-3, 0.1), (0.5, 1.0)])
def test_barlow_twins_matches_numpy_reference(lambd, scale):
    z1, z2 = _normal(25, (6, 4)), _normal(26, (6, 4), scale=3.0) + 1.0
    np.testing.assert_allclose(
        losses.barlow_twins_loss(z1, z2, lambd=lambd, scale=scale),
        np_barlow_twins(z1, z2, lambd, scale),
        rtol=RTOL,
    )


def test_vicreg_matches_numpy_reference():
    z1, z2 = _normal(27, (6, 4)), _normal(28, (6, 4), scale=0.5)
    loss = losses.vicreg_loss(z1, z2, sim_weight=2.0, var_weight=3.0, cov_weight=4.0)
    terms = losses.vicreg_terms(z1, z2)
    expected_loss, expected_terms = np_vicreg(z1, z2, 2.0, 3.0, 4.0)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    chex.assert_trees_all_close(terms, expected_terms, rtol=RTOL)


@pytest.mark.parametrize("num_iters", [1, 3])
def test_sinkhorn_matches_numpy_reference(num_iters):
    scores = _cosine_scores(29, 6)
    np.testing.assert_allclose(
        losses.sinkhorn(scores, epsilon=0.05, num_iters=num_iters),
        np_sinkhorn(scores, 0.05, num_iters),
        rtol=1e-4,
        atol=1e-7,
    )


def test_swav_matches_numpy_reference():
    s1, s2 = _cosine_scores(30, 6), _cosine_scores(31, 6)
    np.testing.assert_allclose(
        losses.swav_loss(s1, s2, temperature=0.1), np_swav(s1, s2, 0.1, 0.05, 3), rtol=RTOL
    )
    q1, q2 = _cosine_scores(32, 4), _cosine_scores(33, 4)
    np.testing.assert_allclose(
        losses.swav_loss(s1, s2, queue_scores1=q1, queue_scores2=q2),
        np_swav(s1, s2, 0.1, 0.05, 3, q1, q2),
        rtol=RTOL,
    )


def test_similarity_kl_matches_numpy_reference():
    s, t = _normal(34, (5, 7), scale=0.3), _normal(35, (5, 7), scale=0.3)
    np.testing.assert_allclose(
        losses.similarity_kl(s, t, student_temperature=0.2, teacher_temperature=0.1),
        np_similarity_kl(s, t, 0.2, 0.1),
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        losses.similarity_kl(s, t), np_similarity_kl(s, t, 0.1, 0.01), rtol=RTOL
    )


def test_dino_matches_numpy_reference():
    s, t, c = _normal(36, (5, 7)), _normal(37, (5, 7)), _normal(38, (7,), scale=0.1)
    np.testing.assert_allclose(losses.dino_loss(s, t, c), np_dino(s, t, c, 0.1, 0.04), rtol=RTOL)
    np.testing.assert_allclose(
        losses.dino_loss(s, t, c[None]), np_dino(s, t, c, 0.1, 0.04), rtol=RTOL
    )


# ---------------------------------------------------------------------------------------------
# Closed forms


# Zero-mean, mutually orthogonal columns with biased variance 1 (a 4 x 3 Hadamard block).
_HADAMARD = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32)


def test_info_nce_closed_forms():
    tau = 0.2
    e = np.eye(6, dtype=np.float32)
    # Positives identical; the 3 queue keys orthogonal to every query.
    expected = np.log(1 + 3 * np.exp(-1 / tau))
    np.testing.assert_allclose(
        losses.info_nce(e[:3], e[:3], e[3:], temperature=tau), expected, rtol=RTOL
    )
    # Collapsed: every score equals the positive's, a uniform pick among 1 + K.
    c = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(
        losses.info_nce(c, c, np.ones((5, 4), np.float32)), np.log(6), rtol=RTOL
    )


def test_cosine_losses_closed_forms():
    p = _normal(40, (4, 3))
    np.testing.assert_allclose(losses.byol_loss(p, 2 * p), 0.0, atol=ATOL)
    np.testing.assert_allclose(losses.byol_loss(p, -p), 4.0, rtol=RTOL)
    e = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(losses.byol_loss(e, e[::-1]), 2.0, rtol=RTOL)
    np.testing.assert_allclose(losses.simsiam_loss(p, 3 * p), -1.0, rtol=RTOL)
    np.testing.assert_allclose(losses.simsiam_loss(e, e[::-1]), 0.0, atol=ATOL)


def test_barlow_twins_closed_forms():
    d, eps = 3, 1e-5
    # Identical decorrelated views: C = I / (1 + eps), so only the tiny BN-eps gap remains.
    np.testing.assert_allclose(
        losses.barlow_twins_loss(_HADAMARD, _HADAMARD, scale=1.0),
        d * (1 - 1 / (1 + eps)) ** 2,
        rtol=1e-3,
        atol=1e-12,
    )
    # Opposite views: C = -I / (1 + eps).
    np.testing.assert_allclose(
        losses.barlow_twins_loss(_HADAMARD, -_HADAMARD, scale=0.1),
        0.1 * d * (1 + 1 / (1 + eps)) ** 2,
        rtol=RTOL,
    )


def test_vicreg_closed_forms():
    # Collapsed: no invariance or covariance penalty; variance term 2 * (1 - sqrt(1e-4)).
    c = np.ones((4, 3), np.float32)
    loss, terms = losses.vicreg_loss(c, c), losses.vicreg_terms(c, c)
    np.testing.assert_allclose(terms["variance"], 2 * (1 - 0.01), rtol=RTOL)
    np.testing.assert_allclose(loss, 25 * 2 * (1 - 0.01), rtol=RTOL)
    assert terms["invariance"] == 0 and terms["covariance"] == 0
    # Identical, decorrelated, std sqrt(4/3) * 3 > 1: nothing to penalise.
    loss = losses.vicreg_loss(3 * _HADAMARD, 3 * _HADAMARD)
    np.testing.assert_allclose(loss, 0.0, atol=ATOL)


def test_swav_and_sinkhorn_closed_forms():
    k = 5
    flat = np.zeros((6, k), np.float32)
    np.testing.assert_allclose(losses.sinkhorn(flat), np.full((6, k), 1 / k), rtol=RTOL)
    # Uniform codes against uniform predictions: the cross-entropy log K.
    np.testing.assert_allclose(losses.swav_loss(flat, flat), np.log(k), rtol=RTOL)


def test_distillation_closed_forms():
    s = _normal(41, (4, 6))
    np.testing.assert_allclose(
        losses.similarity_kl(s, s, student_temperature=0.1, teacher_temperature=0.1), 0.0, atol=ATOL
    )
    assert losses.similarity_kl(s, _normal(42, (4, 6))) > 0
    zeros = np.zeros((4, 6), np.float32)
    np.testing.assert_allclose(losses.dino_loss(zeros, zeros, np.zeros(6)), np.log(6), rtol=RTOL)
    # A centre equal to the teacher's logits makes the teacher uniform.
    t = _normal(43, (1, 6))
    np.testing.assert_allclose(losses.dino_loss(zeros[:1], t, t[0]), np.log(6), rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# Invariances, gradients, dtypes


_PAIR_LOSSES = {
    "info_nce": lambda a, b: losses.info_nce(a, b, _normal(50, (5, 4))),
    "byol_loss": losses.byol_loss,
    "simsiam_loss": losses.simsiam_loss,
    "barlow_twins_loss": losses.barlow_twins_loss,
    "vicreg_loss": losses.vicreg_loss,
    "swav_loss": losses.swav_loss,
    "similarity_kl": losses.similarity_kl,
    "dino_loss": lambda a, b: losses.dino_loss(a, b, np.zeros(4, np.float32)),
}


@pytest.mark.parametrize("name", sorted(_PAIR_LOSSES))
def test_losses_invariant_to_batch_permutation(name):
    fn = _PAIR_LOSSES[name]
    a, b = _normal(51, (8, 4), scale=0.5), _normal(52, (8, 4), scale=0.5)
    perm = np.random.default_rng(2).permutation(8)
    np.testing.assert_allclose(fn(a[perm], b[perm]), fn(a, b), rtol=RTOL, atol=ATOL)


def test_normalising_losses_invariant_to_rescaling():
    a, b, queue = _normal(53, (6, 4)), _normal(54, (6, 4)), _normal(55, (5, 4))
    row_scale = np.random.default_rng(3).uniform(0.1, 10.0, (6, 1)).astype(np.float32)
    for fn in (losses.byol_loss, losses.simsiam_loss):
        np.testing.assert_allclose(fn(a * row_scale, 7 * b), fn(a, b), rtol=RTOL)
    np.testing.assert_allclose(
        losses.info_nce(a * row_scale, 0.5 * b, 3 * queue), losses.info_nce(a, b, queue), rtol=RTOL
    )
    # Barlow Twins standardises each feature: positive per-feature scales and shifts drop out (up
    # to the BatchNorm eps).
    feature_scale = np.array([0.5, 2.0, 4.0, 8.0], np.float32)
    np.testing.assert_allclose(
        losses.barlow_twins_loss(a * feature_scale + 3.0, b),
        losses.barlow_twins_loss(a, b),
        rtol=1e-4,
    )


def test_barlow_twins_gradient_matches_finite_differences():
    z1, z2 = _normal(56, (5, 3)).astype(np.float64), _normal(57, (5, 3)).astype(np.float64)
    with jax.enable_x64(True):
        g1, g2 = jax.grad(
            functools.partial(losses.barlow_twins_loss, lambd=0.3, scale=1.0), argnums=(0, 1)
        )(jnp.asarray(z1), jnp.asarray(z2))
    rng = np.random.default_rng(9)
    for _ in range(4):
        d1, d2 = rng.standard_normal(z1.shape), rng.standard_normal(z2.shape)
        numeric = _central_difference(
            lambda t: np_barlow_twins(z1 + t * d1, z2 + t * d2, 0.3, 1.0), 0.0, 1.0, 1e-6
        )
        analytic = np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_targets_receive_no_gradient():
    a, b, queue = _normal(58, (4, 3)), _normal(59, (4, 3)), _normal(60, (5, 3))
    cases = {
        "info_nce keys and queue": jax.grad(losses.info_nce, argnums=(1, 2))(a, b, queue),
        "byol_loss target": jax.grad(losses.byol_loss, argnums=1)(a, b),
        "simsiam_loss target": jax.grad(losses.simsiam_loss, argnums=1)(a, b),
        "similarity_kl teacher": jax.grad(losses.similarity_kl, argnums=1)(a, b),
        "dino_loss teacher and centre": jax.grad(losses.dino_loss, argnums=(1, 2))(
            a, b, np.zeros(3, np.float32)
        ),
        "sinkhorn scores": jax.grad(lambda s: jnp.sum(losses.sinkhorn(s) * b))(a),
    }
    for name, grads in cases.items():
        for g in jax.tree.leaves(grads):
            np.testing.assert_array_equal(g, np.zeros_like(g), err_msg=name)
    # The online side does receive a gradient.
    assert np.any(jax.grad(losses.byol_loss)(a, b) != 0)


def test_sinkhorn_meets_marginals():
    b, k = 8, 4
    scores = _cosine_scores(61, b, prototypes=k)
    codes = np.asarray(losses.sinkhorn(scores))  # three iterations: each sample's code sums to 1
    np.testing.assert_allclose(codes.sum(axis=1), np.ones(b), rtol=RTOL)
    assert np.all(codes >= 0)
    # More iterations (with a softer epsilon, for speed) converge to prototype masses B / K too.
    codes = np.asarray(losses.sinkhorn(scores, epsilon=0.5, num_iters=100))
    np.testing.assert_allclose(codes.sum(axis=1), np.ones(b), rtol=RTOL)
    np.testing.assert_allclose(codes.sum(axis=0), np.full(k, b / k), rtol=1e-4)


def test_bf16_inputs_compute_in_float32():
    a, b = _normal(62, (6, 4)), _normal(63, (6, 4))
    a16, b16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16)
    a32, b32 = np.asarray(a16, np.float32), np.asarray(b16, np.float32)
    for name, fn in _PAIR_LOSSES.items():
        value = fn(a16, b16)
        assert value.dtype == jnp.float32, name
        np.testing.assert_allclose(value, fn(a32, b32), rtol=RTOL, atol=ATOL, err_msg=name)
    assert losses.sinkhorn(a16).dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# Errors


_ONES = np.ones((4, 3), np.float32)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.info_nce(_ONES, _ONES[:3], _ONES), "same"),
        (lambda: losses.info_nce(_ONES, _ONES, np.ones((3, 5))), "queue must be"),
        (lambda: losses.byol_loss(_ONES, np.ones((4, 2))), "same"),
        (lambda: losses.simsiam_loss(_ONES[0], _ONES[0]), "2-D"),
        (lambda: losses.barlow_twins_loss(_ONES[:1], _ONES[:1]), "at least 2"),
        (lambda: losses.vicreg_loss(_ONES[:1], _ONES[:1]), "at least 2"),
        (lambda: losses.vicreg_loss(_ONES, _ONES[:2]), "same"),
        (lambda: losses.sinkhorn(_ONES[0]), "2-D"),
        (lambda: losses.swav_loss(_ONES, _ONES, queue_scores1=_ONES), "both"),
        (
            lambda: losses.swav_loss(
                _ONES, _ONES, queue_scores1=np.ones((2, 5)), queue_scores2=np.ones((2, 5))
            ),
            "prototype columns",
        ),
        (lambda: losses.similarity_kl(_ONES, np.ones((4, 5))), "same"),
        (lambda: losses.dino_loss(_ONES, _ONES, np.zeros(5)), "center must have shape"),
    ],
)
def test_bad_shapes_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.info_nce(_ONES, _ONES, _ONES, temperature=0.0), "temperature must be > 0"),
        (lambda: losses.sinkhorn(_ONES, epsilon=-1.0), "epsilon must be > 0"),
        (lambda: losses.sinkhorn(_ONES, num_iters=0), "num_iters"),
        (lambda: losses.swav_loss(_ONES, _ONES, temperature=0), "temperature must be > 0"),
        (
            lambda: losses.similarity_kl(_ONES, _ONES, teacher_temperature=0.0),
            "teacher_temperature must be > 0",
        ),
        (
            lambda: losses.dino_loss(_ONES, _ONES, np.zeros(3), student_temperature=-0.1),
            "student_temperature must be > 0",
        ),
    ],
)
def test_bad_hyperparameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sinkhorn_and_swav_take_a_traced_num_iters():
    """``jax.jit(sinkhorn)(scores, num_iters=3)`` traces the keyword: the loop then runs that many
    rounds, as a static ``num_iters`` does."""
    scores = _cosine_scores(80, 6)
    np.testing.assert_allclose(
        jax.jit(losses.sinkhorn)(scores, num_iters=3),
        losses.sinkhorn(scores, num_iters=3),
        rtol=RTOL,
        atol=ATOL,
    )
    s1, s2 = scores, _cosine_scores(81, 6)
    value, grads = jax.jit(jax.value_and_grad(losses.swav_loss, argnums=(0, 1)))(
        s1, s2, num_iters=jnp.int32(5)
    )
    np.testing.assert_allclose(value, losses.swav_loss(s1, s2, num_iters=5), rtol=RTOL)
    assert all(np.all(np.isfinite(g)) for g in grads)
    with pytest.raises(
        TypeError, match="sinkhorn: num_iters must be an integer scalar.*num_iters=3"
    ):
        jax.jit(losses.sinkhorn)(scores, num_iters=3.0)


def test_l2_normalize_axis_is_keyword_only():
    x = _normal(82, (3, 4))
    np.testing.assert_allclose(
        losses.l2_normalize(x, axis=0), x / np.linalg.norm(x, axis=0, keepdims=True), rtol=RTOL
    )
    with pytest.raises(TypeError, match="positional argument"):
        losses.l2_normalize(x, 0)


# ---------------------------------------------------------------------------------------------
# Losses from solo-learn and lightly, against NumPy transcriptions of their reference code:
# lightly at commit e8d317fc5a87f4387a85a35e689869039ec249ee (lightly-ai/lightly) and solo-learn
# at commit 9187ea39c2c3f43c455ab06664d2b019a9802954 (vturrisi/solo-learn).


def np_dcl(out0, out1, temperature, sigma=None):
    """lightly ``lightly/loss/dcl_loss.py`` (DCLLoss.forward and _loss, and
    ``negative_mises_fisher_weights`` for DCLW), without gather_distributed."""
    out0, out1 = (
        _np_normalize(np.asarray(out0, np.float64)),
        _np_normalize(np.asarray(out1, np.float64)),
    )

    def weight_fn(a, b):
        similarity = np.einsum("nm,nm->n", a, b) / sigma
        return 2 - a.shape[0] * np.exp(_np_log_softmax(similarity))

    def loss(a, b):
        n = a.shape[0]
        sim_00 = np.einsum("nc,mc->nm", a, a) / temperature
        sim_01 = np.einsum("nc,mc->nm", a, b) / temperature
        positive_loss = -np.diag(sim_01)
        if sigma is not None:
            positive_loss = positive_loss * weight_fn(a, b)
        off = ~np.eye(n, dtype=bool)
        all_negs = np.concatenate([sim_00[off].reshape(n, -1), sim_01[off].reshape(n, -1)], axis=1)
        peak = all_negs.max(axis=1)
        negative_loss = peak + np.log(np.exp(all_negs - peak[:, None]).sum(axis=1))
        return np.mean(positive_loss + negative_loss)

    return 0.5 * (loss(out0, out1) + loss(out1, out0))


def np_tico(z_a, z_b, c, beta, rho):
    """lightly ``lightly/loss/tico_loss.py`` (TiCoLoss.forward with self.C = c)."""
    z_a, z_b = (
        _np_normalize(np.asarray(z_a, np.float64)),
        _np_normalize(np.asarray(z_b, np.float64)),
    )
    b_matrix = z_a.T @ z_a / z_a.shape[0]
    c = beta * c + (1 - beta) * b_matrix
    transformative_invariance_loss = 1.0 - (z_a * z_b).sum(axis=1).mean()
    covariance_contrast_loss = rho * ((z_a @ c) * z_a).sum(axis=1).mean()
    return transformative_invariance_loss + covariance_contrast_loss, c


def np_find_nn(z, queue):
    """solo-learn ``solo/methods/nnclr.py`` (NNCLR.find_nn on the normalised z and queue)."""
    z, queue = (_np_normalize(np.asarray(a, np.float64)) for a in (z, queue))
    idx = np.argmax(z @ queue.T, axis=1)
    return queue[idx], idx


def np_nnclr(nn, p, temperature):
    """solo-learn ``solo/losses/nnclr.py`` (nnclr_loss_func on one process)."""
    nn, p = (_np_normalize(np.asarray(a, np.float64)) for a in (nn, p))
    log_prob = _np_log_softmax(nn @ p.T / temperature)
    return -np.mean([log_prob[i, i] for i in range(len(nn))])


def np_ressl(q, k, queue, temperature_q, temperature_k):
    """solo-learn ``solo/losses/ressl.py`` (ressl_loss_func), on q, k and queue normalised as
    ``solo/methods/ressl.py`` gives them."""
    q, k, queue = (_np_normalize(np.asarray(a, np.float64)) for a in (q, k, queue))
    logits_q, logits_k = q @ queue.T, k @ queue.T
    targets = np.exp(_np_log_softmax(logits_k / temperature_k))
    return -np.mean(np.sum(targets * _np_log_softmax(logits_q / temperature_q), axis=1))


def np_whitening2d(x, eps):
    """solo-learn ``solo/utils/whitening.py`` (Whitening2d.forward; the conv2d with a 1 x 1
    kernel is the product with inv_sqrt)."""
    x = np.asarray(x, np.float64)
    xn = x - x.mean(axis=0)
    f_cov = xn.T @ xn / (len(x) - 1)
    f_cov_shrinked = (1 - eps) * f_cov + eps * np.eye(x.shape[1])
    inv_sqrt = np.linalg.inv(np.linalg.cholesky(f_cov_shrinked))  # triangular_solve(eye, L)
    return np.einsum("oi,ni->no", inv_sqrt, xn)


def np_wmse(v1, v2, perm, whitening_size, eps):
    """solo-learn ``solo/methods/wmse.py`` (training_step, one whitening iteration, two crops,
    the sub-batches ``perm.view(-1, whitening_size)``) and ``solo/losses/wmse.py``."""
    z1, z2 = np.empty_like(v1, np.float64), np.empty_like(v2, np.float64)
    for idx in np.asarray(perm).reshape(-1, whitening_size):
        z1[idx] = np_whitening2d(v1[idx], eps)
        z2[idx] = np_whitening2d(v2[idx], eps)
    return 2 - 2 * np.mean(np.sum(_np_normalize(z1) * _np_normalize(z2), axis=-1))


def np_deepclusterv2(outputs, assignments, temperature):
    """solo-learn ``solo/losses/deepclusterv2.py`` (outputs P x V x N x C, assignments P x N)."""
    loss = 0.0
    for h in range(outputs.shape[0]):
        scores = np.asarray(outputs[h], np.float64).reshape(-1, outputs.shape[-1]) / temperature
        targets = np.tile(assignments[h], outputs.shape[1])
        log_prob = _np_log_softmax(scores)
        picked = [log_prob[i, t] for i, t in enumerate(targets) if t != -1]
        loss += -np.mean(picked)  # F.cross_entropy(..., ignore_index=-1)
    return loss / outputs.shape[0]


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_dcl_and_dclw_match_numpy_reference(temperature):
    z1, z2 = _normal(90, (6, 5)), _normal(91, (6, 5))
    np.testing.assert_allclose(
        losses.dcl_loss(z1, z2, temperature=temperature), np_dcl(z1, z2, temperature), rtol=RTOL
    )
    for sigma in (0.5, 2.0):
        np.testing.assert_allclose(
            losses.dclw_loss(z1, z2, temperature=temperature, sigma=sigma),
            np_dcl(z1, z2, temperature, sigma),
            rtol=RTOL,
        )


def test_dcl_closed_form():
    # Orthonormal embeddings, identical views: the positive 1/tau, the 2B - 2 negatives 0.
    tau, b = 0.2, 3
    e = np.eye(4, dtype=np.float32)[:b]
    expected = -1 / tau + np.log(2 * b - 2)
    np.testing.assert_allclose(losses.dcl_loss(e, e, temperature=tau), expected, rtol=RTOL)
    # Equal positive cosines: every DCLW weight is 1, so DCLW is DCL.
    np.testing.assert_allclose(losses.dclw_loss(e, e, temperature=tau), expected, rtol=RTOL)


def test_tico_matches_numpy_reference():
    z1, z2 = _normal(92, (6, 5)), _normal(93, (6, 5))
    c = np.zeros((5, 5))
    for beta, rho in ((0.9, 8.0), (0.5, 2.0)):  # two steps: C carried from the first
        loss = losses.tico_loss(z1, z2, c.astype(np.float32), beta=beta, rho=rho)
        c_new = losses.tico_covariance(z1, c.astype(np.float32), beta=beta)
        expected_loss, expected_c = np_tico(z1, z2, c, beta, rho)
        np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
        np.testing.assert_allclose(c_new, expected_c, rtol=RTOL, atol=1e-7)
        c, z1 = expected_c, z2  # the next step's inputs
        z2 = _normal(94, (6, 5))


def test_tico_covariance_receives_no_gradient():
    z1, z2, c = _normal(95, (4, 3)), _normal(96, (4, 3)), np.eye(3, dtype=np.float32)
    grad_c = jax.grad(lambda c: losses.tico_loss(z1, z2, c))(c)
    np.testing.assert_array_equal(grad_c, np.zeros_like(grad_c))
    # The gradient is that of the loss with C' held fixed: beta = 1 keeps C' as given.
    c_new = losses.tico_covariance(z1, c)
    g = jax.grad(lambda a: losses.tico_loss(a, z2, c))(z1)
    g_fixed = jax.grad(lambda a: losses.tico_loss(a, z2, c_new, beta=1.0))(z1)
    np.testing.assert_allclose(g, g_fixed, rtol=RTOL, atol=ATOL)


def test_nnclr_matches_numpy_reference():
    z1, z2, p1, p2 = (_normal(97 + i, (6, 5)) for i in range(4))
    queue = _np_normalize(_normal(101, (9, 5))).astype(np.float32)
    nn1, idx1 = losses.nearest_neighbours(z1, queue)
    nn2, _ = losses.nearest_neighbours(z2, queue)
    expected_nn1, expected_idx1 = np_find_nn(z1, queue)
    np.testing.assert_array_equal(idx1, expected_idx1)
    np.testing.assert_allclose(nn1, expected_nn1, rtol=RTOL)
    loss = (losses.nnclr_loss(nn1, p2) + losses.nnclr_loss(nn2, p1)) / 2
    expected = (np_nnclr(expected_nn1, p2, 0.1) + np_nnclr(np_find_nn(z2, queue)[0], p1, 0.1)) / 2
    np.testing.assert_allclose(loss, expected, rtol=RTOL)
    np.testing.assert_allclose(
        losses.nnclr_loss(nn1, p2, temperature=0.5), np_nnclr(nn1, p2, 0.5), rtol=RTOL
    )
    # The neighbours are the support's rows as given, with no gradient into the support.
    raw = 3 * queue
    np.testing.assert_array_equal(losses.nearest_neighbours(z1, raw)[0], raw[idx1])
    g = jax.grad(lambda s: jnp.sum(losses.nearest_neighbours(z1, s)[0]))(raw)
    np.testing.assert_array_equal(g, np.zeros_like(g))


def test_ressl_matches_numpy_reference():
    q, k, queue = _normal(102, (6, 5)), _normal(103, (6, 5)), _normal(104, (7, 5))
    np.testing.assert_allclose(
        losses.ressl_loss(q, k, queue), np_ressl(q, k, queue, 0.1, 0.04), rtol=RTOL
    )
    np.testing.assert_allclose(
        losses.ressl_loss(q, k, queue, temperature_q=0.2, temperature_k=0.1),
        np_ressl(q, k, queue, 0.2, 0.1),
        rtol=RTOL,
    )
    grads = jax.grad(losses.ressl_loss, argnums=(1, 2))(q, k, queue)
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_whiten_and_wmse_match_numpy_reference(eps):
    v1, v2 = _normal(105, (12, 3)), _normal(106, (12, 3)) + _normal(107, (12, 3), scale=0.3)
    np.testing.assert_allclose(
        losses.whiten(v1, eps=eps), np_whitening2d(v1, eps), rtol=1e-4, atol=1e-5
    )
    # solo-learn's random sub-batches: permute the rows, whiten consecutive sub-batches of 6.
    perm = np.random.default_rng(4).permutation(12)
    np.testing.assert_allclose(
        losses.wmse_loss(v1[perm], v2[perm], whitening_size=6, eps=eps),
        np_wmse(v1, v2, perm, 6, eps),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        losses.wmse_loss(v1, v2, eps=eps), np_wmse(v1, v2, np.arange(12), 12, eps), rtol=1e-4
    )


def test_whiten_gives_each_sub_batch_identity_covariance():
    x = _normal(108, (12, 3), scale=2.0) + 5.0
    w = np.asarray(losses.whiten(x, whitening_size=6), np.float64)
    for rows in (slice(0, 6), slice(6, 12)):
        np.testing.assert_allclose(w[rows].mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.cov(w[rows], rowvar=False), np.eye(3), atol=1e-4)


def _primitives(jaxpr):
    """(name, input avals) of every equation of a jaxpr and of the jaxprs inside it."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name, [v.aval for v in eqn.invars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _primitives(inner)


def test_whiten_calls_lapack_one_matrix_at_a_time():
    """Batched LAPACK calls can deadlock XLA's CPU thread pool (see ``whiten``): the Cholesky
    factorisations and triangular solves of the forward and backward passes take one matrix."""
    grad = jax.grad(lambda x: losses.wmse_loss(x, 2 * x, whitening_size=4))
    found = [
        (name, avals)
        for name, avals in _primitives(jax.make_jaxpr(grad)(_normal(130, (8, 3))).jaxpr)
        if name in ("cholesky", "triangular_solve")
    ]
    assert {name for name, _ in found} == {"cholesky", "triangular_solve"}
    assert all(aval.ndim == 2 for _, avals in found for aval in avals), found


def test_deepclusterv2_matches_numpy_reference():
    heads, views, b, k = 2, 2, 6, 5
    outputs = np.stack(
        [np.stack([_cosine_scores(110 + 2 * h + v, b, k) for v in range(views)]) for h in range(2)]
    )
    assignments = np.random.default_rng(5).integers(-1, k, (heads, b)).astype(np.int32)
    assignments[:, 0] = 1  # at least one assigned row per head
    for temperature in (0.1, 0.5):
        value = np.mean(
            [
                losses.deepclusterv2_loss(outputs[h, v], assignments[h], temperature=temperature)
                for h in range(heads)
                for v in range(views)
            ]
        )
        np.testing.assert_allclose(
            value, np_deepclusterv2(outputs, assignments, temperature), rtol=RTOL
        )
    # No assigned row: 0, not NaN.
    assert losses.deepclusterv2_loss(outputs[0, 0], np.full(b, -1)) == 0


_TRANSCRIBED_LOSSES = {
    "dcl_loss": losses.dcl_loss,
    "dclw_loss": losses.dclw_loss,
    "tico_loss": lambda a, b: losses.tico_loss(a, b, 0.1 * jnp.eye(a.shape[1])),
    "nnclr_loss": losses.nnclr_loss,
    "ressl_loss": lambda a, b: losses.ressl_loss(a, b, _normal(120, (5, a.shape[1]))),
    "wmse_loss": functools.partial(losses.wmse_loss, whitening_size=4),
    "deepclusterv2_loss": lambda a, b: losses.deepclusterv2_loss(
        a @ b.T, jnp.arange(a.shape[0]) % 3 - 1
    ),
}


@pytest.mark.parametrize("name", sorted(_TRANSCRIBED_LOSSES))
def test_transcribed_losses_have_finite_gradients_for_equal_views(name):
    z = _normal(121, (8, 3))
    value, grad = jax.value_and_grad(_TRANSCRIBED_LOSSES[name])(z, z)
    assert np.isfinite(value) and value.dtype == jnp.float32
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("name", ["dcl_loss", "nnclr_loss", "wmse_loss"])
def test_transcribed_losses_gradients_match_finite_differences(name):
    z1, z2 = _normal(122, (6, 3)).astype(np.float64), _normal(123, (6, 3)).astype(np.float64)
    fn, reference = {
        "dcl_loss": (
            functools.partial(losses.dcl_loss, temperature=0.5),
            lambda a, b: np_dcl(a, b, 0.5),
        ),
        "nnclr_loss": (
            functools.partial(losses.nnclr_loss, temperature=0.5),
            lambda a, b: np_nnclr(a, b, 0.5),
        ),
        "wmse_loss": (
            functools.partial(losses.wmse_loss, whitening_size=6),
            lambda a, b: np_wmse(a, b, np.arange(6), 6, 0.0),
        ),
    }[name]
    with jax.enable_x64(True):
        g1, g2 = jax.grad(fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
    rng = np.random.default_rng(10)
    for _ in range(3):
        d1, d2 = rng.standard_normal(z1.shape), rng.standard_normal(z2.shape)
        numeric = _central_difference(lambda t: reference(z1 + t * d1, z2 + t * d2), 0.0, 1.0, 1e-6)
        analytic = np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: losses.dcl_loss(_ONES, _ONES[:3]), "same"),
        (lambda: losses.dclw_loss(_ONES[:1], _ONES[:1]), "at least 2"),
        (lambda: losses.dcl_loss(_ONES, _ONES, temperature=0.0), "temperature must be > 0"),
        (lambda: losses.dclw_loss(_ONES, _ONES, sigma=-1.0), "sigma must be > 0"),
        (lambda: losses.tico_loss(_ONES, _ONES, np.zeros((4, 4))), "covariance must be"),
        (lambda: losses.tico_covariance(_ONES, np.zeros((4, 4))), "covariance must be"),
        (lambda: losses.nearest_neighbours(_ONES, np.ones((5, 2))), "support must be"),
        (lambda: losses.nnclr_loss(_ONES, _ONES, temperature=-1), "temperature must be > 0"),
        (lambda: losses.ressl_loss(_ONES, _ONES, np.ones((3,))), "queue must be"),
        (lambda: losses.ressl_loss(_ONES, _ONES, _ONES, temperature_k=0), "temperature_k must"),
        (lambda: losses.whiten(_ONES, whitening_size=3), "divides the global batch"),
        (lambda: losses.wmse_loss(_ONES, _ONES, whitening_size=1), "divides the global batch"),
        (lambda: losses.deepclusterv2_loss(_ONES, np.zeros(3, int)), "assignments must be"),
    ],
)
def test_transcribed_losses_reject_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# Alignment and uniformity, KoLeo, MMCR, VIbCReg, FroSSL: NumPy transcriptions of the reference
# code (SsnL/align_uniform align_uniform/__init__.py; lightly-ai/lightly e8d317f
# lightly/loss/{hypersphere,koleo,mmcr,frossl}_loss.py; vturrisi/solo-learn 9187ea3
# solo/losses/vibcreg.py and vicreg.py), torch functions spelled out in NumPy.


def np_align(x, y, alpha):
    return np.mean(np.linalg.norm(x - y, axis=1) ** alpha)


def np_uniform(x, t):
    i, j = np.triu_indices(len(x), 1)  # torch.pdist's pairs
    return np.log(np.mean(np.exp(-t * np.linalg.norm(x[i] - x[j], axis=1) ** 2)))


def np_hypersphere(z_a, z_b, t, lam, alpha):
    x, y = _np_normalize(z_a), _np_normalize(z_b)
    return np_align(x, y, alpha) + lam * (np_uniform(x, t) + np_uniform(y, t)) / 2


def np_koleo(x, eps):
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = x @ x.T
    np.fill_diagonal(dots, -1)
    nn = dots.argmax(axis=1)
    distance = np.linalg.norm(x - x[nn] + eps, axis=-1)  # nn.PairwiseDistance(2, eps)
    return -np.mean(np.log(distance + eps))


def np_mmcr(online, momentum, lmda):
    z = np.concatenate([online, momentum], axis=1)  # [B, 2k, D]
    c = z.mean(axis=1)
    s_z = np.linalg.svd(z, compute_uv=False)
    s_c = np.linalg.svd(c, compute_uv=False)
    return -np.sum(s_c) + lmda * np.sum(s_z) / z.shape[0]


def np_vibcreg(z1, z2, sim_w, var_w, cov_w):
    def normalise_columns(z):
        z = z - z.mean(axis=0)
        return z / np.maximum(np.linalg.norm(z, axis=0), 1e-12)

    def off_diagonal_mean(z):
        g = z.T @ z
        np.fill_diagonal(g, 0.0)
        return np.mean(g**2)

    invariance = np.mean((z1 - z2) ** 2)
    variance = sum(
        np.mean(np.maximum(1 - np.sqrt(z.var(axis=0, ddof=1) + 1e-4), 0)) for z in (z1, z2)
    )
    covariance = off_diagonal_mean(normalise_columns(z1)) + off_diagonal_mean(normalise_columns(z2))
    return sim_w * invariance + var_w * variance + cov_w * covariance


def np_frossl(z_views, invariance_weight):
    v, dim = len(z_views), z_views[0].shape[1]
    normalized = [z / np.maximum(np.linalg.norm(z, axis=0), 1e-12) for z in z_views]
    average = np.mean(np.stack(normalized), axis=0)
    regularization = invariance = 0.0
    for z in normalized:
        cov = z.T @ z if z.shape[0] > dim else z @ z.T
        cov = cov / np.trace(cov)
        regularization += 2 * np.log(np.linalg.norm(cov, "fro"))
        invariance += v * dim * np.mean((z - average) ** 2)
    return regularization + invariance_weight * invariance


@pytest.mark.parametrize("alpha, t, lam", [(2.0, 2.0, 1.0), (1.0, 1.0, 0.5)])
def test_hypersphere_losses_match_numpy_reference(alpha, t, lam):
    z1, z2 = _normal(130, (7, 5)), _normal(131, (7, 5))
    u1, u2 = _np_normalize(z1), _np_normalize(z2)
    np.testing.assert_allclose(
        losses.alignment_loss(z1, z2, alpha=alpha), np_align(u1, u2, alpha), rtol=RTOL
    )
    np.testing.assert_allclose(losses.uniformity_loss(z1, t=t), np_uniform(u1, t), rtol=RTOL)
    np.testing.assert_allclose(
        losses.hypersphere_loss(z1, z2, alpha=alpha, t=t, uniformity_weight=lam),
        np_hypersphere(z1, z2, t, lam, alpha),
        rtol=RTOL,
    )


def test_koleo_matches_numpy_reference():
    z = _normal(132, (9, 4))
    np.testing.assert_allclose(losses.koleo_loss(z), np_koleo(z, 1e-8), rtol=RTOL)
    np.testing.assert_allclose(losses.koleo_loss(z, eps=0.1), np_koleo(z, 0.1), rtol=RTOL)


@pytest.mark.parametrize("k, dim, lambd", [(1, 5, 0.0), (2, 3, 5e-3), (2, 6, 0.3)])
def test_mmcr_matches_numpy_reference(k, dim, lambd):
    online = _np_normalize(_normal(133, (6, k, dim))).astype(np.float32)
    momentum = _np_normalize(_normal(134, (6, k, dim))).astype(np.float32)
    views = (*online.swapaxes(0, 1), *momentum.swapaxes(0, 1))
    np.testing.assert_allclose(
        losses.mmcr_loss(views, lambd=lambd), np_mmcr(online, momentum, lambd), rtol=RTOL
    )


def test_vibcreg_matches_numpy_reference():
    z1, z2 = _normal(135, (6, 4)), _normal(136, (6, 4), scale=0.5)
    np.testing.assert_allclose(
        losses.vibcreg_loss(z1, z2, sim_weight=2.0, var_weight=3.0, cov_weight=4.0),
        np_vibcreg(z1, z2, 2.0, 3.0, 4.0),
        rtol=RTOL,
    )


@pytest.mark.parametrize("rows, num_views", [(7, 2), (3, 3)])  # N > D and N < D
def test_frossl_matches_numpy_reference(rows, num_views):
    views = tuple(_normal(137 + v, (rows, 5)) for v in range(num_views))
    np.testing.assert_allclose(
        losses.frossl_loss(views, invariance_weight=0.5), np_frossl(views, 0.5), rtol=RTOL
    )


def test_added_losses_gradients_match_finite_differences():
    """Against the NumPy references in float64, on random directions (KoLeo's nearest
    neighbours stay fixed under the small steps)."""
    z1, z2 = _normal(140, (6, 4)).astype(np.float64), _normal(141, (6, 4)).astype(np.float64)
    cases = [
        (
            lambda a, b: losses.hypersphere_loss(a, b, alpha=1.5),
            lambda a, b: np_hypersphere(a, b, 2.0, 1.0, 1.5),
        ),
        (lambda a, b: losses.koleo_loss(a) + 0 * b.sum(), lambda a, b: np_koleo(a, 1e-8)),
        (
            lambda a, b: losses.mmcr_loss((a, b), lambd=0.1),
            lambda a, b: np_mmcr(_np_normalize(a)[:, None], _np_normalize(b)[:, None], 0.1),
        ),
        (losses.vibcreg_loss, lambda a, b: np_vibcreg(a, b, 25.0, 25.0, 200.0)),
        (lambda a, b: losses.frossl_loss((a, b)), lambda a, b: np_frossl((a, b), 1.0)),
    ]
    rng = np.random.default_rng(11)
    for fn, reference in cases:
        with jax.enable_x64(True):
            g1, g2 = jax.grad(fn, argnums=(0, 1))(jnp.asarray(z1), jnp.asarray(z2))
        d1, d2 = rng.standard_normal(z1.shape), rng.standard_normal(z2.shape)
        numeric = _central_difference(lambda t: reference(z1 + t * d1, z2 + t * d2), 0.0, 1.0, 1e-6)
        analytic = np.sum(np.asarray(g1) * d1) + np.sum(np.asarray(g2) * d2)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


_ADDED_LOSSES = {
    "alignment_loss": functools.partial(losses.alignment_loss, alpha=1.0),
    "uniformity_loss": lambda a, b: losses.uniformity_loss(a),
    "hypersphere_loss": losses.hypersphere_loss,
    "koleo_loss": lambda a, b: losses.koleo_loss(a),
    "mmcr_loss": lambda a, b: losses.mmcr_loss((a, b), lambd=0.1),
    "vibcreg_loss": losses.vibcreg_loss,
    "frossl_loss": lambda a, b: losses.frossl_loss((a, b)),
}


@pytest.mark.parametrize("name", sorted(_ADDED_LOSSES))
def test_added_losses_have_finite_gradients_for_equal_views_and_take_bf16(name):
    z = _normal(142, (8, 3))
    value, grad = jax.value_and_grad(_ADDED_LOSSES[name])(z, z)
    assert np.isfinite(value) and value.dtype == jnp.float32
    assert np.all(np.isfinite(grad))
    other = _normal(143, (8, 3))
    low = _ADDED_LOSSES[name](jnp.asarray(z, jnp.bfloat16), jnp.asarray(other, jnp.bfloat16))
    assert low.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: the inputs' rounding alone moves the loss by ~1e-2.
    np.testing.assert_allclose(low, _ADDED_LOSSES[name](z, other), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: losses.alignment_loss(_ONES, _ONES[:3]), ValueError, "same"),
        (lambda: losses.alignment_loss(_ONES, _ONES, alpha=0), ValueError, "alpha must be > 0"),
        (lambda: losses.uniformity_loss(_ONES[:1]), ValueError, "at least 2"),
        (lambda: losses.hypersphere_loss(_ONES, _ONES, t=-1.0), ValueError, "t must be > 0"),
        (lambda: losses.koleo_loss(_ONES[0]), ValueError, "2-D"),
        (lambda: losses.mmcr_loss(_ONES), TypeError, "tuple with one"),
        (lambda: losses.mmcr_loss((_ONES,)), ValueError, "at least 2 views"),
        (lambda: losses.mmcr_loss((_ONES, _ONES), lambd=-1.0), ValueError, "lambd must be >= 0"),
        (lambda: losses.vibcreg_loss(_ONES[:1], _ONES[:1]), ValueError, "at least 2"),
        (lambda: losses.frossl_loss((_ONES, _ONES[:, :2])), ValueError, "same"),
        (lambda: losses.frossl_loss(np.stack([_ONES, _ONES])), TypeError, "tuple with one"),
        (lambda: losses.macl_loss(_ONES, _ONES, temperature=0.0), ValueError, "temperature"),
        (lambda: losses.macl_loss(_ONES, _ONES, alpha=1.5), ValueError, "alpha must be in"),
        (lambda: losses.macl_loss(_ONES[:1], _ONES[:1]), ValueError, "at least 2"),
        (lambda: losses.co2_loss(_ONES, _ONES, _ONES.T), ValueError, "transpose a \\[D, K\\]"),
        (lambda: losses.co2_loss(_ONES[:1], _ONES[:1]), ValueError, "at least 2"),
        (lambda: losses.co2_loss(_ONES, _ONES, temperature=-1), ValueError, "temperature"),
        (lambda: losses.visreg_loss(_ONES, key=_KEY), TypeError, "tuple with one"),
        (lambda: losses.visreg_loss((), key=_KEY), ValueError, "at least 1 views"),
        (
            lambda: losses.visreg_loss((_ONES,), key=_KEY, local_views=(_ONES[:, :2],)),
            ValueError,
            "same",
        ),
        (lambda: losses.visreg_loss((_ONES,), key=_KEY, num_slices=0), ValueError, "num_slices"),
        (
            lambda: losses.visreg_loss((_ONES,), key=_KEY, lambda_param=2),
            ValueError,
            "lambda_param",
        ),
        (lambda: losses.visreg_loss((_ONES,), key=_KEY, lambda_shape=-1), ValueError, ">= 0"),
        (lambda: losses.visreg_terms((_ONES[:1],), key=_KEY), ValueError, "at least 2"),
    ],
)
def test_added_losses_reject_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# MACL, CO2, VISReg: NumPy transcriptions of lightly-ai/lightly e8d317f
# lightly/loss/macl_loss.py, lightly/loss/regularizer/co2.py and lightly/loss/visreg_loss.py
# (with lejepa_loss.lejepa_invariance_loss), torch functions spelled out in NumPy. ``frozen``
# fixes what the reference detaches, so that finite differences give the gradient it takes.

_KEY = jax.random.key(0)


def np_macl(z0, z1, temperature, alpha, a0, frozen=None):
    out = _np_normalize(np.concatenate([z0, z1]).astype(np.float64))
    b, n = len(z0), 2 * len(z0)
    cov = out @ out.T
    pos = np.array([cov[i, (i + b) % n] for i in range(n)])
    neg = np.array([[cov[i, j] for j in range(n) if j not in (i, (i + b) % n)] for i in range(n)])
    t = temperature * (1 + alpha * (pos.mean() - a0)) if frozen is None else frozen[0]
    log_pos = _np_log_softmax(np.concatenate([pos[:, None], neg], axis=1) / t)[:, 0]
    v = 1.0 / (1.0 - np.exp(log_pos) + 1e-8) if frozen is None else frozen[1]
    return np.mean(-v * log_pos), (t, v)


def np_co2(out0, out1, negatives, t, alpha):
    out0, out1 = (_np_normalize(np.asarray(a, np.float64)) for a in (out0, out1))

    def pseudo_labels(a, b):
        l_pos = np.sum(a * b, axis=1, keepdims=True)
        if negatives is None:
            l_neg = np.array(
                [[a[i] @ b[j] for j in range(len(a)) if j != i] for i in range(len(a))]
            )
        else:
            l_neg = a @ _np_normalize(np.asarray(negatives, np.float64)).T
        return _np_log_softmax(np.concatenate([l_pos, l_neg], axis=1) / t)

    p, q = pseudo_labels(out0, out1), pseudo_labels(out1, out0)

    def kl_div(inp, target):  # torch KLDivLoss(reduction="batchmean", log_target=True)
        return np.sum(np.exp(target) * (target - inp)) / len(inp)

    return alpha * 0.5 * (kl_div(p, q) + kl_div(q, p))


def np_visreg(global_proj, local_proj, slices, lambda_param, eps, frozen_std=None):
    global_proj, local_proj = (np.asarray(a, np.float64) for a in (global_proj, local_proj))
    proj = np.concatenate([global_proj, local_proj])  # [V, N, D]
    pred = np.mean((global_proj.mean(0) - proj) ** 2)
    n = proj.shape[1]
    std = proj.std(axis=-2, keepdims=True)
    scale = np.mean((1.0 - std) ** 2)
    z_norm = (proj - proj.mean(axis=-2, keepdims=True)) / (
        (std if frozen_std is None else frozen_std) + eps
    )
    directions = np.asarray(slices, np.float64)
    directions = directions / np.linalg.norm(directions, axis=0)
    quantiles = np.array([statistics.NormalDist().inv_cdf(i / (n + 1)) for i in range(1, n + 1)])
    shape = np.mean((np.sort(z_norm @ directions, axis=-2) - quantiles[:, None]) ** 2)
    center = np.mean(proj.mean(axis=-2) ** 2)
    terms = {"pred": pred, "center": center, "scale": scale, "shape": shape}
    return (1 - lambda_param) * pred + lambda_param * (scale + shape + center), terms, std


def _slices(key, dim, num_slices):
    return np.asarray(jax.random.normal(key, (dim, num_slices)))


@pytest.mark.parametrize("temperature, alpha, a0", [(0.1, 0.5, 0.0), (0.5, 1.0, 0.3)])
def test_macl_matches_numpy_reference(temperature, alpha, a0):
    """In float64, the value and the gradient, which holds the temperature and the weights
    fixed, as the reference's detach()."""
    z0, z1 = _normal(150, (6, 4)).astype(np.float64), _normal(151, (6, 4)).astype(np.float64)
    loss = functools.partial(losses.macl_loss, temperature=temperature, alpha=alpha, a0=a0)
    with jax.enable_x64(True):
        value, (g0, g1) = jax.device_get(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(z0, z1))
    expected, frozen = np_macl(z0, z1, temperature, alpha, a0)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    d0, d1 = np.random.default_rng(12).standard_normal((2, *z0.shape))
    numeric = _central_difference(
        lambda t: np_macl(z0 + t * d0, z1 + t * d1, temperature, alpha, a0, frozen)[0],
        0.0,
        1.0,
        1e-6,
    )
    np.testing.assert_allclose(np.sum(g0 * d0) + np.sum(g1 * d1), numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("with_queue", [False, True])
def test_co2_matches_numpy_reference(with_queue):
    """In float64, the value and the gradient in both views (the reference's torch.tensor
    detaches its result)."""
    z0, z1 = _normal(152, (6, 4)).astype(np.float64), _normal(153, (6, 4)).astype(np.float64)
    queue = _normal(154, (5, 4)).astype(np.float64) if with_queue else None

    def loss(a, b):
        return losses.co2_loss(a, b, queue, temperature=0.2, alpha=0.7)

    with jax.enable_x64(True):
        value, (g0, g1) = jax.device_get(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(z0, z1))
    np.testing.assert_allclose(value, np_co2(z0, z1, queue, 0.2, 0.7), rtol=1e-10)
    d0, d1 = np.random.default_rng(13).standard_normal((2, *z0.shape))
    numeric = _central_difference(
        lambda t: np_co2(z0 + t * d0, z1 + t * d1, queue, 0.2, 0.7), 0.0, 1.0, 1e-6
    )
    np.testing.assert_allclose(np.sum(g0 * d0) + np.sum(g1 * d1), numeric, rtol=1e-6, atol=1e-9)


def test_visreg_matches_numpy_reference():
    """Two global and three local views; in float64, the value, the terms and the gradient."""
    num_global = 2
    views = [_normal(160 + v, (7, 4)).astype(np.float64) for v in range(5)]
    slices = _slices(_KEY, 4, 16)
    expected, terms, std = np_visreg(
        np.stack(views[:num_global]), np.stack(views[num_global:]), slices, 0.6, 1e-4
    )

    def loss_and_terms(vs):
        kwargs = dict(key=_KEY, local_views=vs[num_global:], num_slices=16)
        loss = losses.visreg_loss(vs[:num_global], lambda_param=0.6, **kwargs)
        return loss, losses.visreg_terms(vs[:num_global], **kwargs)

    with jax.enable_x64(True):
        (value, got_terms), grads = jax.jit(jax.value_and_grad(loss_and_terms, has_aux=True))(views)
        value, got_terms, grads = jax.device_get((value, got_terms, grads))
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    chex.assert_trees_all_close(got_terms, terms, rtol=1e-10)
    # The gradient: the shape term standardises by a detached std, as the reference.
    directions = np.random.default_rng(14).standard_normal((len(views), 7, 4))

    def reference(t):
        moved = np.stack(views) + t * directions
        return np_visreg(moved[:num_global], moved[num_global:], slices, 0.6, 1e-4, std)[0]

    numeric = _central_difference(reference, 0.0, 1.0, 1e-6)
    np.testing.assert_allclose(np.sum(np.stack(grads) * directions), numeric, rtol=1e-6)


_NEW_LOSSES = {
    "macl_loss": losses.macl_loss,
    "co2_loss": losses.co2_loss,
    "co2_loss with a queue": lambda a, b: losses.co2_loss(a, b, _normal(144, (5, a.shape[1]))),
    "visreg_loss": lambda a, b: losses.visreg_loss((a,), local_views=(b,), key=_KEY),
}


@pytest.mark.parametrize("name", sorted(_NEW_LOSSES))
def test_new_losses_have_finite_gradients_and_take_bf16(name):
    """Finite gradients for equal views, for rows of zeros and for an all-zero batch (VISReg's
    std of a collapsed feature); bfloat16 inputs within the tolerance of their rounding. One
    compiled program per loss."""
    fn = _NEW_LOSSES[name]
    z, other = _normal(142, (8, 3)), _normal(143, (8, 3))
    zero_rows = z.copy()
    zero_rows[2:5] = 0.0

    def outputs(z, other, zero_rows):
        grad = jax.value_and_grad(fn, argnums=(0, 1))
        low = fn(z.astype(jnp.bfloat16), other.astype(jnp.bfloat16))
        return grad(z, z), grad(zero_rows, other), grad(0 * z, 0 * other), low, fn(z, other)

    *cases, low, high = jax.jit(outputs)(z, other, zero_rows)
    for value, grads in cases:
        assert np.isfinite(value) and value.dtype == jnp.float32
        assert all(np.all(np.isfinite(g)) for g in grads)
    assert low.dtype == jnp.float32
    # bfloat16 keeps 8 bits of mantissa: the inputs' rounding alone moves the loss by ~1e-2.
    np.testing.assert_allclose(low, high, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------------------------
# The namespace: the package docstring's catalogue, typed signatures, the GAN terms' new home.


def test_catalogue_lists_every_exported_name_once():
    entries = re.findall(r"^  ``(\w+)``", losses.__doc__, re.M)
    assert sorted(entries) == sorted(losses.__all__)
    assert len(set(losses.__all__)) == len(losses.__all__)


@pytest.mark.parametrize("module", [losses, gan])
def test_public_signatures_are_typed(module):
    for name in module.__all__:
        signature = inspect.signature(getattr(module, name))
        untyped = [p.name for p in signature.parameters.values() if p.annotation is p.empty]
        assert not untyped, f"{name}: parameters {untyped} have no type annotation"
        assert signature.return_annotation is not signature.empty, f"{name}: no return type"


def test_gan_terms_live_in_their_own_module():
    assert not set(gan.__all__) & set(losses.__all__)
    with pytest.raises(AttributeError, match="from cl_ssl.losses.gan import r1_penalty"):
        _ = losses.r1_penalty
