"""CaSSLe and PFR in the pipeline: the teacher's life cycle, the distillation predictor, the
wiring of each objective's distiller, one compile, and exact resume across task boundaries."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SAME_UP_TO_ROUNDING as ROUNDING
from helpers import (
    assert_resumes_exactly,
    initial_state,
    random_split,
    tiny_objective_config,
    train_data,
)
from helpers import run as _run

from cl_ssl import losses, objectives, parallel, planning, strategies
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.losses import l2_normalize
from cl_ssl.objectives.base import target_params
from cl_ssl.strategies import base, cassle

# 3 data-incremental tasks of 16 mock images: 2 steps per epoch, 4 steps per task.
THREE_TASKS = {
    "num_tasks": 3,
    "scenario": "data_incremental",
    "eval.evaluators": ("knn",),
    "checkpoint_every_steps": 3,
}


def _parts(name, strategy="cassle", **overrides):
    """(resolved config, objective, strategy) of the tiny setting."""
    config = objectives.resolve_config(tiny_objective_config(name, strategy=strategy, **overrides))
    objective = objectives.get_objective(config)
    return config, objective, strategies.get_strategy(config, objective)


def _teacher(state):
    return state.strategy.frozen["teacher"]


@functools.cache
def _one_step(name, strategy="cassle", task=1, **overrides):
    """(objective, strategy, state before, state after, metrics) of one step in ``task``; computed
    once per worker."""
    config, objective, strat = _parts(name, strategy, **overrides)
    tx = step_lib.make_tx(config, objective, strat)
    state = initial_state(objective, strat, tx, random_split(8))
    state = state.replace(task=jnp.asarray(task, jnp.int32))
    # A teacher that differs from the student, as after a task of training.
    changed = jax.tree.map(lambda x: x * 0.9 + 0.01, state.strategy.frozen)
    state = state.replace(strategy=state.strategy.replace(frozen=changed))
    hyper = step_lib.stage_hyper(config, objective, strat, num_epochs=2, steps_per_epoch=2)
    hyper = {k: jnp.asarray(v[0]) for k, v in hyper.items()}
    step = jax.jit(step_lib.build_step_fn(objective, strat, tx, extend=False))
    new, metrics = step(state, train_data(8), jnp.arange(8), hyper)
    return objective, strat, state, new, metrics


def _changed(a, b):
    """Whether a leaf of ``a`` differs from ``b``'s by more than float rounding."""
    return any(
        not np.allclose(x, y, **ROUNDING)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# The distillation term in one step


# A step with each kind of trained head: CaSSLe's predictor (on the predictive distiller, BYOL's,
# in the three-task run below), SwAV's new prototypes (the knowledge distiller), PFR's
# projector. The other distillers train the same predictor; their losses are test_distill's,
# their wiring test_cassle_distiller_wiring's.
@pytest.mark.parametrize(
    ("name", "strategy"), [("simclr", "cassle"), ("swav", "cassle"), ("simclr", "pfr")]
)
def test_distillation_step_trains_student_and_predictor(name, strategy):
    """From the second task on, the distillation term is finite, enters the loss with its weight,
    and its predictor (and SwAV's/DINO's new prototypes) receives updates; the teacher does not."""
    _, strat, before, after, metrics = _one_step(name, strategy)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["distill"]))
    assert float(metrics["distill"]) != 0.0
    assert _changed(before.params, after.params)
    heads_before, heads_after = before.strategy.trainable, after.strategy.trainable
    for key in heads_before:
        assert _changed(heads_before[key], heads_after[key]), key
    chex.assert_trees_all_equal(_teacher(before), _teacher(after))
    expected = {"predictor"} if strategy == "cassle" else {"projector"}
    if strategy == "cassle" and cassle.DISTILLERS[name].kind == "knowledge":
        expected.add("prototypes")
    assert set(heads_before) == expected


# CaSSLe's; PFR's term is gated by the same frozen-teacher life cycle (frozen_teacher_strategy).
@pytest.mark.parametrize("strategy", ["cassle"])
def test_first_task_has_no_distillation_contribution(strategy):
    """At task 0 the student's step equals fine-tuning's (another program: up to float rounding),
    whatever the teacher slot holds, and the distillation term is skipped."""
    _, _, before, with_teacher, metrics = _one_step("simclr", strategy, task=0)
    _, _, _, finetune, plain = _one_step("simclr", "finetune", task=0)
    chex.assert_trees_all_close(with_teacher.params, finetune.params, **ROUNDING)
    chex.assert_trees_all_close(with_teacher.batch_stats, finetune.batch_stats, **ROUNDING)
    np.testing.assert_allclose(metrics["loss"], plain["loss"], **ROUNDING)
    assert float(metrics["distill"]) == 0.0
    _, _, _, distilled, _ = _one_step("simclr", strategy, task=1)
    assert _changed(distilled.params, finetune.params)


