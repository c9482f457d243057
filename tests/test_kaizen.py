"""Kaizen: its loss term against a NumPy transcription, the stop-gradient that keeps labels out of
the representation, unlabelled rows, the frozen previous classifier, exact resume across task
boundaries, and the settings that cannot work."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    initial_state,
    random_split,
    shipped_config,
    tiny_objective_config,
    train_data,
)

from cl_ssl import config as config_lib
from cl_ssl import objectives, strategies
from cl_ssl import step as step_lib
from cl_ssl.data.batch import current_batch
from cl_ssl.objectives.base import target_params
from cl_ssl.strategies import LossInputs, kaizen

# 3 data-incremental tasks of 16 mock images: 2 steps per epoch, 4 steps per task; a memory of
# half of each class's images, 4 replay rows per step.
KAIZEN = {
    "strategy": "kaizen",
    "labels.fraction": 1.0,
    "num_tasks": 3,
    "scenario": "data_incremental",
    "eval.evaluators": ("knn",),
    "checkpoint_every_steps": 3,
    "kaizen.replay.fraction": 0.5,
    "kaizen.replay.batch_size": 4,
    "kaizen.classifier_hidden_dim": 16,
}


def _config(**overrides):
    return tiny_objective_config("simclr", **{**KAIZEN, **overrides})


def _parts(**overrides):
    config = objectives.resolve_config(_config(**overrides))
    objective = objectives.get_objective(config)
    return config, objective, strategies.get_strategy(config, objective)


def _initial(objective, strat, config):
    tx = step_lib.make_tx(config, objective, strat)
    state = initial_state(objective, strat, tx, random_split(8))
    return state, tx


def _with_teacher(state):
    """A previous-task teacher and classifier that differ from the student's."""
    changed = jax.tree.map(lambda x: x * 0.9 + 0.01, state.strategy.frozen)
    return state.replace(strategy=state.strategy.replace(frozen=changed))


def _term(objective, strat, state, views, labels, task):
    """(params, strategy trainable) -> (Kaizen's weighted term, metrics) on ``views``."""
    batch = current_batch(train_data(views[0].shape[0]), jnp.arange(views[0].shape[0]))
    batch = batch.replace(labels=jnp.asarray(labels))

    def term(params, trainable):
        outputs = [
            objective.model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                v,
                train=True,
                mutable=["batch_stats"],
            )[0]
            for v in views
        ]
        return strat.loss(
            LossInputs(
                outputs=tuple(outputs),
                views=views,
                batch=batch,
                params=params,
                trainable=trainable,
                state=state.strategy,
                task=jnp.asarray(task, jnp.int32),
                hyper={},
            )
        )

    return term


def _views(n=8):
    rng = np.random.default_rng(0)
    return tuple(jnp.asarray(rng.standard_normal((n, 32, 32, 3)), jnp.float32) for _ in range(2))


# ---------------------------------------------------------------------------------------------
# The loss term


def _np_classifier(params, x):
    x = np.asarray(x, np.float64)
    hidden = np.maximum(x @ params["linear0"]["kernel"] + params["linear0"]["bias"], 0.0)
    return hidden @ params["linear1"]["kernel"] + params["linear1"]["bias"]


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_loss_matches_a_numpy_transcription_of_kaizens_classifier_terms():
    """From the second task, feature distillation off: w_C * sum_v CE over the labelled rows +
    lambda_C * mean_v soft CE against the previous classifier on the previous backbone (its
    BatchNorm on the batch's statistics)."""
    weights = {"kaizen.classifier_weight": 0.7, "kaizen.classifier_distill_weight": 1.5}
    config, objective, strat = _parts(**{"kaizen.feature_distill_weight": 0.0, **weights})
    state = _with_teacher(_initial(objective, strat, config)[0])
    views, labels = _views(), np.array([0, -1, 2, 3, -1, 1, 3, -1], np.int32)
    value, metrics = jax.jit(_term(objective, strat, state, views, labels, task=1))(
        state.params, state.strategy.trainable
    )

    model, teacher = objective.model, state.strategy.frozen["teacher"]
    student_variables = {"params": state.params, "batch_stats": state.batch_stats}

    @jax.jit
    def features(variables, x):  # the BatchNorm of the batch's statistics, as in training
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]["features"]

    ce, kd = 0.0, 0.0
    for x in views:
        student, old = features(student_variables, x), features(teacher, x)
        logits = _np_classifier(state.strategy.trainable["classifier"], student)
        old_logits = _np_classifier(state.strategy.frozen["classifier"], old)
        log_p = _np_log_softmax(logits)
        rows = [i for i, y in enumerate(labels) if y >= 0]
        ce += np.mean([-log_p[i, labels[i]] for i in rows])
        kd += np.mean(-np.sum(np.exp(_np_log_softmax(old_logits)) * log_p, axis=-1)) / 2
    np.testing.assert_allclose(metrics["classifier_ce"], ce, rtol=1e-4)
    np.testing.assert_allclose(metrics["classifier_distill"], kd, rtol=1e-4)
    np.testing.assert_allclose(value, 0.7 * ce + 1.5 * kd, rtol=1e-4)
    assert "distill" not in metrics


