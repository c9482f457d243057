"""The strategy interface's rehearsal users: replay and LUMP, labels in the batch, parameter
groups of the optimizer, and whole runs that carry a memory across tasks and resumes."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SAME_UP_TO_ROUNDING as ROUNDING
from helpers import (
    initial_state,
    random_split,
    tiny_objective_config,
    train_data,
    update_buffers,
)
from helpers import run as _run
from test_memory import np_herding

from cl_ssl import config as config_lib
from cl_ssl import memory, objectives, optim, strategies
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data.batch import current_batch
from cl_ssl.planning import visible_labels
from cl_ssl.strategies import base, lump, replay

# 3 data-incremental tasks of 16 mock images: 2 steps per epoch, 4 steps per task.
THREE_TASKS = {
    "num_tasks": 3,
    "scenario": "data_incremental",
    "eval.evaluators": ("knn",),
    "checkpoint_every_steps": 3,
    "replay.memory_size": 12,
    "replay.batch_size": 4,
}


def _parts(strategy, **overrides):
    config = objectives.resolve_config(
        tiny_objective_config("simclr", strategy=strategy, **overrides)
    )
    objective = objectives.get_objective(config)
    return config, objective, strategies.get_strategy(config, objective)


def _memory(ids, tasks, valid, labels=None):
    n = len(ids)
    return memory.Memory(
        ids=jnp.asarray(ids, jnp.int32),
        labels=jnp.asarray(labels if labels is not None else np.zeros(n), jnp.int32),
        tasks=jnp.asarray(tasks, jnp.int32),
        priority=jnp.zeros(n, jnp.float32),
        valid=jnp.asarray(valid, bool),
    )


# ---------------------------------------------------------------------------------------------
# The replay sub-batch


def test_replay_rows_come_from_earlier_tasks_and_valid_slots_only():
    _, _, strat = _parts("replay", **{"replay.batch_size": 64})
    data = train_data(32, tasks=0)
    mem = _memory(
        ids=[3, 4, 5, 6, 7, 8, 9, 10],
        tasks=[0, 1, 2, 2, 0, 1, 0, -1],
        valid=[True, True, True, True, True, True, False, False],
    )
    state = state_lib.StrategyState(buffers={"memory": mem})
    batch = current_batch(data, jnp.arange(8))
    for seed in range(5):
        joined = strat.extend_batch(
            base.RowInputs(state, batch, data, jax.random.PRNGKey(seed), jnp.int32(2), {})
        )
        assert joined.size == 8 + 64
        chex.assert_trees_all_equal(
            jax.tree.map(lambda x: x[:8], joined.replace(slots=None)), batch
        )
        assert bool(jnp.all(joined.slots[:8] == -1))  # the step's own rows: from no memory slot
        np.testing.assert_array_equal(
            np.asarray(mem.ids)[np.asarray(joined.slots[8:])], joined.ids[8:]
        )
        rows = np.asarray(joined.ids[8:])
        assert set(rows) == {3, 4, 7, 8}  # tasks 0 and 1, valid; every one drawn (cycled)
        np.testing.assert_array_equal(joined.images[8:], np.asarray(data.images)[rows])
        np.testing.assert_array_equal(joined.labels[8:], np.asarray(data.labels)[rows])
        assert set(np.asarray(joined.tasks[8:])) <= {0, 1} and bool(joined.valid.all())
    # Without replacement while enough are eligible: a replay batch of 4 has 4 distinct rows.
    _, _, small = _parts("replay", **{"replay.batch_size": 4})
    joined = small.extend_batch(
        base.RowInputs(state, batch, data, jax.random.PRNGKey(0), jnp.int32(2), {})
    )
    assert len(set(np.asarray(joined.ids[8:]))) == 4


def test_replay_rows_from_a_memory_of_images():
    """Data kept in host memory: the replay rows' images are the memory's own."""
    _, _, strat = _parts("replay", **{"replay.batch_size": 3})
    data = train_data(16)
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
    mem = _memory(ids=[0, 1, 2, 3], tasks=[0, 0, 0, 0], valid=[True] * 4).replace(images=images)
    state = state_lib.StrategyState(buffers={"memory": mem})
    batch = current_batch(data, jnp.arange(4))
    joined = strat.extend_batch(
        base.RowInputs(state, batch, data, jax.random.PRNGKey(0), jnp.int32(1), {})
    )
    np.testing.assert_array_equal(joined.images[4:], np.asarray(images)[np.asarray(joined.ids[4:])])


# ---------------------------------------------------------------------------------------------
# Selection at the end of a task


@pytest.mark.parametrize("eligible_count, size", [(10, 3), (6, 3), (2, 3)])
def test_loader_draw_walks_shuffled_passes_dropping_the_tail(eligible_count, size):
    """replay.sampling='loader' against the rule of DataLoader(shuffle=True, drop_last=True)
    cycled beside the task loader and restarted each epoch: a pass is floor(n / size) batches of
    distinct eligible slots in a fresh order, the n mod size left over unseen in that pass; with
    fewer than ``size`` eligible slots, the batch cycles them."""
    memory = _memory(ids=list(range(12)), tasks=[0] * 12, valid=[True] * 12)
    eligible = jnp.arange(12) >= 12 - eligible_count  # the last n slots
    key = jax.random.PRNGKey(3)

    def batch_at(epoch, step):
        slots, available = replay.loader_draw(
            memory, key, size, eligible, epoch=jnp.int32(epoch), step_in_epoch=jnp.int32(step)
        )
        assert bool(available)
        return np.asarray(slots).tolist()

    per_pass = max(eligible_count // size, 1)
    allowed = set(range(12 - eligible_count, 12))
    passes = []
    for start in (0, per_pass, 2 * per_pass):  # three passes of epoch 0
        rows = [s for step in range(start, start + per_pass) for s in batch_at(0, step)]
        assert set(rows) <= allowed
        if eligible_count >= size:
            assert len(rows) == len(set(rows)) == per_pass * size  # each slot once, tail dropped
        else:
            assert rows == [rows[i % eligible_count] for i in range(size)]  # cycled
        passes.append(rows)
    if eligible_count > size:
        assert passes[0] != passes[1]  # each pass a fresh order
    assert batch_at(0, 1) == batch_at(0, 1)  # a function of (key, epoch, step): resumable
    if eligible_count > size:
        assert [batch_at(1, s) for s in range(per_pass)] != [
            batch_at(0, s) for s in range(per_pass)
        ]


def _task_end(strat, objective, config, features, task_ids, labels, next_task, buffers=None):
    split = random_split(len(labels), num_classes=int(labels.max()) + 1)
    split = split.__class__(images=split.images, labels=labels, num_classes=split.num_classes)
    tx = step_lib.make_tx(config, objective, strat)
    state = initial_state(objective, strat, tx, split)
    if buffers is not None:
        state = state.replace(strategy=state.strategy.replace(buffers=buffers))
    return base.TaskEnd(
        state=state,
        next_task=next_task,
        key=jax.random.PRNGKey(0),
        indices=np.asarray(task_ids),
        train=split,
        features=lambda variables, images: features[_row_of(images, split.images)],
        map_images=lambda fn, variables, *rows: np.asarray(jax.jit(fn)(variables, *rows)),
    )


def _row_of(images, all_images):
    """The rows of ``all_images`` that ``images`` are (the test's features are per row)."""
    flat = all_images.reshape(len(all_images), -1)
    return np.array([np.flatnonzero((flat == im.reshape(-1)).all(1))[0] for im in images])


def test_herding_selection_fills_and_shrinks_classes_by_priority():
    """Task 0 (classes 0, 1) fills a memory of 8 with 4 herded exemplars per class; task 1
    (classes 2, 3) brings the quota to 2, and each old class keeps its first two, a prefix."""
    config, objective, strat = _parts(
        "replay", **{"replay.selection": "herding", "replay.memory_size": 8}
    )
    labels = np.repeat(np.arange(4), 10).astype(np.int32)
    features = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    first = strat.end_task(_task_end(strat, objective, config, features, range(20), labels, 1))
    mem = first.buffers["memory"]
    stored = {
        c: list(np.asarray(mem.ids)[np.asarray(mem.valid & (mem.labels == c))]) for c in (0, 1)
    }
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        expected = rows[np_herding(features[rows], 4)]
        assert sorted(stored[c]) == sorted(expected)
    assert set(np.asarray(mem.tasks)[np.asarray(mem.valid)]) == {0}
    second = strat.end_task(
        _task_end(strat, objective, config, features, range(20, 40), labels, 2, first.buffers)
    )
    mem = second.buffers["memory"]
    assert int(mem.valid.sum()) == 8
    for c in range(4):
        rows = np.flatnonzero(labels == c)
        kept = np.asarray(mem.ids)[np.asarray(mem.valid & (mem.labels == c))]
        assert sorted(kept) == sorted(rows[np_herding(features[rows], 2)]), c


def test_first_per_class_selection_is_kaizens():
    config, objective, strat = _parts(
        "replay", **{"replay.selection": "first_per_class", "replay.fraction": 0.2}
    )
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 1], np.int32)  # 7 and 8 per class
    features = np.zeros((15, 2), np.float32)
    end = _task_end(strat, objective, config, features, range(15), labels, 1)
    mem = strat.end_task(end).buffers["memory"]
    assert mem.capacity == 1 + 1  # floor(0.2 * 7) + floor(0.2 * 8)
    assert sorted(np.asarray(mem.ids)[np.asarray(mem.valid)]) == [0, 1]  # first of each class
    # A split whose records are not in the archive's order: the first of each class by it.
    shuffled = dataclasses.replace(end.train, archive_rank=np.arange(15)[::-1])
    mem = strat.end_task(dataclasses.replace(end, train=shuffled)).buffers["memory"]
    assert sorted(np.asarray(mem.ids)[np.asarray(mem.valid)]) == [13, 14]  # last in record order