def _distill_inputs(name, strategy="cassle"):
    config, objective, strat = _parts(name, strategy)
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=True)
    teacher = strat.init(variables, jax.random.PRNGKey(6), None).frozen["teacher"]
    views = tuple(
        jax.random.uniform(jax.random.PRNGKey(5 + v), (8, 32, 32, 3))
        for v in objective.student_views
    )
    student = tuple(
        objective.model.apply(variables, x, True, mutable=["batch_stats"])[0] for x in views
    )
    return config, objective, strat, teacher, views, student


def _teacher_projections(objective, teacher, views):
    return [
        objective.model.apply(teacher, x, True, method="project", mutable=["batch_stats"])[0]
        for x in views
    ]


def _distill(strat, student, views, teacher, heads, task=1):
    """The strategy's loss term at ``task`` for the given student outputs, views and teacher."""
    return strat.loss(
        base.LossInputs(
            outputs=tuple(student),
            views=tuple(views),
            batch=None,
            params=None,
            trainable=heads,
            state=state_lib.StrategyState(trainable=heads, frozen={"teacher": teacher}),
            task=jnp.asarray(task),
            hyper={},
        )
    )


def _heads(strat, objective):
    """The strategy's initial heads, from the key the tests' teachers use."""
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=True)
    return strat.init(variables, jax.random.PRNGKey(6), None).trainable


def _predict(config, params, z):
    head = cassle.heads.MLPHead(
        hidden_dims=(config.cassle.pred_hidden_dim,), out_dim=z.shape[-1], batch_norm=True
    )
    return head.apply({"params": params}, z, train=True, mutable=["batch_stats"])[0]


@pytest.mark.parametrize(
    ("name", "expected_loss", "weight"),
    [
        ("simclr", lambda p, t: losses.contrastive_distillation(p, t, temperature=0.2), 1.0),
        ("mocov2plus", lambda p, t: losses.contrastive_distillation(p, t, temperature=0.2), 1.0),
        ("byol", losses.predictive_distillation, 1.0),
        ("barlow_twins", losses.decorrelative_distillation, 1.0),
        ("vicreg", losses.mse_distillation, 25.0),
        ("simsiam", losses.cosine_distillation, 1.0),
        (
            "isd",
            lambda p, t: losses.similarity_distillation(
                p, t, student_temperature=0.2, teacher_temperature=0.02
            ),
            1.0,
        ),
    ],
)
def test_cassle_distiller_wiring(name, expected_loss, weight):
    """Which output enters h (MoCo: the normalised query; BYOL: the projection, not its own
    predictor's output), which loss meets the teacher's projection of the same view, and lambda."""
    config, objective, strat, teacher, views, student = _distill_inputs(name)
    params = _heads(strat, objective)
    if name == "byol":  # the online predictor's output must not be read
        student = tuple(
            {**s, "prediction": jnp.full_like(s["prediction"], jnp.nan)} for s in student
        )
    inputs = [s["projection"] for s in student]
    if name == "mocov2plus":
        inputs = [l2_normalize(z) for z in inputs]
    predictions = [_predict(config, params["predictor"], z) for z in inputs]
    targets = [t["projection"] for t in _teacher_projections(objective, teacher, views)]
    expected = expected_loss(predictions, targets)
    value, terms = _distill(strat, student, views, teacher, params)
    # Compiled under lax.cond, the term differs from the eager value by float32 rounding: SimSiam's
    # 1 - cos, here ~1.5e-3, inherits the absolute rounding of cos through the predictor (up to
    # ~1.3e-6 on AVX-512 CPUs); ISD's similarities divided by its teacher temperature 0.02 by ~2e-5
    # relative. A wrong wiring changes the term by its own order of magnitude.
    np.testing.assert_allclose(terms["distill"], expected, rtol=5e-5, atol=5e-6)
    np.testing.assert_allclose(value, weight * expected, rtol=5e-5, atol=5e-6 * weight)
    assert len(views) == (1 if name == "isd" else 2)


