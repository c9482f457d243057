"""The supervised path: objective 'supervised', finetune_supervised and replay_supervised, the
growing output layer and the classifier's evaluation over the classes seen so far."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_split, shipped_config, tiny_config, train_data

from cl_ssl import optim
from cl_ssl import step as step_lib
from cl_ssl.data.augment import ViewConfig, augment_image, padded_random_crop
from cl_ssl.data.batch import Batch
from cl_ssl.objectives import get_objective, resolve_config
from cl_ssl.strategies import LossInputs, get_strategy, supervised


def supervised_config(strategy="replay_supervised", **overrides):
    return tiny_config(
        objective="supervised",
        strategy=strategy,
        **{
            "labels.fraction": 1.0,
            "replay.per_class": 2,
            "replay.selection": "random",
            "replay.batch_size": 4,
        },
        **overrides,
    )


def test_replay_supervised_keeps_labelled_exemplars_and_joins_them_from_the_second_task():
    """The memory and the seen classes in the state; the replay rows (with their labels) join
    the batch from the second task on. (genifer's whole run covers the supervised path's.)"""
    config, objective, strategy = _configured("replay_supervised")
    assert strategy.extends_batch_from == 1
    split = random_split(16, num_classes=4)
    state = strategy.init(
        objective.model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)), train=False),
        jax.random.PRNGKey(1),
        split,
    )
    assert set(state.buffers) == {"seen", "memory"} and "classifier" in state.trainable
    memory = state.buffers["memory"]
    assert memory.valid.shape[0] == config.replay.per_class * 4


# ---------------------------------------------------------------------------------------------
# The growing output layer


def test_seen_classes_are_those_of_the_tasks_so_far():
    data = train_data(8, tasks=np.array([0, 0, 1, 1, 2, 2, -1, -1]))  # classes cycle over 4
    for task, expected in ((0, [1, 1, 0, 0]), (1, [1, 1, 1, 1]), (2, [1, 1, 1, 1])):
        got = supervised.seen_classes(data, jnp.int32(task), 4)
        assert got.tolist() == [bool(e) for e in expected]
    data = train_data(8, tasks=np.array([0, 1, 1, 1, 1, 1, 1, 1]))
    assert supervised.seen_classes(data, jnp.int32(0), 6).tolist() == [True] + [False] * 5


def test_restrict_masks_unseen_classes_and_keeps_all_before_any():
    z = jnp.arange(6.0).reshape(2, 3)
    seen = jnp.array([True, False, True])
    assert np.array_equal(
        np.asarray(supervised.restrict(z, seen)), [[0, -np.inf, 2], [3, -np.inf, 5]]
    )
    assert np.array_equal(supervised.restrict(z, jnp.zeros(3, bool)), z)


def test_grow_redraws_the_unseen_columns_only():
    state = supervised.classifier_state(None, jax.random.PRNGKey(0), 5, 4)
    state = state.replace(buffers={"seen": jnp.array([True, True, False, False, False])})
    grown = supervised.grow(state, jax.random.PRNGKey(1))
    for name in ("kernel", "bias"):
        old = np.asarray(state.trainable["classifier"]["linear0"][name])
        new = np.asarray(grown.trainable["classifier"]["linear0"][name])
        assert np.array_equal(new[..., :2], old[..., :2])
        assert not np.isclose(new[..., 2:], old[..., 2:]).any()


# ---------------------------------------------------------------------------------------------
# The loss


def _configured(strategy="finetune_supervised", **overrides):
    config = resolve_config(supervised_config(strategy, **overrides))
    objective = get_objective(config)
    return config, objective, get_strategy(config, objective)


def _strategy(strategy="finetune_supervised", **overrides):
    _, objective, built = _configured(strategy, **overrides)
    return objective, built


def test_cross_entropy_over_the_seen_classes_reaches_the_backbone():
    """The CE equals a NumPy transcription on logits restricted to the classes of the tasks so
    far, skips unlabelled and invalid rows, and its gradient reaches the features."""
    _, strategy = _strategy()
    data = train_data(8, tasks=np.array([0, 0, 1, 1, 0, 0, 1, 1]))  # task 0: classes 0, 1
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    state = supervised.classifier_state(None, jax.random.PRNGKey(0), 4, 6)
    labels = jnp.array([0, 1, -1, 0])
    valid = jnp.array([True, True, True, False])

    def ce(f, task):
        inputs = LossInputs(
            outputs=({"features": f},),
            views=(),
            batch=_batch(labels, valid),
            params={},
            trainable=state.trainable,
            state=state,
            task=jnp.int32(task),
            hyper={},
            data=data,
        )
        return strategy.loss(inputs)[0]

    layer = state.trainable["classifier"]["linear0"]
    z = np.asarray(features) @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
    for task, classes in ((0, [0, 1]), (1, [0, 1, 2, 3])):
        kept = z[:, classes]
        log_p = kept - np.log(np.exp(kept).sum(1, keepdims=True))
        expected = -(log_p[0, 0] + log_p[1, 1]) / 2
        np.testing.assert_allclose(float(ce(features, task)), expected, rtol=1e-5)
    assert float(jnp.abs(jax.grad(ce)(features, 0)).sum()) > 0


def _batch(labels, valid):
    n = labels.shape[0]
    return Batch(
        images=jnp.zeros((n, 32, 32, 3), jnp.uint8),
        labels=labels,
        ids=jnp.arange(n),
        tasks=jnp.zeros(n, jnp.int32),
        valid=valid,
    )


def test_classify_scores_the_seen_classes_only():
    _, strategy = _strategy()
    state = supervised.classifier_state(None, jax.random.PRNGKey(0), 4, 6)
    features = jnp.ones((3, 6))
    everything = strategy.classify(state, features)
    assert np.isfinite(np.asarray(everything)).all()  # nothing seen yet: every class
    state = state.replace(buffers={"seen": jnp.array([False, True, True, False])})
    assert np.asarray(strategy.classify(state, features)).argmax(1).tolist() in (
        [1, 1, 1],
        [2, 2, 2],
    )


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(objective="simclr"), "set --config.objective=supervised"),
        (dict(strategy="cassle"), "would train nothing; choose one of the supervised"),
        (dict(**{"labels.fraction": 0.0}), "gives the learner none"),
    ],
)
def test_bad_settings_fail_before_compiling(overrides, message):
    config = supervised_config("finetune_supervised")
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = config
        for p in parents:
            target = target[p]
        target[leaf] = value
    if config.objective == "simclr":
        config.simclr.proj_hidden_dim, config.simclr.proj_output_dim = 32, 16
    resolved = resolve_config(config)
    with pytest.raises(ValueError, match=message):
        get_strategy(resolved, get_objective(resolved))


# ---------------------------------------------------------------------------------------------
# The real-data view


def test_padded_random_crop_matches_numpy():
    image = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    for u, (top, left) in (([0.0, 0.0], (0, 0)), ([0.999, 0.999], (6, 5)), ([0.5, 0.3], (3, 1))):
        got = padded_random_crop(jnp.asarray(u), jnp.asarray(image), size=4, padding=2)
        np.testing.assert_array_equal(got, padded[top : top + 4, left : left + 4])


def test_supervised_view_is_a_padded_crop_and_a_flip():
    """No colour change: every output pixel is an input pixel (standardised)."""
    view = ViewConfig(crop_size=8, crop_padding=2, jitter_prob=0.0, gray_prob=0.0)
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = np.asarray(augment_image(jax.random.PRNGKey(3), jnp.asarray(image), view))
    pixels = out * np.asarray(view.std) + np.asarray(view.mean)
    source = set(map(tuple, np.round(image.reshape(-1, 3) / 255.0, 5)))
    assert set(map(tuple, np.round(pixels.reshape(-1, 3), 5))) <= source
    with pytest.raises(ValueError, match="crop_padding must be >= 0"):
        ViewConfig(crop_padding=-1)


def test_genifer_preset_trains_with_sgd_then_radam_and_step_decay():
    """cifar100:genifer: lr 0.1 x0.2 at epochs 30, 60 and 80 on the first task; RAdam from 1e-4
    on the later ones, whose switch is on from the second stage; both optimizers' states kept."""
    config = resolve_config(shipped_config("cifar100", "genifer"))
    assert (config.objective, config.strategy, config.num_tasks) == ("supervised", "genifer", 6)
    objective = get_objective(config)
    strategy = get_strategy(config, objective)

    def hyper(stage):
        return step_lib.stage_hyper(
            config, objective, strategy, num_epochs=100, steps_per_epoch=2, stage=stage
        )

    first, later = hyper(0), hyper(1)
    np.testing.assert_allclose(
        first["lr"][[0, 59, 60, 119, 120, 159, 160, 199]],
        [0.1, 0.1, 0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008],
        rtol=1e-6,
    )
    np.testing.assert_allclose(later["lr"][[0, 60]], [1e-4, 2e-5], rtol=1e-6)
    assert first[step_lib.LATER_TASKS].max() == 0 and later[step_lib.LATER_TASKS].min() == 1
    tx = step_lib.make_tx(config, objective, strategy)
    state = tx.init(
        {"student": {"w": jnp.zeros(2)}, "strategy": {"c": jnp.zeros(3)}, "online_probe": {}}
    )
    assert isinstance(state.inner_states["default"].inner_state.inner_state, optim.SwitchState)