def test_random_per_task_selection_is_kaizens_data_incremental_draw():
    """Each task keeps int(0.3 * N_t) of its own rows, whatever their classes: 4 of task 1's 15
    (capacity int(0.3 * 30) = 9 >= 4 + 4), then 4 of task 2's without touching task 1's; the
    draw is seeded by the strategy's key and the task."""
    config, objective, strat = _parts(
        "replay", **{"replay.selection": "random_per_task", "replay.fraction": 0.3}
    )
    labels = np.zeros(30, np.int32)  # one class: a per-class rule would keep int(0.3 * 15) = 4
    features = np.zeros((30, 2), np.float32)
    end = _task_end(strat, objective, config, features, range(15), labels, 1)
    first = strat.end_task(end)
    mem = first.buffers["memory"]
    assert mem.capacity == 9
    kept = np.asarray(mem.ids)[np.asarray(mem.valid)]
    assert len(kept) == len(set(kept)) == 4 and set(kept) <= set(range(15))
    again = strat.end_task(end).buffers["memory"]
    np.testing.assert_array_equal(
        np.sort(np.asarray(again.ids)[np.asarray(again.valid)]), np.sort(kept)
    )
    second = strat.end_task(
        _task_end(strat, objective, config, features, range(15, 30), labels, 2, first.buffers)
    ).buffers["memory"]
    valid = np.asarray(second.valid)
    ids, tasks = np.asarray(second.ids)[valid], np.asarray(second.tasks)[valid]
    assert sorted(ids[tasks == 0]) == sorted(kept)
    assert len(ids[tasks == 1]) == 4 and set(ids[tasks == 1]) <= set(range(15, 30))