@pytest.mark.parametrize("name", ["swav", "dino"])
def test_cassle_knowledge_distiller_scores_with_old_and_new_prototypes(name):
    """SwAV, DINO: the teacher's distribution comes from the previous task's prototypes on its own
    projection, with their learnt norms g (SwAV, as CaSSLe's frozen_prototypes copy weight_g); the
    student's from the new prototypes W_d (with norms of their own for SwAV) on h(z)."""
    config, objective, strat, teacher, views, student = _distill_inputs(name)
    learnable = name == "swav"
    if learnable:  # a teacher whose norms have moved away from their initial values
        old_norm = teacher["params"]["prototypes"]["norm"]
        teacher = {**teacher, "params": {**teacher["params"]}}
        teacher["params"]["prototypes"] = {
            **teacher["params"]["prototypes"],
            "norm": old_norm * jnp.linspace(0.5, 3.0, old_norm.shape[-1]),
        }
    params = _heads(strat, objective)
    assert ("norm" in params["prototypes"]) == learnable
    predictions = [_predict(config, params["predictor"], s["projection"]) for s in student]
    new = cassle.Prototypes(config[name].num_prototypes, learnable_norm=learnable)
    scores = [new.apply({"params": params["prototypes"]}, p) for p in predictions]
    kernel = teacher["params"]["prototypes"]["kernel"]
    g = teacher["params"]["prototypes"].get("norm", 1.0)
    old = [
        g * (losses.l2_normalize(t["projection"]) @ losses.l2_normalize(kernel, axis=0))
        for t in _teacher_projections(objective, teacher, views)
    ]
    expected = losses.knowledge_distillation(scores, old, temperature=0.1)
    _, terms = _distill(strat, student, views, teacher, params)
    np.testing.assert_allclose(terms["distill"], expected, rtol=1e-5)


