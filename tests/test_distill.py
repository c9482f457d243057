"""Tests of the distillation terms of cl_ssl.losses.distill (CaSSLe, Fini et al., CVPR 2022;
PFR, Gomez-Villa et al., CVPRW 2022): NumPy transcriptions of the formulas, closed forms,
stop-gradient on the teacher, finite differences, batch-permutation invariance and input checks.
The single-device, sharded-jit and shard_map paths are compared in tests/test_losses_sharded.py."""

import functools
import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from test_losses import np_barlow_twins

from cl_ssl import losses

RTOL = 1e-5
ATOL = 1e-5
N_DEVICES = 4


def _normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _views(seed, num_views=2, batch=6, dim=5, scale=1.0):
    return tuple(_normal(seed + v, (batch, dim), scale) for v in range(num_views))


def _np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _f64(views):
    return [np.asarray(v, np.float64) for v in views]


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= N_DEVICES, "tests/conftest.py should force 4 CPU devices"
    return jax.make_mesh((N_DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


# ---------------------------------------------------------------------------------------------
# NumPy references, written from CaSSLe's cassle/distillers/*.py and PFR's distiller with
# explicit loops, in float64.


def np_contrastive_distillation(predictions, targets, temperature):
    """P = n([p^1; p^2]), Z = n([z^1; z^2]); L = 1/2 [L_c(P, Z) + L_c(Z, P)], all 2B columns."""
    p = _np_normalize(np.concatenate(_f64(predictions)))
    z = _np_normalize(np.concatenate(_f64(targets)))

    def l_c(a, c):
        n = len(a)
        total = 0.0
        for i in range(n):
            denominator = sum(np.exp(a[i] @ c[j] / temperature) for j in range(n))
            total += -np.log(np.exp(a[i] @ c[i] / temperature) / denominator)
        return total / n

    return 0.5 * (l_c(p, z) + l_c(z, p))


def _np_mean_cosine(p, z):
    return np.mean(
        [p[i] @ z[i] / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(len(p))]
    )


def np_predictive_distillation(predictions, targets):
    pairs = zip(_f64(predictions), _f64(targets), strict=True)
    return np.mean([2 - 2 * _np_mean_cosine(p, z) for p, z in pairs])


def np_cosine_distillation(predictions, targets):
    pairs = zip(_f64(predictions), _f64(targets), strict=True)
    return -np.mean([_np_mean_cosine(p, z) for p, z in pairs])


def np_decorrelative_distillation(predictions, targets, lambd=5e-3, scale=0.1):
    pairs = zip(_f64(predictions), _f64(targets), strict=True)
    return np.mean([np_barlow_twins(p, z, lambd, scale) for p, z in pairs])


def np_mse_distillation(predictions, targets):
    per_view = []
    for p, z in zip(_f64(predictions), _f64(targets), strict=True):
        b, d = p.shape
        per_view.append(sum((p[i, k] - z[i, k]) ** 2 for i in range(b) for k in range(d)) / (b * d))
    return np.mean(per_view)


def np_knowledge_distillation(student_scores, teacher_scores, temperature=0.1):
    per_view = []
    for s, t in zip(_f64(student_scores), _f64(teacher_scores), strict=True):
        total = 0.0
        for i in range(len(s)):
            target = np.exp(t[i] / temperature) / np.sum(np.exp(t[i] / temperature))
            log_prob = _np_log_softmax(s[i] / temperature)
            total += -sum(target[k] * log_prob[k] for k in range(len(target)))
        per_view.append(total / len(s))
    return np.mean(per_view)


def np_similarity_distillation(
    predictions, targets, student_temperature=0.2, teacher_temperature=0.02
):
    per_view = []
    for p, z in zip(_f64(predictions), _f64(targets), strict=True):
        s, t = _np_normalize(p), _np_normalize(z)
        b = len(s)
        total = 0.0
        for i in range(b):
            others = [j for j in range(b) if j != i]
            teacher = np.array([t[i] @ t[j] / teacher_temperature for j in others])
            student = np.array([s[i] @ t[j] / student_temperature for j in others])
            log_p_t, log_p_s = _np_log_softmax(teacher), _np_log_softmax(student)
            total += sum(np.exp(log_p_t[k]) * (log_p_t[k] - log_p_s[k]) for k in range(len(others)))
        per_view.append(total / b)
    return np.mean(per_view)


# ---------------------------------------------------------------------------------------------
# Against the NumPy references


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_contrastive_distillation_matches_numpy_reference(num_views, temperature):
    ps, zs = _views(0, num_views), _views(10, num_views)
    value = losses.contrastive_distillation(ps, zs, temperature=temperature)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, np_contrastive_distillation(ps, zs, temperature), rtol=RTOL)


def test_contrastive_distillation_default_temperature_is_cassle():
    ps, zs = _views(1), _views(11)
    np.testing.assert_allclose(
        losses.contrastive_distillation(ps, zs), np_contrastive_distillation(ps, zs, 0.2), rtol=RTOL
    )


@pytest.mark.parametrize("num_views", [1, 2, 3])
def test_predictive_and_cosine_distillation_match_numpy_reference(num_views):
    ps, zs = _views(2, num_views), _views(12, num_views, scale=3.0)
    predictive = losses.predictive_distillation(ps, zs)
    cosine = losses.cosine_distillation(ps, zs)
    assert predictive.dtype == jnp.float32 and cosine.dtype == jnp.float32
    np.testing.assert_allclose(predictive, np_predictive_distillation(ps, zs), rtol=RTOL)
    np.testing.assert_allclose(cosine, np_cosine_distillation(ps, zs), rtol=RTOL)


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("lambd, scale", [(5e-3, 0.1), (0.5, 1.0), (0.02, 0.025)])
def test_decorrelative_distillation_matches_numpy_reference(num_views, lambd, scale):
    ps = _views(3, num_views)
    zs = tuple(z + 1.0 for z in _views(13, num_views, scale=3.0))
    np.testing.assert_allclose(
        losses.decorrelative_distillation(ps, zs, lambd=lambd, scale=scale),
        np_decorrelative_distillation(ps, zs, lambd, scale),
        rtol=RTOL,
    )


def test_decorrelative_distillation_defaults_are_cassle():
    ps, zs = _views(4), _views(14)
    np.testing.assert_allclose(
        losses.decorrelative_distillation(ps, zs),
        np_decorrelative_distillation(ps, zs, 5e-3, 0.1),
        rtol=RTOL,
    )


@pytest.mark.parametrize("num_views", [1, 2])
def test_mse_distillation_matches_numpy_reference(num_views):
    ps, zs = _views(5, num_views), _views(15, num_views, scale=2.0)
    np.testing.assert_allclose(
        losses.mse_distillation(ps, zs), np_mse_distillation(ps, zs), rtol=RTOL
    )


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("temperature", [0.1, 0.35])
def test_knowledge_distillation_matches_numpy_reference(num_views, temperature):
    # Cosine-like scores in [-1, 1], as W n(z) with unit prototypes; K = 7 != D.
    ss = tuple(np.tanh(s) for s in _views(6, num_views, dim=7))
    ts = tuple(np.tanh(t) for t in _views(16, num_views, dim=7))
    value = losses.knowledge_distillation(ss, ts, temperature=temperature)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, np_knowledge_distillation(ss, ts, temperature), rtol=RTOL)