# ---------------------------------------------------------------------------------------------
# LUMP's mixup


def _rows(batch, key):
    """The ``RowInputs`` LUMP's hooks read: the batch and the step's key."""
    return base.RowInputs(state=None, batch=batch, data=None, key=key, task=0, hyper={})


def test_lump_mixes_both_views_with_one_beta_lambda():
    _, _, strat = _parts("lump")
    rng = np.random.default_rng(0)
    views = tuple(jnp.asarray(rng.normal(size=(8, 4, 4, 3)), jnp.float32) for _ in range(2))
    full = current_batch(train_data(8), jnp.arange(8))
    lams = []
    for seed in range(400):
        mixed = strat.transform_views(views, full, _rows(full, jax.random.PRNGKey(seed)))
        assert all(m.shape == (4, 4, 4, 3) for m in mixed)
        # x~ = lam a + (1 - lam) b: lam recovered from one entry fits every entry of both views.
        a, b = views[0][:4], views[0][4:]
        lam = float((mixed[0][0, 0, 0, 0] - b[0, 0, 0, 0]) / (a[0, 0, 0, 0] - b[0, 0, 0, 0]))
        for m, v in zip(mixed, views, strict=True):
            np.testing.assert_allclose(m, lam * v[:4] + (1 - lam) * v[4:], atol=1e-4)
        lams.append(lam)
    lams = np.array(lams)
    alpha = 0.4  # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1389
    assert (lams > -1e-4).all() and (lams < 1 + 1e-4).all()
    assert abs(lams.mean() - 0.5) < 5 * np.sqrt(0.1389 / 400)
    assert abs(lams.var() - 1 / (4 * (2 * alpha + 1))) < 0.03
    # An empty buffer (invalid buffer rows): no mixing at all.
    empty = full.replace(valid=jnp.arange(8) < 4)
    mixed = strat.transform_views(views, empty, _rows(empty, jax.random.PRNGKey(0)))
    for m, v in zip(mixed, views, strict=True):
        np.testing.assert_array_equal(m, v[:4])


