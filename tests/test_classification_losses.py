"""Tests of cl_ssl.losses.classification against NumPy transcriptions, on 1 and 4 devices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cl_ssl import losses

RTOL = ATOL = 1e-5
N_DEVICES = 4


def _logits(seed, batch=8, classes=5, scale=2.0):
    return (scale * np.random.default_rng(seed).standard_normal((batch, classes))).astype(
        np.float32
    )


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_soft_cross_entropy(student, teacher, temperature):
    """Row by row: -sum_k p_k log q_k with p = softmax(t / T), q = softmax(s / T); batch mean."""
    rows = []
    for s, t in zip(student, teacher, strict=True):
        p = np.exp(_np_log_softmax(t / temperature))
        rows.append(-np.sum(p * _np_log_softmax(s / temperature)))
    return np.mean(rows)


def np_labelled_cross_entropy(logits, labels):
    """PyTorch's cross_entropy(ignore_index=-1), 0 instead of NaN when nothing is labelled."""
    terms = [-_np_log_softmax(row)[y] for row, y in zip(logits, labels, strict=True) if y >= 0]
    return np.mean(terms) if terms else 0.0


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() >= N_DEVICES, "tests/conftest.py should force 4 CPU devices"
    return jax.make_mesh((N_DEVICES,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 4.0])
def test_soft_cross_entropy_matches_numpy(temperature):
    s, t = _logits(0), _logits(1)
    value = losses.soft_cross_entropy(s, t, temperature=temperature)
    np.testing.assert_allclose(value, np_soft_cross_entropy(s, t, temperature), rtol=RTOL)


def test_soft_cross_entropy_of_equal_logits_is_the_entropy_and_minimal():
    t = _logits(2)
    p = np.exp(_np_log_softmax(t))
    entropy = -np.mean(np.sum(p * np.log(p), axis=-1))
    np.testing.assert_allclose(losses.soft_cross_entropy(t, t), entropy, rtol=RTOL)
    assert losses.soft_cross_entropy(_logits(3), t) > entropy


def test_soft_cross_entropy_sends_no_gradient_to_the_teacher():
    s, t = _logits(4), _logits(5)
    g_student, g_teacher = jax.grad(losses.soft_cross_entropy, argnums=(0, 1))(s, t)
    assert np.abs(g_student).max() > 0
    np.testing.assert_array_equal(g_teacher, 0.0)
    # d/ds of the batch mean: (softmax(s) - softmax(t)) / B at T = 1.
    expected = (np.exp(_np_log_softmax(s)) - np.exp(_np_log_softmax(t))) / len(s)
    np.testing.assert_allclose(g_student, expected, atol=ATOL)


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3, 4, 0, 1, 2], [-1, 1, -1, 3, -1, -1, 4, -1], [-1] * 7 + [2], [-1] * 8],
    ids=["all", "half", "one", "none"],
)
def test_labelled_cross_entropy_matches_numpy(labels):
    logits, labels = _logits(6), np.array(labels, np.int32)
    value = losses.labelled_cross_entropy(logits, labels)
    np.testing.assert_allclose(value, np_labelled_cross_entropy(logits, labels), rtol=RTOL)


def test_unlabelled_rows_get_no_gradient_and_no_labels_none_at_all():
    logits, labels = _logits(7), np.array([-1, 1, -1, 3, -1, -1, 4, -1], np.int32)
    grad = jax.grad(losses.labelled_cross_entropy)(logits, labels)
    np.testing.assert_array_equal(grad[labels < 0], 0.0)
    assert np.abs(grad[labels >= 0]).min() > 0
    nothing = jax.grad(losses.labelled_cross_entropy)(logits, np.full(8, -1, np.int32))
    np.testing.assert_array_equal(nothing, 0.0)


@pytest.mark.parametrize("name", ["soft_cross_entropy", "labelled_cross_entropy"])
def test_one_device_equals_four(name, mesh):
    x = _logits(8, batch=8)
    if name == "soft_cross_entropy":
        fn, other = losses.soft_cross_entropy, _logits(9, batch=8)
    else:
        # Device 2 holds no label: the mean is over the global labelled rows.
        fn, other = losses.labelled_cross_entropy, np.array([0, -1, 2, 3, -1, -1, 4, 1], np.int32)
    loss_and_grad = jax.jit(jax.value_and_grad(fn))
    expected = loss_and_grad(x, other)
    sharding = NamedSharding(mesh, P("data"))
    sharded = loss_and_grad(jax.device_put(x, sharding), jax.device_put(other, sharding))
    chex.assert_trees_all_close(sharded, expected, rtol=RTOL, atol=ATOL)
    per_device = jax.shard_map(
        functools.partial(fn, axis_name="data"),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=P(),
    )
    manual = jax.jit(jax.value_and_grad(per_device))(x, other)
    chex.assert_trees_all_close(manual, expected, rtol=RTOL, atol=ATOL)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        losses.soft_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels must be"):
        losses.labelled_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.soft_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 3)), temperature=0.0)