def test_knowledge_distillation_default_temperature_is_cassle():
    ss = tuple(np.tanh(s) for s in _views(7, dim=7))
    ts = tuple(np.tanh(t) for t in _views(17, dim=7))
    np.testing.assert_allclose(
        losses.knowledge_distillation(ss, ts), np_knowledge_distillation(ss, ts, 0.1), rtol=RTOL
    )


@pytest.mark.parametrize("num_views", [1, 2])
@pytest.mark.parametrize("temperatures", [(0.2, 0.02), (0.1, 0.1), (0.05, 0.3)])
def test_similarity_distillation_matches_numpy_reference(num_views, temperatures):
    ps, zs = _views(8, num_views), _views(18, num_views)
    tau_s, tau_t = temperatures
    value = losses.similarity_distillation(
        ps, zs, student_temperature=tau_s, teacher_temperature=tau_t
    )
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, np_similarity_distillation(ps, zs, tau_s, tau_t), rtol=RTOL)


def test_similarity_distillation_defaults():
    ps, zs = _views(9), _views(19)
    np.testing.assert_allclose(
        losses.similarity_distillation(ps, zs),
        np_similarity_distillation(ps, zs, 0.2, 0.02),
        rtol=RTOL,
    )


def test_similarity_distillation_with_two_rows_has_one_anchor_and_zero_loss():
    # With B = 2 each row has a single anchor, so both distributions are the point mass: KL = 0.
    ps, zs = _views(20, batch=2), _views(21, batch=2)
    np.testing.assert_allclose(losses.similarity_distillation(ps, zs), 0.0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Closed forms


# Zero-mean, mutually orthogonal columns with biased variance 1 (a 4 x 3 Hadamard block).
_HADAMARD = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float32)