def test_pfr_distils_backbone_features():
    config, objective, strat, teacher, views, student = _distill_inputs("simclr", "pfr")
    params = _heads(strat, objective)
    width = student[0]["features"].shape[-1]
    head = cassle.heads.MLPHead(hidden_dims=(width // 2,), out_dim=width, batch_norm=True)
    predictions = [
        head.apply(
            {"params": params["projector"]}, s["features"], train=True, mutable=["batch_stats"]
        )[0]
        for s in student
    ]
    targets = [
        objective.model.apply(
            teacher, x, method=lambda m, x: m.backbone(x, train=True), mutable=["batch_stats"]
        )[0]
        for x in views
    ]
    _, terms = _distill(strat, student, views, teacher, params)
    np.testing.assert_allclose(
        terms["distill"], losses.cosine_distillation(predictions, targets), rtol=1e-5
    )
    assert set(teacher["params"]) == {"backbone"}


@pytest.mark.parametrize("strategy", ["cassle", "pfr"])
def test_teacher_receives_no_gradient(strategy):
    _, objective, strat, teacher, views, student = _distill_inputs("simclr", strategy)
    params = _heads(strat, objective)
    grads = jax.grad(lambda t: _distill(strat, student, views, t, params)[0])(teacher)
    for g in jax.tree.leaves(grads):
        np.testing.assert_array_equal(g, 0.0)


def test_teacher_batch_norm_mode():
    """Train mode (the reference's): the batch's statistics; eval mode: the frozen running ones."""
    _, objective, _, teacher, views, _ = _distill_inputs("barlow_twins")
    teacher = {**teacher, "batch_stats": jax.tree.map(lambda x: x + 0.5, teacher["batch_stats"])}
    model, x = objective.model, views[0]
    train_mode = base.apply_teacher(model, teacher, x, train_bn=True, method="project")
    eval_mode = base.apply_teacher(model, teacher, x, train_bn=False, method="project")
    on_batch, _ = model.apply(teacher, x, True, method="project", mutable=["batch_stats"])
    on_running = model.apply(teacher, x, False, method="project")
    chex.assert_trees_all_close(train_mode, on_batch)
    chex.assert_trees_all_close(eval_mode, on_running)
    assert _changed(train_mode["projection"], eval_mode["projection"])


@pytest.mark.parametrize("strategy", ["cassle", "pfr"])
def test_heads_are_fresh_at_the_second_task_only(strategy):
    """The distillation heads restart from the initial draw at task 1 and are carried later."""
    config, objective, strat = _parts("simclr", strategy)
    key = jax.random.PRNGKey(7)
    state = initial_state(
        objective, strat, step_lib.make_tx(config, objective, strat), random_split(8)
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    initial = strat.init(variables, key, None).trainable
    trained = jax.tree.map(lambda x: x + 1.0, initial)
    state = state.replace(strategy=state.strategy.replace(trainable=trained))

    def heads_at(task):
        end = base.TaskEnd(state, task, key, np.arange(8), None, None, None)
        return strat.end_task(end).trainable

    chex.assert_trees_all_equal(heads_at(1), initial)
    chex.assert_trees_all_equal(heads_at(2), trained)
    chex.assert_trees_all_equal(heads_at(3), trained)


def test_unknown_strategy_is_rejected():
    config, objective, _ = _parts("simclr", "finetune")
    config.strategy = "ewc"
    with pytest.raises(ValueError, match="unknown strategy 'ewc'.*cassle"):
        strategies.get_strategy(config, objective)


# ---------------------------------------------------------------------------------------------
# The teacher and the predictor across tasks, in whole runs


class _Recorder:
    """Host copies of the state entering every train step and at every task start, until
    ``stop()``; the step must trace once."""

    def __init__(self, monkeypatch):
        self.steps, self.starts = [], []
        jit_step, start_task = step_lib.jit_step, state_lib.start_task

        def recording_jit_step(step_fn, mesh, **kwargs):
            jitted = jit_step(chex.assert_max_traces(step_fn, n=1), mesh, **kwargs)

            def step(state, *args):
                self.steps.append(jax.device_get(state))  # before the state is donated
                return jitted(state, *args)

            return step

        def recording_start_task(state, **kwargs):
            new = start_task(state, **kwargs)
            self.starts.append((jax.device_get(state), jax.device_get(new)))
            return new

        self._monkeypatch, self._originals = monkeypatch, (jit_step, start_task)
        monkeypatch.setattr(step_lib, "jit_step", recording_jit_step)
        monkeypatch.setattr(state_lib, "start_task", recording_start_task)

    def stop(self):
        jit_step, start_task = self._originals
        self._monkeypatch.setattr(step_lib, "jit_step", jit_step)
        self._monkeypatch.setattr(state_lib, "start_task", start_task)


# CaSSLe's run; PFR shares its teacher life cycle (``frozen_teacher_strategy``) and differs only
# in the distiller, which the step tests run.
def test_cassle_carries_teacher_and_predictor_across_tasks_and_resumes_exactly(
    mock_cifar10, tmp_path, monkeypatch
):
    """Three tasks of BYOL + CaSSLe: the teacher of task t is the student at the end of task t-1
    and stays fixed during the task; the predictor is random at task 1 and carried into task 2.
    Resumed from the boundary checkpoint of task 1 (step 4: new teacher, fresh h) past a damaged
    newer one, then run across the next boundary in memory: the final student, heads, teacher,
    objective state and accuracies equal the uninterrupted run's. (Mid-task checkpoints of a
    strategy whose state changes every step: the replay test.)"""

    def config(**kw):
        return tiny_objective_config("byol", strategy="cassle", **THREE_TASKS, **kw)

    chex.clear_trace_counter()
    rec = _Recorder(monkeypatch)
    whole = _run(config(), tmp_path / "whole")
    assert int(whole["state"].task) == 3 and len(rec.starts) == 3
    initial_heads = rec.steps[0].strategy.trainable
    for t in (1, 2):
        ended, started = rec.starts[t - 1]
        chex.assert_trees_all_equal(_teacher(started)["params"], target_params(ended.params))
        chex.assert_trees_all_equal(
            _teacher(started)["batch_stats"], target_params(ended.batch_stats)
        )
        during = [s for s in rec.steps if int(s.task) == t]
        assert len(during) == 4
        for s in during:
            chex.assert_trees_all_equal(_teacher(s), _teacher(started))
        assert _changed(during[-1].params, started.params)
    # Random at task 1: the initial draw (test_heads_are_fresh_at_the_second_task_only) ...
    chex.assert_trees_all_equal(rec.starts[0][1].strategy.trainable, initial_heads)
    # ... carried from task 1 into task 2, trained in between.
    chex.assert_trees_all_equal(
        rec.starts[1][1].strategy.trainable, rec.starts[1][0].strategy.trainable
    )
    assert _changed(rec.starts[1][1].strategy.trainable, initial_heads)

    rec.stop()
    assert_resumes_exactly(config, whole, tmp_path / "resumed", mid_task_kill=False)


def test_cassle_settings_that_cannot_apply_are_rejected():
    with pytest.raises(ValueError, match="cassle.temperature=0.5 has no effect.*'predictive'"):
        _parts("byol", **{"cassle.temperature": 0.5})


def test_plan_builds_the_strategy_for_the_objective(mock_cifar10):
    p = planning.plan(tiny_objective_config("vicreg", strategy="cassle"), parallel.make_mesh(1))
    assert p.strategy.name == "cassle" and p.strategy.loss is not None
    assert len(p.stages) == 2
