"""Group BatchNorm (``model.batch_norm_group``) and MoCo's key shuffling
(``mocov2plus.shuffle_keys``): the per-GPU BatchNorm of CCL's DDP run (``VDIGPKU/
ContinualContrastiveLearning`` ``train.py`` l.205-213, ``moco/builder.py`` l.113-158, 194-200)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import shipped_config, tiny_objective_config

from cl_ssl import config as config_lib
from cl_ssl import objectives
from cl_ssl.models import resnet

EPS = 1e-5


def np_group_batch_norm(x, group, scale, bias, ra_mean, ra_var):
    """NumPy: each group of ``group`` rows normalised with its own mean and biased variance; the
    running statistics moved (momentum 0.1, PyTorch's) by the first group's statistics."""
    g = x.reshape(-1, group, *x.shape[1:]).astype(np.float64)
    axes = tuple(range(1, g.ndim - 1))
    mean, var = g.mean(axes, keepdims=True), g.var(axes, keepdims=True)
    y = ((g - mean) / np.sqrt(var + EPS) * scale + bias).reshape(x.shape)
    first = (0,) * (g.ndim - 1)
    return y, 0.9 * ra_mean + 0.1 * mean[first], 0.9 * ra_var + 0.1 * var[first]


def _bn_apply(group, x, variables):
    module = resnet.GroupBatchNorm(group) if group else resnet.batch_norm(True, jnp.float32, "bn")
    return module.apply(variables, x, mutable=["batch_stats"])


def test_group_batch_norm_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2, 2, 3)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
    scale, bias = rng.normal(size=3), rng.normal(size=3)
    ra_mean, ra_var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    variables = {
        "params": {
            "scale": jnp.asarray(scale, jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(ra_mean, jnp.float32),
            "var": jnp.asarray(ra_var, jnp.float32),
        },
    }
    y, updated = _bn_apply(2, jnp.asarray(x), variables)
    want_y, want_mean, want_var = np_group_batch_norm(x, 2, scale, bias, ra_mean, ra_var)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updated["batch_stats"]["var"], want_var, rtol=1e-5, atol=1e-6)
    # The whole batch as one group is Flax's BatchNorm: output and running statistics.
    y_all, upd_all = _bn_apply(6, jnp.asarray(x), variables)
    y_flax, upd_flax = _bn_apply(0, jnp.asarray(x), variables)
    np.testing.assert_allclose(y_all, y_flax, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(
            upd_all["batch_stats"][name], upd_flax["batch_stats"][name], rtol=1e-5, atol=1e-6
        )


def test_resnet_with_one_group_is_plain_batch_norm_and_inference_unchanged():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    plain = resnet.make_backbone("resnet_tiny")
    grouped = resnet.make_backbone("resnet_tiny", batch_norm_group=4)
    variables = plain.init(jax.random.PRNGKey(0), x, train=True)
    assert jax.tree.structure(grouped.init(jax.random.PRNGKey(0), x, train=True)) == (
        jax.tree.structure(variables)
    )
    f_plain, s_plain = plain.apply(variables, x, True, mutable=["batch_stats"])
    f_group, s_group = grouped.apply(variables, x, True, mutable=["batch_stats"])
    np.testing.assert_allclose(f_group, f_plain, rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s_group, s_plain
    )
    np.testing.assert_array_equal(
        grouped.apply(variables, x, False), plain.apply(variables, x, False)
    )


def _mocov2plus(**overrides):
    config = objectives.resolve_config(
        tiny_objective_config("mocov2plus", batch_size=8, **overrides)
    )
    objective = objectives.get_objective(config)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 8, 8, 3))
    params = objective.model.init(jax.random.PRNGKey(0), x, train=True)["params"]
    return objective, objective.init_state(params, jax.random.PRNGKey(3)), x


def test_shuffled_keys():
    # Whole-batch BatchNorm: the shuffle only reorders the float reductions.
    plain, state, x1 = _mocov2plus()
    shuffled, shuffled_state, _ = _mocov2plus(**{"mocov2plus.shuffle_keys": True})
    x2 = x1[::-1]
    want = plain.target(state, x1, x2)
    got = shuffled.target(shuffled_state, x1, x2)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g["projection"], w["projection"], rtol=1e-4, atol=1e-5)
    # Groups of 4: the keys of the rows shuffled into the first group are those of a whole-batch
    # key encoder run on those 4 rows alone, in the batch's order; they differ from unshuffled ones.
    grouped, grouped_state, _ = _mocov2plus(
        **{"mocov2plus.shuffle_keys": True, "model.batch_norm_group": 4}
    )
    k1, _ = grouped.target(grouped_state, x1, x2)
    perm = np.asarray(
        jax.random.permutation(jax.random.fold_in(grouped_state["shuffle_key"], 0), 8)
    )
    reference, _ = plain.target(state, x1[perm[:4]], x1[perm[:4]])
    np.testing.assert_allclose(
        k1["projection"][perm[:4]], reference["projection"], rtol=1e-4, atol=1e-5
    )
    unshuffled_groups, _, _ = _mocov2plus(**{"model.batch_norm_group": 4})
    k1_unshuffled, _ = unshuffled_groups.target(state, x1, x2)
    assert not np.allclose(k1["projection"], k1_unshuffled["projection"], atol=1e-3)
    # The next step draws another permutation.
    k = tuple(out["projection"] for out in (k1, k1))
    next_state = grouped.update_state(
        grouped_state, grouped_state["momentum"], k, {"momentum": jnp.float32(0.99)}
    )
    assert not np.array_equal(next_state["shuffle_key"], grouped_state["shuffle_key"])


def test_bad_group_sizes_are_refused_before_compiling():
    config = tiny_objective_config("mocov2plus", batch_size=8, **{"model.batch_norm_group": 3})
    with pytest.raises(ValueError, match="model.batch_norm_group=3 with batch_size=8"):
        config_lib.validate(config, num_devices=1)
    backbone = resnet.make_backbone("resnet_tiny", batch_norm_group=3)
    x = jnp.zeros((8, 8, 8, 3))
    variables = backbone.init(jax.random.PRNGKey(0), x[:1], train=True)
    with pytest.raises(ValueError, match="multiple of 3"):
        jax.eval_shape(lambda v: backbone.apply(v, x, True, mutable=["batch_stats"]), variables)


@pytest.mark.parametrize("name", ["cifar100", "imagenet100"])
def test_ccl_presets_use_group_batch_norm_and_shuffled_keys(name):
    c = objectives.resolve_config(shipped_config(name, "ccl"))
    config_lib.validate(c, num_devices=8)
    assert (c.model.batch_norm_group, c.ccl.group_size, c.mocov2plus.shuffle_keys) == (32, 32, True)
    assert c.batch_size % c.model.batch_norm_group == 0