def test_contrastive_distillation_closed_forms():
    tau, b = 0.2, 3
    e = np.eye(2 * b, dtype=np.float32)
    # Every row of [P; Z] is its own orthonormal direction: the target scores 1/tau, the 2B - 1
    # other columns 0.
    views = (e[:b], e[b:])
    expected = np.log(1 + (2 * b - 1) * np.exp(-1 / tau))
    np.testing.assert_allclose(
        losses.contrastive_distillation(views, views, temperature=tau), expected, rtol=RTOL
    )
    # Both views identical: the other view of the same image is *not* masked out of the
    # denominator (as in cassle/losses/simclr.py::simclr_distill_loss_func), so it scores 1/tau
    # beside the target: log(2 + (2B - 2) e^-1/tau).
    same = (e[:b], e[:b])
    expected = np.log(2 + (2 * b - 2) * np.exp(-1 / tau))
    np.testing.assert_allclose(
        losses.contrastive_distillation(same, same, temperature=tau), expected, rtol=RTOL
    )
    # Collapsed: every score equal, a uniform pick among all 2B columns.
    c = np.ones((b, 4), np.float32)
    np.testing.assert_allclose(
        losses.contrastive_distillation((c, c), (c, 2 * c), temperature=tau),
        np.log(2 * b),
        rtol=RTOL,
    )


def test_predictive_and_cosine_distillation_closed_forms():
    ps = _views(30)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, (6, 1)).astype(np.float32)
    scaled = tuple(scale * p for p in ps)
    np.testing.assert_allclose(losses.predictive_distillation(ps, ps), 0.0, atol=ATOL)
    np.testing.assert_allclose(losses.predictive_distillation(ps, scaled), 0.0, atol=ATOL)
    np.testing.assert_allclose(losses.cosine_distillation(ps, ps), -1.0, rtol=RTOL)
    np.testing.assert_allclose(losses.cosine_distillation(scaled, ps), -1.0, rtol=RTOL)
    negated = tuple(-p for p in ps)
    np.testing.assert_allclose(losses.predictive_distillation(ps, negated), 4.0, rtol=RTOL)
    np.testing.assert_allclose(losses.cosine_distillation(ps, negated), 1.0, rtol=RTOL)
    # One view aligned, the other orthogonal: the views' mean, not their sum.
    e = np.eye(2, dtype=np.float32)
    np.testing.assert_allclose(
        losses.predictive_distillation((e, e), (e, e[::-1])), (0.0 + 2.0) / 2, atol=ATOL
    )
    np.testing.assert_allclose(
        losses.cosine_distillation((e, e), (e, e[::-1])), (-1.0 + 0.0) / 2, atol=ATOL
    )