def test_first_task_has_no_distillation_and_later_tasks_add_cassles():
    config, objective, strat = _parts()
    state = _with_teacher(_initial(objective, strat, config)[0])
    views, labels = _views(), np.arange(8, dtype=np.int32) % 4
    term = _term(objective, strat, state, views, labels, task=0)
    value, metrics = term(state.params, state.strategy.trainable)
    assert float(metrics["distill"]) == float(metrics["classifier_distill"]) == 0.0
    np.testing.assert_allclose(value, metrics["classifier_ce"], rtol=1e-6)
    later, later_metrics = _term(objective, strat, state, views, labels, task=1)(
        state.params, state.strategy.trainable
    )
    assert float(later_metrics["distill"]) > 0 and float(later_metrics["classifier_distill"]) > 0
    expected = later_metrics["classifier_ce"] + 2.0 * later_metrics["classifier_distill"]
    np.testing.assert_allclose(later, expected + later_metrics["distill"], rtol=1e-5)


def test_the_classifier_terms_never_reach_the_backbone():
    """Feature distillation off, so that every gradient reaching the student would come through
    the classifier's input; it must be exactly 0, while the classifier itself learns."""
    config, objective, strat = _parts(**{"kaizen.feature_distill_weight": 0.0})
    state = _with_teacher(_initial(objective, strat, config)[0])
    # The second task, where both classifier terms (CE and distillation) are on.
    term = _term(objective, strat, state, _views(), np.arange(8, dtype=np.int32) % 4, task=1)
    grads = jax.grad(lambda p, t: term(p, t)[0], argnums=(0, 1))(
        state.params, state.strategy.trainable
    )
    for leaf in jax.tree.leaves(grads[0]):
        np.testing.assert_array_equal(leaf, 0.0)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[1]["classifier"])) > 0


@functools.cache
def _compiled_step():
    """(state, jitted step, per-step scalars) of the tiny setting, compiled once per worker."""
    config, objective, strat = _parts()
    state, tx = _initial(objective, strat, config)
    hyper = step_lib.stage_hyper(config, objective, strat, num_epochs=2, steps_per_epoch=2)
    hyper = {k: jnp.asarray(v[1]) for k, v in hyper.items()}
    step = jax.jit(step_lib.build_step_fn(objective, strat, tx, extend=False))
    return _with_teacher(state), step, hyper


def _step(labelled, task):
    """(state before, state after, metrics) of one step, every label visible or none."""
    state, step, hyper = _compiled_step()
    state = state.replace(task=jnp.asarray(task, jnp.int32))
    new, metrics = step(state, train_data(8, labelled=labelled), jnp.arange(8), hyper)
    return state, new, metrics


def test_unlabelled_rows_leave_the_classifier_untouched():
    """labels.fraction 0 (every label -1): the CE term is 0 and the first task's step leaves the
    classifier exactly as it was; with labels, the same step moves it."""
    before, after, metrics = _step(labelled=False, task=0)
    assert float(metrics["classifier_ce"]) == 0.0
    chex.assert_trees_all_equal(
        after.strategy.trainable["classifier"], before.strategy.trainable["classifier"]
    )
    _, moved, labelled_metrics = _step(labelled=True, task=0)
    assert float(labelled_metrics["classifier_ce"]) > 0
    assert not np.array_equal(
        moved.strategy.trainable["classifier"]["linear1"]["kernel"],
        before.strategy.trainable["classifier"]["linear1"]["kernel"],
    )


def test_the_previous_classifier_and_teacher_stay_frozen_during_a_task():
    before, after, _ = _step(labelled=True, task=1)
    chex.assert_trees_all_equal(after.strategy.frozen, before.strategy.frozen)
    assert not np.array_equal(
        after.strategy.trainable["classifier"]["linear0"]["kernel"],
        before.strategy.trainable["classifier"]["linear0"]["kernel"],
    )


def test_the_classifier_has_its_own_learning_rate_and_no_weight_decay():
    for objective, lr in (("simclr", 0.1), ("vicreg", 0.05)):
        config = objectives.resolve_config(tiny_objective_config(objective, **KAIZEN))
        strat = strategies.get_strategy(config, objectives.get_objective(config))
        group = strat.param_groups[kaizen.CLASSIFIER_GROUP]
        assert (group.lr, group.weight_decay) == (lr, 0.0)
        labels = strat.param_labels({"classifier": {"w": 0}, "predictor": {"w": 0}})
        assert labels == {
            "classifier": {"w": kaizen.CLASSIFIER_GROUP},
            "predictor": {"w": "default"},
        }