# ---------------------------------------------------------------------------------------------
# Labels the learner may use


def test_visible_labels_per_task_fraction_seeded():
    labels = np.arange(100, dtype=np.int32) % 7
    tasks = [np.arange(0, 40), np.arange(40, 100)]
    visible = visible_labels(labels, tasks, fraction=0.25, seed=3)
    assert (visible[:40] >= 0).sum() == 10 and (visible[40:] >= 0).sum() == 15
    shown = visible >= 0
    np.testing.assert_array_equal(visible[shown], labels[shown])
    np.testing.assert_array_equal(visible, visible_labels(labels, tasks, fraction=0.25, seed=3))
    assert not np.array_equal(visible, visible_labels(labels, tasks, fraction=0.25, seed=4))
    assert (visible_labels(labels, tasks, fraction=0.0, seed=3) == -1).all()
    np.testing.assert_array_equal(visible_labels(labels, tasks, fraction=1.0, seed=3), labels)


# ---------------------------------------------------------------------------------------------
# Parameter groups: optax.multi_transform


def test_parameter_groups_own_learning_rate_frozen_and_skipped():
    """Plain SGD (no momentum, no decay) on four groups: the default at lr, one at 10 lr, one
    frozen (no update, no state), one whose step is skipped by its 'active' switch."""
    config, objective, _ = _parts("finetune")
    config.optimizer.update(name="sgd", weight_decay=0.0, scale_lr_by_batch=False)
    config.optimizer.kwargs = {"momentum": 0.5}
    groups = {
        "fast": optim.ParamGroup(lr_scale=10.0),
        "frozen": optim.ParamGroup(frozen=True),
        "paused": optim.ParamGroup(active="go"),
    }
    names = {"fast": "fast", "frozen": "frozen", "paused": "paused"}
    strat = base.Strategy(
        name="test",
        param_labels=lambda tree: optim.label_top_level(tree, names),
        param_groups=groups,
    )
    tx = step_lib.make_tx(config, objective, strat)
    trainable = {
        "student": {"w": jnp.ones(3)},
        "online_probe": {},
        "strategy": {k: jnp.ones(3) for k in ("fast", "frozen", "paused")},
    }
    grads = jax.tree.map(lambda x: jnp.full_like(x, 2.0), trainable)
    opt_state = tx.init(trainable)
    hyper = {"lr": jnp.float32(0.1), step_lib.group_lr_key("fast"): jnp.float32(1.0)}
    for go in (0.0, 1.0):
        opt_state = step_lib.set_group_hyperparams(
            opt_state, step_lib.param_groups(objective, strat), {**hyper, "go": jnp.float32(go)}
        )
        updates, new_state = tx.update(grads, opt_state, trainable)
        np.testing.assert_allclose(updates["student"]["w"], -0.1 * 2.0)
        np.testing.assert_allclose(updates["strategy"]["fast"], -1.0 * 2.0)
        np.testing.assert_array_equal(updates["strategy"]["frozen"], 0.0)
        np.testing.assert_allclose(updates["strategy"]["paused"], -0.1 * 2.0 * go)
        paused = lambda s: s.inner_states["paused"].inner_state.inner_state  # noqa: E731
        if go == 0.0:  # skipped: its momentum is still the initial zeros
            chex.assert_trees_all_equal(paused(new_state), paused(opt_state))
        else:
            before, after = jax.tree.leaves(paused(opt_state)), jax.tree.leaves(paused(new_state))
            assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    assert not jax.tree.leaves(new_state.inner_states["frozen"])


def test_cassle_byol_predictor_trains_at_lr_over_lambda():
    """CaSSLe's predictive distiller: h's group has lr / lambda when lambda < 1, the rest lr."""
    config = objectives.resolve_config(
        tiny_objective_config("byol", strategy="cassle", **{"cassle.weight": 0.5})
    )
    objective = objectives.get_objective(config)
    strat = strategies.get_strategy(config, objective)
    hyper = step_lib.stage_hyper(config, objective, strat, num_epochs=3, steps_per_epoch=2)
    base_lr = step_lib.scaled_base_lr(config)
    own = step_lib.lr_schedule(
        config, num_epochs=3, steps_per_epoch=2, group=optim.ParamGroup(lr=base_lr / 0.5)
    )
    np.testing.assert_allclose(
        hyper[step_lib.group_lr_key("cassle_predictor")], jax.vmap(own)(np.arange(6)), rtol=1e-6
    )
    labels = strat.param_labels(strat.init(*_byol_init(objective)).trainable)
    assert set(jax.tree.leaves(labels)) == {"cassle_predictor"}
    _, _, default = _parts("cassle")
    assert default.param_groups == {}