def test_decorrelative_distillation_closed_forms():
    d, eps = 3, 1e-5
    # Identical decorrelated views: C = I / (1 + eps / var), var 1 in view 1 and 4 in view 2; only
    # the tiny BN-eps gap remains (a float32 difference of numbers near 1, hence the tolerance).
    views = (_HADAMARD, 2 * _HADAMARD + 1)
    np.testing.assert_allclose(
        losses.decorrelative_distillation(views, views, scale=1.0),
        0.5 * (d * (1 - 1 / (1 + eps)) ** 2 + d * (1 - 1 / (1 + eps / 4)) ** 2),
        rtol=5e-2,
        atol=1e-12,
    )
    # View 1 identical, view 2 opposite: mean of ~0 and scale * d * (1 + 1/(1+eps))^2.
    np.testing.assert_allclose(
        losses.decorrelative_distillation(views, (_HADAMARD, -_HADAMARD), scale=0.1),
        0.5 * (0.1 * d * (1 - 1 / (1 + eps)) ** 2 + 0.1 * d * (1 + 1 / (1 + eps)) ** 2),
        rtol=RTOL,
    )


def test_mse_distillation_closed_forms():
    ps = _views(31)
    np.testing.assert_array_equal(losses.mse_distillation(ps, ps), 0.0)
    np.testing.assert_allclose(
        losses.mse_distillation(ps, tuple(p + 0.5 for p in ps)), 0.25, rtol=RTOL
    )
    # Offsets 1 and 3 in the two views: (1 + 9) / 2.
    np.testing.assert_allclose(
        losses.mse_distillation(ps, (ps[0] - 1.0, ps[1] + 3.0)), 5.0, rtol=RTOL
    )


@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_knowledge_distillation_of_identical_scores_is_the_entropy(temperature):
    ss = tuple(np.tanh(s) for s in _views(32, dim=7))
    value = losses.knowledge_distillation(ss, ss, temperature=temperature)
    entropies = []
    for s in ss:
        log_q = _np_log_softmax(np.asarray(s, np.float64) / temperature)
        entropies.append(np.mean(-np.sum(np.exp(log_q) * log_q, axis=-1)))
    np.testing.assert_allclose(value, np.mean(entropies), rtol=RTOL)
    # Flat scores: uniform over K = 7 prototypes.
    flat = np.zeros((4, 7), np.float32)
    np.testing.assert_allclose(
        losses.knowledge_distillation((flat,), (flat,), temperature=temperature),
        np.log(7),
        rtol=RTOL,
    )
    # The cross-entropy is at least the teacher's entropy.
    other = tuple(np.tanh(s) for s in _views(33, dim=7))
    assert losses.knowledge_distillation(other, ss, temperature=temperature) > value


def test_similarity_distillation_closed_forms():
    ps = _views(34)
    scale = np.random.default_rng(1).uniform(0.1, 10.0, (6, 1)).astype(np.float32)
    for tau in (0.02, 0.2):
        np.testing.assert_allclose(
            losses.similarity_distillation(
                ps, ps, student_temperature=tau, teacher_temperature=tau
            ),
            0.0,
            atol=ATOL,
        )
        np.testing.assert_allclose(
            losses.similarity_distillation(
                tuple(scale * p for p in ps), ps, student_temperature=tau, teacher_temperature=tau
            ),
            0.0,
            atol=ATOL,
        )
    assert losses.similarity_distillation(_views(35), ps) > 0


# ---------------------------------------------------------------------------------------------
# Gradients: none to the teacher, finite differences


_TERMS = {
    # name: loss of (predictions, targets, *, axis_name=None); non-default hyper-parameters where
    # they change the computation's shape of errors (the defaults are covered above).
    "contrastive_distillation": functools.partial(losses.contrastive_distillation, temperature=0.5),
    "predictive_distillation": losses.predictive_distillation,
    "cosine_distillation": losses.cosine_distillation,
    "decorrelative_distillation": functools.partial(
        losses.decorrelative_distillation, lambd=0.3, scale=1.0
    ),
    "mse_distillation": losses.mse_distillation,
    "knowledge_distillation": functools.partial(losses.knowledge_distillation, temperature=0.3),
    "similarity_distillation": losses.similarity_distillation,
}