# ---------------------------------------------------------------------------------------------
# Whole runs


def test_run_reports_the_classifier(finished_run):
    """Three tasks: the classifier's matrix and Kaizen's metrics in results.json; the teacher and
    the previous classifier of the last boundary are the student's and the classifier as they
    ended; the step compiles twice (without, then with replay rows). (CaSSLe's run resumes across
    boundaries with a teacher, CCL's mid-task with a memory; the state is one checkpointed
    pytree whatever the strategy.) Replay rows come from the presets' shuffled loader, whose
    position the stage's schedules give the step."""
    whole, workdir = finished_run(_config(**{"kaizen.replay.sampling": "loader"}))
    assert whole["traces"] == [1, 1]
    document = json.loads((workdir / "results.json").read_text())
    matrix = np.array(document["matrices"]["classifier"], float)
    assert matrix.shape == (4, 3) and np.isfinite(matrix).all()
    summary = document["summaries"]["classifier"]
    assert summary["average_continual_accuracy"] == summary["average_incremental_accuracy"]
    s = whole["state"].strategy
    chex.assert_trees_all_equal(s.frozen["classifier"], s.trainable["classifier"])
    chex.assert_trees_all_equal(s.frozen["teacher"]["params"], target_params(whole["state"].params))
    memory = s.buffers["memory"]
    assert int(memory.valid.sum()) > 0 and set(np.asarray(memory.tasks)[memory.valid]) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_that_cannot_work_are_rejected_before_compiling():
    with pytest.raises(ValueError, match="labels.fraction=0.0 gives the learner none"):
        _parts(**{"labels.fraction": 0.0})
    with pytest.raises(ValueError, match="kaizen.classifier_distill_weight=-1"):
        _parts(**{"kaizen.classifier_distill_weight": -1.0})
    with pytest.raises(ValueError, match="kaizen.replay.selection='fifo'"):
        _parts(**{"kaizen.replay.selection": "fifo"})
    config, objective, strat = _parts(**{"kaizen.num_classes": 3})
    with pytest.raises(ValueError, match="kaizen.num_classes=3 is narrower than the 4 classes"):
        _initial(objective, strat, config)


def test_cifar100_kaizen_preset_is_kaizens_scripts():
    config = shipped_config("cifar100", "kaizen")
    assert (config.strategy, config.labels.fraction, config.recipe) == ("kaizen", 1.0, "kaizen")
    # The online probe on the seen tasks (main_pretrain.py l.179-195), its lr 0.1, the offline
    # probes on every task; 16-bit mixed precision.
    e = config.eval
    assert (e.online, e.online_data, e.online_lr, e.probe_data) == (True, "seen", 0.1, "all")
    assert config.model.dtype == "bfloat16"
    assert config.kaizen.replay.sampling == "loader"  # a shuffled, tail-dropping, cycled loader
    # The first 1% of each class; of each task's random split order in data-incremental runs.
    assert config.kaizen.replay.selection == "first_per_class"
    data_incremental = shipped_config("cifar100", "kaizen,data_incremental")
    assert data_incremental.kaizen.replay.selection == "random_per_task"
    assert data_incremental.split_seed == 5  # kaizen/args/dataset.py l.37
    resolved = objectives.resolve_config(config)
    assert (resolved.optimizer.lr, resolved.simclr.proj_hidden_dim) == (1.0, 4096)
    assert resolved.augment.view2.solarize_prob == 0.2
    config.objective = "vicreg"
    assert objectives.resolve_config(config).optimizer.lr == 0.3
    k = config.kaizen
    assert (k.classifier_weight, k.classifier_distill_weight, k.replay.batch_size) == (1.0, 2.0, 32)
    # Kaizen ships no ImageNet script: the ImageNet recipes and CaSSLe's heads stay.
    imagenet = shipped_config("imagenet100", "kaizen")
    assert imagenet.recipe == "imagenet"
    assert (imagenet.simclr.proj_hidden_dim, imagenet.simclr.temperature) == (2048, 0.2)
    assert (k.replay.selection, k.replay.fraction, config.mocov2plus.proj_output_dim) == (
        "first_per_class",
        0.01,
        256,
    )


def test_resume_compares_the_cassle_section_kaizen_reads():
    stored = json.loads(_config().to_json())
    given = json.loads(_config().to_json())
    given["pfr"]["weight"] = 0.5
    assert config_lib.differing_fields(stored, given) == []
    given["cassle"]["pred_hidden_dim"] += 1
    given["kaizen"]["replay"]["batch_size"] += 1
    assert config_lib.differing_fields(stored, given) == [
        "cassle.pred_hidden_dim",
        "kaizen.replay.batch_size",
    ]