# ---------------------------------------------------------------------------------------------
# Genifer's replay terms

OLD = np.array([True, False, True, False, False])  # classes of the earlier tasks
SEEN = np.array([True, True, True, True, False])  # and of the current one
ROWS = np.array([True, True, False, True, False, True, True, False])  # the generated rows


def np_old_class_distillation(student, teacher, old, seen, rows, temperature):
    """Per row: p = softmax over the old classes of t / T; log q = log_softmax over the seen
    classes of s / T, read on the old ones; -sum p log q, mean over the selected rows."""
    terms = []
    for s, t, keep in zip(student, teacher, rows, strict=True):
        if keep:
            p = np.exp(_np_log_softmax(t[old] / temperature))
            log_q = _np_log_softmax(s[seen] / temperature)[old[seen]]
            terms.append(-np.sum(p * log_q))
    return np.mean(terms) if terms else 0.0


def np_feature_distance(student, teacher, rows):
    diffs = (student - teacher).reshape(len(student), -1)
    terms = [
        np.sqrt(np.sum(d.astype(np.float64) ** 2)) for d, k in zip(diffs, rows, strict=True) if k
    ]
    return np.mean(terms) if terms else 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_old_class_distillation_matches_numpy(temperature):
    s, t = _logits(10), _logits(11)
    got = losses.old_class_distillation(
        s, t, old=OLD, seen=SEEN, rows=ROWS, temperature=temperature
    )
    expected = np_old_class_distillation(s, t, OLD, SEEN, ROWS, temperature)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_old_class_distillation_pushes_new_classes_down_and_spares_other_rows():
    """The student's new classes (seen, not old) get a positive gradient (their logits fall),
    unseen classes and unselected rows get none, and the teacher none at all."""
    s, t = _logits(12), _logits(13)
    grad_s, grad_t = jax.grad(
        lambda a, b: losses.old_class_distillation(a, b, old=OLD, seen=SEEN, rows=ROWS),
        argnums=(0, 1),
    )(s, t)
    assert np.all(np.asarray(grad_s)[ROWS][:, [1, 3]] > 0)
    np.testing.assert_array_equal(np.asarray(grad_s)[:, 4], 0.0)
    np.testing.assert_array_equal(np.asarray(grad_s)[~ROWS], 0.0)
    np.testing.assert_array_equal(grad_t, 0.0)
    none = losses.old_class_distillation(s, t, old=OLD, seen=SEEN, rows=np.zeros(8, bool))
    assert float(none) == 0.0


def test_feature_distance_matches_numpy_with_zero_gradient_at_zero_distance():
    rng = np.random.default_rng(14)
    a = rng.standard_normal((8, 3, 3, 4)).astype(np.float32)
    b = rng.standard_normal((8, 3, 3, 4)).astype(np.float32)
    b[0] = a[0]  # a selected row at distance 0
    got = losses.feature_distance(a, b, rows=ROWS)
    np.testing.assert_allclose(got, np_feature_distance(a, b, ROWS), rtol=RTOL, atol=ATOL)
    grad = jax.grad(lambda x: losses.feature_distance(x, b, rows=ROWS))(a)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(np.asarray(grad)[0], 0.0)
    assert np.abs(np.asarray(grad)[1]).sum() > 0
    with pytest.raises(ValueError, match="activations of one shape"):
        losses.feature_distance(a, b[:, :2], rows=ROWS)


@pytest.mark.parametrize("name", ["old_class_distillation", "feature_distance"])
def test_replay_terms_one_device_equals_four(name, mesh):
    """Device 3's rows (6, 7) hold one selected row, device 2's none."""
    if name == "old_class_distillation":
        fn = functools.partial(losses.old_class_distillation, old=OLD, seen=SEEN)
        x, other = _logits(15), _logits(16)
    else:
        fn = losses.feature_distance
        rng = np.random.default_rng(17)
        x, other = (rng.standard_normal((8, 2, 2, 3)).astype(np.float32) for _ in range(2))
    rows = np.array([True, True, False, True, False, False, True, False])
    loss_and_grad = jax.jit(jax.value_and_grad(lambda a, b, r: fn(a, b, rows=r)))
    expected = loss_and_grad(x, other, rows)
    sharding = NamedSharding(mesh, P("data"))
    sharded = loss_and_grad(*(jax.device_put(v, sharding) for v in (x, other, rows)))
    chex.assert_trees_all_close(sharded, expected, rtol=RTOL, atol=ATOL)
    per_device = jax.shard_map(
        lambda a, b, r: fn(a, b, rows=r, axis_name="data"),
        mesh=mesh,
        in_specs=(P("data"), P("data"), P("data")),
        out_specs=P(),
    )
    manual = jax.jit(jax.value_and_grad(per_device))(x, other, rows)
    chex.assert_trees_all_close(manual, expected, rtol=RTOL, atol=ATOL)