def _inputs(seed, batch=8, dim=4):
    return _views(seed, batch=batch, dim=dim, scale=0.5), _views(seed + 100, batch=batch, dim=dim)


@pytest.mark.parametrize("name", sorted(_TERMS))
def test_teacher_receives_no_gradient(name):
    fn = _TERMS[name]
    ps, zs = _inputs(40)
    grad_p, grad_z = jax.jit(jax.grad(fn, argnums=(0, 1)))(ps, zs)
    assert len(grad_z) == len(zs)
    for g in grad_z:
        np.testing.assert_array_equal(g, np.zeros_like(g), err_msg=name)
    # Every view's prediction receives a gradient.
    for g in grad_p:
        assert np.all(np.isfinite(g)) and np.any(g != 0), name


def _check_gradient_by_finite_differences(fn, np_fn, ps, zs, seed):
    ps64, zs64 = _f64(ps), _f64(zs)
    with jax.enable_x64(True):
        grad_p, grad_z = jax.jit(jax.grad(fn, argnums=(0, 1)))(
            tuple(jnp.asarray(p) for p in ps64), tuple(jnp.asarray(z) for z in zs64)
        )
        assert grad_p[0].dtype == jnp.float64
    for g in grad_z:
        np.testing.assert_array_equal(g, np.zeros_like(g))
    rng = np.random.default_rng(seed)
    h = 1e-6
    for _ in range(4):
        directions = [rng.standard_normal(p.shape) for p in ps64]
        plus = [p + h * d for p, d in zip(ps64, directions, strict=True)]
        minus = [p - h * d for p, d in zip(ps64, directions, strict=True)]
        numeric = (np_fn(plus, zs64) - np_fn(minus, zs64)) / (2 * h)
        analytic = sum(np.sum(np.asarray(g) * d) for g, d in zip(grad_p, directions, strict=True))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("num_views", [1, 2])
def test_contrastive_distillation_gradient_matches_finite_differences(num_views):
    ps, zs = _views(41, num_views, batch=4, dim=3), _views(51, num_views, batch=4, dim=3)
    tau = 0.3
    _check_gradient_by_finite_differences(
        functools.partial(losses.contrastive_distillation, temperature=tau),
        lambda p, z: np_contrastive_distillation(p, z, tau),
        ps,
        zs,
        seed=0,
    )


def test_contrastive_distillation_gradient_float32_matches_jnp_transcription():
    """In float32 too: jax.grad against jax.grad of a direct jnp transcription of the formula."""
    ps, zs = _inputs(42)
    tau = 0.2

    def transcription(predictions, targets):
        p = jnp.concatenate(predictions)
        p = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
        z = jnp.concatenate(targets)
        z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)

        def l_c(a, c):
            logits = a @ c.T / tau
            return -jnp.mean(jnp.diagonal(logits) - jax.scipy.special.logsumexp(logits, axis=-1))

        return 0.5 * (l_c(p, z) + l_c(z, p))

    got = jax.value_and_grad(losses.contrastive_distillation)(ps, zs)
    expected = jax.value_and_grad(transcription)(ps, zs)
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-6)


def test_similarity_distillation_gradient_matches_finite_differences():
    ps, zs = _views(43, batch=4, dim=3), _views(53, batch=4, dim=3)
    _check_gradient_by_finite_differences(
        functools.partial(
            losses.similarity_distillation, student_temperature=0.3, teacher_temperature=0.2
        ),
        lambda p, z: np_similarity_distillation(p, z, 0.3, 0.2),
        ps,
        zs,
        seed=1,
    )


