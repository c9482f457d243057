"""The online linear probe: no gradient reaches the backbone, its BatchNorm effect on or off as
configured, its examples drawn from the protocol's pool only, and a whole run that trains it,
carries it across tasks and scores it after every task."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ONE_EPOCH, tiny_config

from cl_ssl import objectives
from cl_ssl import state as state_lib
from cl_ssl.evaluation import online

PROBE = online.OnlineProbe(num_classes=4, feature_dim=16, lr=0.1, updates_bn=True)


def _model_and_variables():
    objective = objectives.get_objective(objectives.resolve_config(tiny_config()))
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=True)
    return objective.model, variables


def test_the_probe_trains_on_stop_gradient_features_and_moves_batch_norm_as_configured():
    model, variables = _model_and_variables()
    images = jax.random.uniform(jax.random.PRNGKey(1), (8, 32, 32, 3))
    labels = jnp.arange(8) % 4
    probe = PROBE.init(jax.random.PRNGKey(2))
    assert probe["linear0"]["kernel"].shape == (16, 4)

    def ce(variables, probe):
        return PROBE.loss(model, variables, probe, images, labels)[0]

    backbone_grads, probe_grads = jax.grad(ce, argnums=(0, 1))(variables, probe)
    for g in jax.tree.leaves(backbone_grads):
        np.testing.assert_array_equal(g, 0.0)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(probe_grads))

    # The cross-entropy of the probe's logits on the train-mode backbone features, by hand.
    features, _ = model.apply(
        variables,
        images,
        train=True,
        mutable=["batch_stats"],
        method=lambda m, x, train: m.backbone(x, train=train),
    )
    logits = np.asarray(features) @ probe["linear0"]["kernel"] + probe["linear0"]["bias"]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    value, accuracy, moved = PROBE.loss(model, variables, probe, images, labels)
    np.testing.assert_allclose(value, -log_p[np.arange(8), labels].mean(), rtol=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(-1) == np.asarray(labels)))
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(moved, variables["batch_stats"])
    still = online.OnlineProbe(num_classes=4, feature_dim=16, lr=0.1, updates_bn=False)
    _, _, kept = still.loss(model, variables, probe, images, labels)
    chex.assert_trees_all_equal(kept, variables["batch_stats"])


def test_each_epoch_draws_from_the_pool_only_a_shuffle_of_it_at_a_time():
    pool = np.array([3, 8, 11, 20, 21])
    ids = online.epoch_ids(0, stage=1, epoch=2, pool=pool, size=12)
    assert ids.shape == (12,)
    for start in (0, 5):  # whole shuffles first, then the start of another
        assert sorted(ids[start : start + 5]) == pool.tolist()
    assert set(ids[10:]) <= set(pool)
    np.testing.assert_array_equal(ids, online.epoch_ids(0, 1, 2, pool, 12))  # resumable
    assert not np.array_equal(ids, online.epoch_ids(0, 1, 3, pool, 12))


def test_a_run_trains_the_probe_and_scores_it_after_every_task(finished_run):
    """The one-epoch run the device tests share (test_train: one and four devices, host memory)."""
    result, workdir = finished_run(tiny_config(**ONE_EPOCH))
    R = result["matrices"]["online"]
    assert R.shape == (3, 2) and np.all((R >= 0) & (R <= 100))
    assert set(result["matrices"]) == {"knn", "online"}
    assert result["traces"] == [1]
    probe = online.OnlineProbe(num_classes=10, feature_dim=16, lr=0.1, updates_bn=True)
    initial = probe.init(state_lib.run_keys(0).online)
    trained = result["state"].online_probe
    assert not np.allclose(trained["linear0"]["kernel"], initial["linear0"]["kernel"])
    assert "online" in (workdir / "results.md").read_text()
    # Row 0 is the untrained probe: no forward transfer against it (the kNN matrix keeps it).
    summaries = json.loads((workdir / "results.json").read_text())["summaries"]
    assert "forward_transfer" not in summaries["online"] and "forward_transfer" in summaries["knn"]
