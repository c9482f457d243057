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