def test_decorrelative_distillation_gradient_matches_finite_differences():
    ps, zs = _views(44, batch=5, dim=3), _views(54, batch=5, dim=3)
    _check_gradient_by_finite_differences(
        functools.partial(losses.decorrelative_distillation, lambd=0.3, scale=1.0),
        lambda p, z: np_decorrelative_distillation(p, z, 0.3, 1.0),
        ps,
        zs,
        seed=2,
    )


# ---------------------------------------------------------------------------------------------
# Invariances and dtypes


@pytest.mark.parametrize("name", sorted(_TERMS))
def test_invariant_to_batch_permutation(name):
    fn = _TERMS[name]
    ps, zs = _inputs(60)
    perm = np.random.default_rng(3).permutation(8)
    np.testing.assert_allclose(
        fn(tuple(p[perm] for p in ps), tuple(z[perm] for z in zs)),
        fn(ps, zs),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("name", sorted(_TERMS))
def test_invariant_to_view_order(name):
    fn = _TERMS[name]
    ps, zs = _inputs(61)
    np.testing.assert_allclose(fn(ps[::-1], zs[::-1]), fn(ps, zs), rtol=RTOL, atol=ATOL)


def test_normalising_terms_invariant_to_rescaling():
    ps, zs = _inputs(62)
    rng = np.random.default_rng(4)
    row_scale = [rng.uniform(0.1, 10.0, (8, 1)).astype(np.float32) for _ in ps]
    scaled_ps = tuple(s * p for s, p in zip(row_scale, ps, strict=True))
    scaled_zs = tuple(3 * z for z in zs)
    for fn in (
        losses.contrastive_distillation,
        losses.predictive_distillation,
        losses.cosine_distillation,
        losses.similarity_distillation,
    ):
        np.testing.assert_allclose(fn(scaled_ps, scaled_zs), fn(ps, zs), rtol=RTOL, atol=ATOL)
    # Barlow Twins standardises each feature (up to the BatchNorm eps).
    feature_scale = np.array([0.5, 2.0, 4.0, 8.0], np.float32)
    np.testing.assert_allclose(
        losses.decorrelative_distillation(tuple(p * feature_scale + 3.0 for p in ps), zs),
        losses.decorrelative_distillation(ps, zs),
        rtol=1e-4,
    )


def test_knowledge_distillation_invariant_to_per_row_score_shifts():
    ss, ts = _inputs(63)
    shift = np.random.default_rng(5).standard_normal((8, 1)).astype(np.float32)
    np.testing.assert_allclose(
        losses.knowledge_distillation(tuple(s + shift for s in ss), tuple(t - shift for t in ts)),
        losses.knowledge_distillation(ss, ts),
        rtol=RTOL,
    )


@pytest.mark.parametrize("name", sorted(_TERMS))
def test_bf16_inputs_compute_in_float32(name):
    fn = _TERMS[name]
    ps, zs = _inputs(64)
    ps16 = tuple(jnp.asarray(p, jnp.bfloat16) for p in ps)
    zs16 = tuple(jnp.asarray(z, jnp.bfloat16) for z in zs)
    value = fn(ps16, zs16)
    assert value.dtype == jnp.float32
    ps32 = tuple(np.asarray(p, np.float32) for p in ps16)
    zs32 = tuple(np.asarray(z, np.float32) for z in zs16)
    np.testing.assert_allclose(value, fn(ps32, zs32), rtol=RTOL, atol=ATOL)


def test_lists_are_accepted_as_views():
    ps, zs = _inputs(65)
    for fn in _TERMS.values():
        np.testing.assert_allclose(fn(list(ps), list(zs)), fn(ps, zs), rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# shard_map (the sharded paths against one device: tests/test_losses_sharded.py)


def test_similarity_distillation_batch_check_counts_global_rows_under_shard_map(mesh):
    per_device = jax.shard_map(
        functools.partial(losses.similarity_distillation, axis_name="data"),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=P(),
    )
    # One row per device is a global batch of 4: allowed, and equal to the single-device call.
    ps, zs = _inputs(71, batch=4)
    np.testing.assert_allclose(
        jax.jit(per_device)(ps, zs), losses.similarity_distillation(ps, zs), rtol=RTOL, atol=ATOL
    )


# ---------------------------------------------------------------------------------------------
# Errors


_ONES = np.ones((4, 3), np.float32)
_ALL_FNS = [
    losses.contrastive_distillation,
    losses.predictive_distillation,
    losses.cosine_distillation,
    losses.decorrelative_distillation,
    losses.mse_distillation,
    losses.knowledge_distillation,
    losses.similarity_distillation,
]
_FN_IDS = [fn.__name__ for fn in _ALL_FNS]


@pytest.mark.parametrize("fn", _ALL_FNS, ids=_FN_IDS)
@pytest.mark.parametrize(
    "predictions, targets",
    [
        ((_ONES, _ONES), (_ONES,)),
        ((_ONES,), (_ONES, _ONES)),
        ((), ()),
    ],
    ids=["2 vs 1", "1 vs 2", "none"],
)
def test_mismatched_number_of_views_raises(fn, predictions, targets):
    with pytest.raises(ValueError, match="one prediction and one teacher output per view") as info:
        fn(predictions, targets)
    assert fn.__name__ in str(info.value)
    assert f"{len(predictions)} predictions and {len(targets)} teacher outputs" in str(info.value)


@pytest.mark.parametrize("fn", _ALL_FNS, ids=_FN_IDS)
@pytest.mark.parametrize(
    "predictions, targets, bad",
    [
        (_ONES, _ONES, 0),
        ((_ONES,), _ONES, 1),
        (np.stack([_ONES, _ONES]), (_ONES, _ONES), 0),  # views stacked in one array
    ],
    ids=["both arrays", "targets array", "stacked views"],
)
def test_an_array_in_place_of_a_tuple_of_views_raises(fn, predictions, targets, bad):
    with pytest.raises(TypeError, match=r"one \[batch, dim\] array per view") as info:
        fn(predictions, targets)
    message = str(info.value)
    name = list(inspect.signature(fn).parameters)[bad]
    assert message.startswith(f"{fn.__name__}: {name} must be a tuple")
    assert f"got an array of shape {np.shape((predictions, targets)[bad])}" in message
    assert f"pass {name}=(view1, view2) for two views, or (view,) for one" in message


@pytest.mark.parametrize("fn", _ALL_FNS, ids=_FN_IDS)
@pytest.mark.parametrize(
    "predictions, targets, match",
    [
        ((_ONES, _ONES), (_ONES, np.ones((4, 2))), r"same \[batch, dim\] shape"),
        ((_ONES, _ONES), (_ONES[:3], _ONES), r"same \[batch, dim\] shape"),
        ((_ONES[0], _ONES[0]), (_ONES[0], _ONES[0]), "2-D"),
        ((_ONES, _ONES[None]), (_ONES, _ONES[None]), "2-D"),
    ],
    ids=["dim", "batch", "1-D", "3-D"],
)
def test_mismatched_shapes_raise(fn, predictions, targets, match):
    with pytest.raises(ValueError, match=match) as info:
        fn(predictions, targets)
    message = str(info.value)
    assert fn.__name__ in message
    # The message names the offending view.
    assert "predictions[" in message or "targets[" in message


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda v: losses.contrastive_distillation(v, v, temperature=0.0),
            "contrastive_distillation: temperature must be > 0",
        ),
        (
            lambda v: losses.contrastive_distillation(v, v, temperature=-0.2),
            "contrastive_distillation: temperature must be > 0",
        ),
        (
            lambda v: losses.knowledge_distillation(v, v, temperature=0.0),
            "knowledge_distillation: temperature must be > 0",
        ),
        (
            lambda v: losses.knowledge_distillation(v, v, temperature=-1.0),
            "knowledge_distillation: temperature must be > 0",
        ),
        (
            lambda v: losses.similarity_distillation(v, v, student_temperature=0.0),
            "student_temperature must be > 0",
        ),
        (
            lambda v: losses.similarity_distillation(v, v, teacher_temperature=-0.02),
            "teacher_temperature must be > 0",
        ),
    ],
)
def test_non_positive_temperature_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call((_ONES, _ONES))