def _byol_init(objective):
    variables = objective.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=True)
    return variables, jax.random.PRNGKey(1), None


# ---------------------------------------------------------------------------------------------
# Whole runs


def test_replay_run_compiles_twice_and_starts_as_finetune(mock_cifar10, tmp_path, monkeypatch):
    """Three tasks of replay with a reservoir memory, which changes every step:
    - the step compiles twice in all (without and with the replay rows);
    - the first task trains as finetune (up to float rounding: another program);
    - the memory is full and reported in results.json.
    (CCL's run resumes mid-task with a reservoir memory of the same rehearsal.)
    """
    ended = []  # the state at the end of each task, before the strategy rewrites it
    start_task = state_lib.start_task

    def recording_start_task(state, **kwargs):
        ended.append(jax.device_get(state))
        return start_task(state, **kwargs)

    monkeypatch.setattr(state_lib, "start_task", recording_start_task)

    def config(strategy="replay", **kw):
        return tiny_objective_config("simclr", strategy=strategy, **THREE_TASKS, **kw)

    whole = _run(config(), tmp_path / "whole")
    assert whole["traces"] == [1, 1]
    finetuned = _run(config("finetune", stop_after_steps=4), tmp_path / "finetune")
    chex.assert_trees_all_close(ended[0].params, finetuned["state"].params, **ROUNDING)
    chex.assert_trees_all_close(ended[0].batch_stats, finetuned["state"].batch_stats, **ROUNDING)
    mem = whole["state"].strategy.buffers["memory"]
    assert int(mem.valid.sum()) == 12
    meta = json.loads((tmp_path / "whole" / "results.json").read_text())["meta"]
    assert meta["strategy_buffer_bytes"] == memory.nbytes(mem) == 12 * (4 * 4 + 1)


def test_class_balanced_memory_with_more_classes_than_slots_keeps_one_a_class():
    """class_balanced with 4 slots and a batch of 8 classes: one slot for each of the 4 classes of
    lowest ids, as Avalanche's group lengths give them (a quota of 4 // 8 = 0 would empty the
    memory)."""
    _, _, strat = _parts(
        "replay", **{"replay.selection": "class_balanced", "replay.memory_size": 4}
    )
    data = dataclasses.replace(train_data(8), classes=jnp.arange(8, dtype=jnp.int32))
    batch = current_batch(data, jnp.arange(8))
    state = state_lib.StrategyState(buffers={"memory": memory.empty_memory(4)})
    buffers = update_buffers(strat, state, batch, data, task=0)
    stored = buffers["memory"]
    assert int(stored.valid.sum()) == 4
    assert sorted(np.asarray(stored.labels)[np.asarray(stored.valid)].tolist()) == [0, 1, 2, 3]


def test_replay_settings_that_cannot_work_are_rejected():
    with pytest.raises(ValueError, match="replay.selection='fifo'"):
        _parts("replay", **{"replay.selection": "fifo"})
    with pytest.raises(ValueError, match="replay.sampling='loader' walks passes over a memory"):
        _parts("replay", **{"replay.sampling": "loader"})  # the default reservoir
    with pytest.raises(ValueError, match="lump.alpha=0"):
        _parts("lump", **{"lump.alpha": 0.0})
    assert lump.default_config().alpha == 0.4
    assert replay.default_config().batch_size == 32


def test_resume_compares_only_the_sections_the_run_reads():
    """Another objective's or strategy's section may change between a run and its resume."""
    stored = json.loads(tiny_objective_config("simclr", strategy="replay").to_json())
    given = json.loads(tiny_objective_config("simclr", strategy="replay").to_json())
    given["byol"]["pred_hidden_dim"] += 1
    given["cassle"]["weight"] = 0.5
    assert config_lib.differing_fields(stored, given) == []
    given["replay"]["batch_size"] += 1
    given["simclr"]["temperature"] = 0.3
    assert config_lib.differing_fields(stored, given) == ["replay.batch_size", "simclr.temperature"]
