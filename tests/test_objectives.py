"""Every objective in the pipeline: recipes, state updates, and 2 mock tasks end to end."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import initial_state, random_split, tiny_objective_config, train_data

from cl_ssl import config as config_lib
from cl_ssl import losses, memory, objectives, strategies
from cl_ssl import step as step_lib
from cl_ssl.objectives import base


def _knn_only(name, **overrides):
    """The tiny config of objective ``name``, evaluated by kNN only."""
    return tiny_objective_config(name, **{"eval.evaluators": ("knn",)}, **overrides)


# The objectives with a state or schedules carried through steps and tasks. SimCLR's run is
# test_train's; Barlow Twins, VICReg and SimSiam differ from it only in their loss and heads,
# which the step tests of test_strategies run; BYOL's momentum target and ISD's and DINO's EMA
# teachers follow MoCoV2+'s EMA, which the step tests check for each, as they do ISD's bank and
# DINO's centre and temperature warm-up.
STATEFUL = ("mocov2plus", "swav")


@pytest.mark.parametrize("name", STATEFUL)  # MoCoV2+'s run is the device test's too
def test_two_mock_tasks_end_to_end(finished_run, name):
    """Trains 2 tasks (4 steps each) and evaluates; the step traces once across the tasks."""
    result, _ = finished_run(_knn_only(name))
    R = result["matrices"]["knn"]
    assert R.shape == (3, 2) and np.all(np.isfinite(R))
    assert int(result["state"].task) == 2 and int(result["state"].step) > 0
    assert result["traces"] == [1]


# ---------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("name", objectives.OBJECTIVES)
def test_recipe_fills_the_unset_fields(name):
    config = config_lib.base_config()
    config.objective = name
    recipe = objectives._MODULES[name].RECIPE
    resolved = objectives.resolve_config(config)
    for key, value in recipe.optimizer.items():
        got = (
            resolved.optimizer.kwargs[key]
            if key == "exclude_bias_and_norm"
            else resolved.optimizer[key]
        )
        assert got == value, key
    for view, preset in zip(("view1", "view2"), recipe.views, strict=True):
        for key, value in preset.items():
            assert resolved.augment[view][key] == value, (view, key)
        assert None not in resolved.augment[view].to_dict().values()
    assert config.optimizer.lr is None  # the given config is left as it was


def test_given_values_win_over_the_recipe():
    config = config_lib.base_config()
    config.objective = "swav"
    config.optimizer.lr = 0.123
    config.optimizer.kwargs.exclude_bias_and_norm = True
    config.augment.view2.brightness = 0.0
    resolved = objectives.resolve_config(config)
    assert resolved.optimizer.lr == 0.123
    assert resolved.optimizer.kwargs.exclude_bias_and_norm is True
    assert resolved.augment.view2.brightness == 0.0
    assert resolved.optimizer.weight_decay == 1e-6  # still SwAV's
    assert resolved.augment.view1.brightness == 0.8


def test_cassle_cifar_recipes_match_the_reference_table():
    """Lr, wd, augmentation and the online probe's lr (--classifier_lr; VICReg's scripts pass none:
    cassle/methods/base.py's default 0.3) per objective in CaSSLe's bash_files/continual/cifar
    scripts."""
    expected = {
        "simclr": (0.4, 1e-5, 0.1, 0.8, 0.08, (0.0, 0.0)),
        "byol": (1.0, 1e-5, 0.1, 0.4, 0.08, (0.0, 0.2)),
        "barlow_twins": (0.3, 1e-4, 0.1, 0.4, 0.08, (0.0, 0.2)),
        "vicreg": (0.3, 1e-4, 0.3, 0.4, 0.2, (0.1, 0.1)),
        "swav": (0.6, 1e-6, 0.1, 0.8, 0.08, (0.0, 0.0)),
    }
    for name, (lr, wd, online_lr, brightness, min_scale, solarize) in expected.items():
        config = config_lib.base_config()
        config.objective = name
        r = objectives.resolve_config(config)
        assert (r.optimizer.lr, r.optimizer.weight_decay, r.eval.online_lr) == (lr, wd, online_lr)
        assert r.augment.view1.brightness == brightness and r.augment.view1.min_scale == min_scale
        assert (r.augment.view1.solarize_prob, r.augment.view2.solarize_prob) == solarize, name
    swav = objectives.resolve_config(config)
    assert swav.optimizer.min_lr == 6e-4 and swav.optimizer.kwargs.exclude_bias_and_norm is False


# ---------------------------------------------------------------------------------------------
# Queues and schedules


def test_queue_push_overwrites_the_oldest_rows():
    q = memory.zeros_queue(4, 1)
    q = memory.push(q, jnp.array([[1.0], [2.0]]))
    np.testing.assert_array_equal(q.items[:, 0], [1, 2, 0, 0])
    q = memory.push(q, jnp.array([[3.0], [4.0]]))
    q = memory.push(q, jnp.array([[5.0], [6.0]]))
    np.testing.assert_array_equal(q.items[:, 0], [5, 6, 3, 4])
    assert int(q.ptr) == 2


def test_random_unit_queue_has_unit_rows():
    q = memory.random_unit_queue(jax.random.PRNGKey(0), 8, 5)
    np.testing.assert_allclose(np.linalg.norm(q.items, axis=1), 1.0, rtol=1e-6)


def test_queue_capacity_must_tile_the_batch():
    with pytest.raises(ValueError, match="multiple of the global batch size 256.*set it to 4096"):
        memory.check_fits("mocov2plus.queue_size", 4000, 256)
    with pytest.raises(ValueError, match="mocov2plus.queue_size=12"):
        objectives.get_objective(
            objectives.resolve_config(
                tiny_objective_config("mocov2plus", **{"mocov2plus.queue_size": 12})
            )
        )


def test_cosine_momentum_schedule():
    tau = base.cosine_momentum(0.99, 1.0, 100)
    assert tau[0] == pytest.approx(0.99)
    assert np.all(np.diff(tau) > 0) and tau[-1] < 1.0
    assert tau[50] == pytest.approx(0.995)
    np.testing.assert_allclose(
        tau, 1.0 - 0.01 * (np.cos(np.pi * np.arange(100) / 100) + 1) / 2, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# One train step of each objective with state, on random images


@functools.cache
def _one_step(name, *, step=0, **overrides):
    """Computed once per worker: (objective, state before, state after, hyper, metrics) of one step at ``step`` of a task of
    2 epochs x 2 steps, on 8 random 32x32 images."""
    config = objectives.resolve_config(tiny_objective_config(name, **overrides))
    objective = objectives.get_objective(config)
    finetune = strategies.base.make_finetune(config, objective)
    tx = step_lib.make_tx(config, objective, finetune)
    state = initial_state(objective, finetune, tx, random_split(8))
    hyper = step_lib.stage_hyper(config, objective, finetune, num_epochs=2, steps_per_epoch=2)
    hyper = {k: jnp.asarray(v[step]) for k, v in hyper.items()}
    new, metrics = jax.jit(step_lib.build_step_fn(objective, finetune, tx, extend=False))(
        state, train_data(8), jnp.arange(8), hyper
    )
    return objective, state, new, hyper, metrics


@pytest.mark.parametrize("name", ["mocov2plus", "byol", "isd", "dino"])
def test_momentum_network_is_an_ema_of_the_student(name):
    """After a step, theta_m = tau theta_m + (1 - tau) theta (updated student); no gradient."""
    _, before, after, hyper, metrics = _one_step(name)
    tau = hyper["momentum"] if "momentum" in hyper else 0.99  # ISD: a constant m
    expected = jax.tree.map(
        lambda m, p: tau * m + (1 - tau) * p,
        before.objective_state["momentum"],
        base.target_params(after.params),
    )
    chex.assert_trees_all_close(after.objective_state["momentum"], expected, rtol=1e-6, atol=1e-7)
    assert "predictor" not in after.objective_state["momentum"]
    assert np.isfinite(float(metrics["loss"]))


def test_moco_queues_receive_the_normalised_keys():
    _, before, after, _, _ = _one_step("mocov2plus")
    for q_before, q_after in zip(
        before.objective_state["queues"], after.objective_state["queues"], strict=True
    ):
        assert int(q_after.ptr) == 8
        np.testing.assert_allclose(np.linalg.norm(q_after.items[:8], axis=1), 1.0, rtol=1e-5)
        assert not np.allclose(q_after.items[:8], q_before.items[:8])
        np.testing.assert_array_equal(q_after.items[8:], q_before.items[8:])


def test_isd_bank_receives_the_teacher_embeddings():
    _, before, after, _, _ = _one_step("isd")
    bank = after.objective_state["bank"]
    assert int(bank.ptr) == 8
    np.testing.assert_allclose(np.linalg.norm(bank.items[:8], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(bank.items[8:], before.objective_state["bank"].items[8:])


def test_swav_prototypes_frozen_in_the_first_epochs_and_queue_filled():
    _, before, after, hyper, _ = _one_step("swav", step=0)  # epoch 0 < freeze_prototypes_epochs
    assert float(hyper["prototype_grad"]) == 0.0 and float(hyper["use_queue"]) == 0.0
    chex.assert_trees_all_equal(before.params["prototypes"], after.params["prototypes"])
    # Skipped, not zeroed: the prototypes' LARS momentum accumulates nothing while frozen.
    frozen = after.opt_state.inner_states["swav_prototypes"].inner_state.inner_state
    chex.assert_trees_all_equal(
        frozen, before.opt_state.inner_states["swav_prototypes"].inner_state.inner_state
    )
    assert _momentum_is_zero(frozen)
    queues = after.objective_state["queues"]
    assert all(int(q.ptr) == 8 for q in queues)
    np.testing.assert_allclose(np.linalg.norm(queues[0].items[:8], axis=1), 1.0, rtol=1e-5)
    _, before, after, hyper, _ = _one_step("swav", step=2)  # epoch 1: thawed, queue in use
    assert float(hyper["prototype_grad"]) == 1.0 and float(hyper["use_queue"]) == 1.0
    assert not np.allclose(
        before.params["prototypes"]["kernel"], after.params["prototypes"]["kernel"]
    )


def _momentum_is_zero(opt_state):
    """Whether every momentum trace (``optax.TraceState``) in ``opt_state`` is all zeros."""
    traces = [
        leaf
        for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
        if isinstance(node, optax.TraceState)
        for leaf in jax.tree.leaves(node.trace)
    ]
    return bool(traces) and all(not np.any(t) for t in traces)


def test_swav_queue_is_emptied_at_a_task_start():
    objective, _, after, _, _ = _one_step("swav")
    restarted = objective.start_task(after.objective_state)
    for q in restarted["queues"]:
        assert int(q.ptr) == 0 and not np.any(q.items)


def test_dino_centre_moves_towards_the_teacher_mean():
    _, before, after, hyper, _ = _one_step("dino")
    assert not np.any(before.objective_state["center"])
    center = after.objective_state["center"]
    assert center.shape == (10,) and np.all(np.abs(center) <= 0.1 + 1e-6) and np.any(center)
    assert float(hyper["teacher_temperature"]) == pytest.approx(0.04)


def test_simsiam_predictor_trains_at_the_base_learning_rate_throughout():
    """solo-learn's and CaSSLe's ``static_lr`` predictor: the run's scaled base learning rate at
    every step, while the rest warms up from 0.003 and decays."""
    config = objectives.resolve_config(
        tiny_objective_config("simsiam", **{"optimizer.warmup_epochs": 1})
    )
    objective = objectives.get_objective(config)
    finetune = strategies.base.make_finetune(config, objective)
    hyper = step_lib.stage_hyper(config, objective, finetune, num_epochs=3, steps_per_epoch=2)
    base = step_lib.scaled_base_lr(config)
    np.testing.assert_allclose(hyper[step_lib.group_lr_key("simsiam_predictor")], base, rtol=1e-6)
    assert hyper["lr"][0] < base and hyper["lr"][-1] < base
    labels = objective.param_labels({"predictor": 0, "projector": 0, "backbone": 0})
    assert labels == {
        "predictor": "simsiam_predictor",
        "projector": "default",
        "backbone": "default",
    }


def test_dino_prototypes_frozen_in_the_first_epoch_and_the_temperature_a_linspace():
    """CaSSLe's DINO: no prototype update in epoch 0 (``--freeze_last_layer 1``), the rest of the
    network trained; the teacher temperature is ``np.linspace(0.04, 0.07, W)`` over the first W
    epochs of a task, then 0.07."""
    objective, before, after, hyper, _ = _one_step("dino")  # step 0: epoch 0
    assert float(hyper["prototype_grad"]) == 0.0
    chex.assert_trees_all_equal(before.params["prototypes"], after.params["prototypes"])
    assert not np.allclose(
        before.params["projector"]["linear0"]["kernel"],
        after.params["projector"]["linear0"]["kernel"],
    )
    config = objectives.resolve_config(
        tiny_objective_config("dino", **{"dino.warmup_teacher_epochs": 3})
    )
    schedules = objectives.get_objective(config).schedules(num_steps=10, steps_per_epoch=2)
    expected = np.r_[np.linspace(0.04, 0.07, 3), 0.07, 0.07].repeat(2)
    np.testing.assert_allclose(schedules["teacher_temperature"], expected, rtol=1e-6)
    np.testing.assert_array_equal(schedules["prototype_grad"], [0, 0] + [1] * 8)


# ---------------------------------------------------------------------------------------------
# Wiring of each objective's loss: which outputs meet, and how the directions combine


def _outputs(key, rows=6, dim=5, prototypes=4):
    k = jax.random.split(key, 3)
    return {
        "projection": jax.random.normal(k[0], (rows, dim)),
        "prediction": jax.random.normal(k[1], (rows, dim)),
        "scores": jax.random.normal(k[2], (rows, prototypes)),
    }


def _objective(name, **overrides):
    return objectives.get_objective(
        objectives.resolve_config(tiny_objective_config(name, **overrides))
    )


def test_byol_sums_both_directions():
    s1, s2, t1, t2 = (_outputs(jax.random.PRNGKey(i)) for i in range(4))
    value, _, _ = _objective("byol").loss((s1, s2), (t1, t2), {}, {}, {})
    expected = losses.byol_loss(s1["prediction"], t2["projection"]) + losses.byol_loss(
        s2["prediction"], t1["projection"]
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_simsiam_averages_both_directions():
    s1, s2 = (_outputs(jax.random.PRNGKey(i)) for i in range(2))
    value, _, _ = _objective("simsiam").loss((s1, s2), None, {}, {}, {})
    expected = 0.5 * (
        losses.simsiam_loss(s1["prediction"], s2["projection"])
        + losses.simsiam_loss(s2["prediction"], s1["projection"])
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_moco_pairs_each_query_with_the_other_views_keys_and_queue():
    s1, s2, t1, t2 = (_outputs(jax.random.PRNGKey(i)) for i in range(4))
    queues = tuple(memory.random_unit_queue(jax.random.PRNGKey(10 + v), 12, 5) for v in range(2))
    objective = _objective("mocov2plus", **{"mocov2plus.proj_output_dim": 5})
    value, _, _ = objective.loss((s1, s2), (t1, t2), {"queues": queues}, {}, {})
    expected = 0.5 * (
        losses.info_nce(s1["projection"], t2["projection"], queues[1].items, temperature=0.2)
        + losses.info_nce(s2["projection"], t1["projection"], queues[0].items, temperature=0.2)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_isd_compares_student_prediction_and_teacher_projection_on_the_bank():
    (s,), t = (_outputs(jax.random.PRNGKey(0)),), _outputs(jax.random.PRNGKey(1))
    bank = memory.random_unit_queue(jax.random.PRNGKey(2), 16, 5)
    value, _, enqueued = _objective("isd").loss((s,), (None, t), {"bank": bank}, {}, {})
    n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    log_p_t = jax.nn.log_softmax(n(t["projection"]) @ bank.items.T / 0.02)
    log_p_s = jax.nn.log_softmax(n(s["prediction"]) @ bank.items.T / 0.2)
    expected = np.mean(np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), axis=1))
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(enqueued, n(t["projection"]), rtol=1e-6)


def test_dino_averages_the_two_cross_view_pairs():
    s1, s2, t1, t2 = (_outputs(jax.random.PRNGKey(i)) for i in range(4))
    center = jnp.linspace(-0.1, 0.1, 4)
    hyper = {"teacher_temperature": jnp.float32(0.05)}
    value, _, batch_center = _objective("dino", **{"dino.num_prototypes": 4}).loss(
        (s1, s2), (t1, t2), {"center": center}, {}, hyper
    )
    kw = dict(student_temperature=0.1, teacher_temperature=0.05)
    expected = 0.5 * (
        losses.dino_loss(s1["scores"], t2["scores"], center, **kw)
        + losses.dino_loss(s2["scores"], t1["scores"], center, **kw)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(
        batch_center, np.concatenate([t1["scores"], t2["scores"]]).mean(0), rtol=1e-5
    )


@pytest.mark.parametrize("name", ["mocov2plus", "byol", "swav", "dino"])
def test_schedules_restart_with_every_stage(name):
    """Each stage's schedules start from the config's initial values, whatever its length."""
    config = objectives.resolve_config(tiny_objective_config(name))
    c = config[name]
    first = {
        "momentum": c.get("base_momentum"),
        "use_queue": 0.0,  # tiny SwAV: queue from epoch 1
        "prototype_grad": 0.0,  # tiny SwAV: prototypes frozen in epoch 0
        "teacher_temperature": c.get("warmup_teacher_temperature"),
        "lr": config.optimizer.warmup_start_lr,
    }
    objective = objectives.get_objective(config)
    for epochs, steps_per_epoch in ((2, 3), (4, 5)):
        hyper = step_lib.stage_hyper(
            config,
            objective,
            strategies.base.make_finetune(config, objective),
            num_epochs=epochs,
            steps_per_epoch=steps_per_epoch,
        )
        assert len(hyper) > 1
        for key, values in hyper.items():
            assert values.shape == (epochs * steps_per_epoch,), key
            assert values[0] == pytest.approx(first[key], rel=1e-6), key


def test_swav_queue_changes_the_codes_once_in_use():
    s1, s2 = (_outputs(jax.random.PRNGKey(i), prototypes=10) for i in range(2))
    objective = _objective("swav", **{"swav.proj_output_dim": 5})
    params = {
        "prototypes": {
            "kernel": jax.random.normal(jax.random.PRNGKey(5), (5, 10)),
            "norm": jnp.full((1, 10), 0.6),
        }
    }
    queues = tuple(memory.random_unit_queue(jax.random.PRNGKey(6 + v), 16, 5) for v in range(2))
    state = {"queues": queues}
    off, _, _ = objective.loss((s1, s2), None, state, params, {"use_queue": jnp.float32(0)})
    on, _, _ = objective.loss((s1, s2), None, state, params, {"use_queue": jnp.float32(1)})
    np.testing.assert_allclose(off, losses.swav_loss(s1["scores"], s2["scores"]), rtol=1e-6)
    assert abs(float(on) - float(off)) > 1e-4


def test_stateful_objective_on_one_and_four_devices(finished_run):
    """MoCoV2+ (queues pushed from a batch-sharded step, momentum network) agrees on 1 and 4
    devices."""
    (one, _), (four, _) = (finished_run(_knn_only("mocov2plus"), n) for n in (1, 4))
    chex.assert_trees_all_close(
        one["state"].objective_state, four["state"].objective_state, atol=1e-4, rtol=1e-3
    )
    chex.assert_trees_all_close(one["state"].params, four["state"].params, atol=1e-4, rtol=1e-3)