@pytest.mark.parametrize(
    "fn",
    [losses.similarity_distillation, losses.decorrelative_distillation],
    ids=lambda fn: fn.__name__,
)
def test_single_row_batch_raises(fn):
    with pytest.raises(ValueError, match="at least 2"):
        fn((_ONES[:1], _ONES[:1]), (_ONES[:1], _ONES[:1]))


# ---------------------------------------------------------------------------------------------
# CCL's relational distillation


def np_relational_distillation(sq, sa, tq, ta, ts, tt, valid, anchor_valid):
    """Loops over the valid rows i and valid anchors j of CCL's builder.py l.232-255: KL of the
    teacher's softmax over S^T_i. / tt from the student's over S^S_i. / ts, then the mean."""
    sq, sa, tq, ta = (_np_normalize(np.asarray(x, np.float64)) for x in (sq, sa, tq, ta))
    cols = [j for j in range(len(sa)) if anchor_valid[j]]
    rows = []
    for i in range(len(sq)):
        if not valid[i]:
            continue
        s = np.array([sq[i] @ sa[j] for j in cols]) / ts
        t = np.array([tq[i] @ ta[j] for j in cols]) / tt
        log_ps, log_pt = _np_log_softmax(s), _np_log_softmax(t)
        rows.append(np.sum(np.exp(log_pt) * (log_pt - log_ps)))
    return np.mean(rows) if rows else 0.0


def _relational_inputs(seed, rows=8, anchors=8):
    return (
        _normal(seed, (rows, 5)),
        _normal(seed + 1, (anchors, 5)),
        _normal(seed + 2, (rows, 5)),
        _normal(seed + 3, (anchors, 5)),
    )


@pytest.mark.parametrize(
    "valid, anchor_valid, anchors",
    [
        (None, None, 8),
        ([1, 0, 1, 1, 0, 0, 1, 0], None, 8),  # the rows' mask also masks their anchors
        ([1, 1, 0, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0], 5),
        ([0] * 8, None, 8),
    ],
    ids=["all", "replayed rows", "own anchor mask", "none"],
)
def test_relational_distillation_matches_numpy(valid, anchor_valid, anchors):
    sq, sa, tq, ta = _relational_inputs(80, anchors=anchors)
    kwargs = {}
    if valid is not None:
        kwargs["valid"] = np.array(valid, bool)
    if anchor_valid is not None:
        kwargs["anchor_valid"] = np.array(anchor_valid, bool)
    value = losses.relational_distillation(
        sq, sa, tq, ta, student_temperature=0.07, teacher_temperature=0.04, **kwargs
    )
    rows_valid = np.ones(8, bool) if valid is None else np.array(valid, bool)
    cols_valid = (
        np.array(anchor_valid, bool)
        if anchor_valid is not None
        else (rows_valid if anchors == 8 else np.ones(anchors, bool))
    )
    expected = np_relational_distillation(sq, sa, tq, ta, 0.07, 0.04, rows_valid, cols_valid)
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)


def test_relational_distillation_trains_the_students_queries_and_anchors_only():
    sq, sa, tq, ta = _relational_inputs(90)
    valid = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    grads = jax.grad(
        lambda *x: losses.relational_distillation(*x, valid=valid), argnums=(0, 1, 2, 3)
    )(sq, sa, tq, ta)
    assert np.abs(grads[0][valid]).min() > 0 and np.abs(grads[1][valid]).min() > 0
    np.testing.assert_array_equal(grads[0][~valid], 0.0)  # rows that are not replayed
    np.testing.assert_array_equal(grads[1][~valid], 0.0)  # nor are their anchors
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)
    # A teacher equal to the student at equal temperatures: nothing to distil.
    same = losses.relational_distillation(
        sq, sa, sq, sa, student_temperature=0.1, teacher_temperature=0.1
    )
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
