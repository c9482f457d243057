"""CCL: the teacher's resets and per-epoch EMA, the extra sample queue, the loss against NumPy,
min_var exemplars at the end of a task, and a whole run that resumes exactly mid-task."""

import functools
import json
import shutil
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    initial_state,
    random_split,
    run,
    shipped_config,
    tiny_objective_config,
    train_data,
    update_buffers,
)
from test_distill import np_relational_distillation
from test_losses import np_info_nce

from cl_ssl import config as config_lib
from cl_ssl import memory, objectives, parallel, planning, strategies
from cl_ssl import state as state_lib
from cl_ssl import step as step_lib
from cl_ssl.data import augment
from cl_ssl.data.batch import current_batch, join
from cl_ssl.data.sources import ArraySplit
from cl_ssl.objectives.base import target_params
from cl_ssl.state import StrategyState
from cl_ssl.strategies import base, ccl, replay
from cl_ssl.strategies.base import LossInputs

# Mock CIFAR-10 (48 images), 2 class-incremental tasks of 5 classes: 3 steps per epoch of 8
# images, 6 per task; MoCo's queue of 32 keys, an ESQ of 16, 2 exemplars per cluster; the
# optimizer's momentum carried across tasks, as in CCL.
CCL = {
    "strategy": "ccl",
    "eval.evaluators": ("knn",),
    "ccl.esq_size": 16,
    "ccl.replay.per_class": 2,
    "ccl.replay.batch_size": 4,
    "optimizer.reset_each_task": False,
}
OWN, REPLAYED = 8, 4


RESERVOIR = {"ccl.replay.selection": "reservoir"}
MIX = {"ccl.replay.mode": "mix", "ccl.group_size": 4}


def _config(**overrides):
    return tiny_objective_config("mocov2plus", **{**CCL, **overrides})


def _parts(**overrides):
    config = objectives.resolve_config(_config(**overrides))
    objective = objectives.get_objective(config)
    return config, objective, strategies.get_strategy(config, objective)


def _initial(config, objective, strat, split):
    tx = step_lib.make_tx(config, objective, strat)
    return initial_state(objective, strat, tx, split)


SPLIT = random_split(16, num_classes=4)


@functools.cache
def _default():
    """(config, objective, strategy, initial state on ``SPLIT``) of the default tiny setting,
    built once per worker."""
    config, objective, strat = _parts()
    return config, objective, strat, _initial(config, objective, strat, SPLIT)


def _moved(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    moved = [x + 0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, moved)


def _joined_batch(task=1):
    """8 rows of the current task, then 4 replayed rows: tasks 0, 0, 1, 0 with the last one
    invalid, so rows 8 and 9 are the old images that count."""
    data = train_data(16, tasks=task)
    own = current_batch(data, jnp.arange(OWN))
    rows = current_batch(data, jnp.arange(OWN, OWN + REPLAYED))
    rows = rows.replace(
        tasks=jnp.array([0, 0, 1, 0], jnp.int32), valid=jnp.array([1, 1, 1, 0], bool)
    )
    return data, own, join(own, rows)


OLD = np.array([1, 1, 0, 0], bool)


def _keys(seed, rows=OWN + REPLAYED, dim=16):
    rng = np.random.default_rng(seed)
    return tuple(
        {"projection": jnp.asarray(rng.standard_normal((rows, dim)), jnp.float32)} for _ in range(2)
    )


def _normalize(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Buffers: teacher EMA and extra sample queue


def test_teacher_momentum_is_set_at_the_last_step_of_each_epoch_only():
    schedule = ccl.teacher_momentum_schedule(0.996)(6, 3)[ccl.TEACHER_MOMENTUM]
    np.testing.assert_array_equal(schedule, np.float32([1, 1, 0.996, 1, 1, 0.996]))


def _update_buffers(strat, s, params, batch, joined, target, data, momentum=1.0):
    """``strat.update_buffers`` at task 1 with teacher momentum ``momentum``."""
    return update_buffers(
        strat,
        s,
        batch,
        data,
        params=params,
        joined=joined,
        target=target,
        hyper={ccl.TEACHER_MOMENTUM: jnp.float32(momentum)},
    )


def test_teacher_moves_at_epoch_ends_only_and_the_esq_takes_replayed_keys_only():
    _, _, strat, state = _default()
    s = state.strategy
    params = _moved(state.params, seed=1)
    data, own, joined = _joined_batch()
    target = _keys(seed=2)

    def update(tau, joined=joined, target=target):
        return _update_buffers(strat, s, params, own, joined, target, data, tau)

    within_epoch, epoch_end = update(1.0), update(0.996)
    # The same update jitted with the batch split over 4 devices.
    sharded = jax.device_put((joined, target), parallel.batch_sharded(parallel.make_mesh(4)))
    on_four = jax.jit(lambda j, t: update(1.0, j, t))(*sharded)
    chex.assert_trees_all_close(on_four, within_epoch, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(within_epoch["teacher"], s.buffers["teacher"])
    expected = jax.tree.map(
        lambda t, p: 0.996 * np.asarray(t, np.float64) + 0.004 * np.asarray(p, np.float64),
        s.buffers["teacher"],
        target_params(params),
    )
    chex.assert_trees_all_close(epoch_end["teacher"], expected, rtol=1e-6, atol=1e-6)
    for view in range(2):
        queue = within_epoch["esq"][view]
        replayed = _normalize(target[view]["projection"][OWN:])[OLD]
        np.testing.assert_allclose(queue.items[:2], replayed, rtol=1e-6)
        np.testing.assert_array_equal(queue.items[2:], 0.0)
        assert int(queue.ptr) == 2


def test_a_task_start_resets_teacher_and_key_encoder_and_takes_mocos_first_keys():
    """At the first boundary: the teacher becomes the student, the ESQ the first 16 rows of each
    of MoCo's queues, the key encoder the student; min_var stores 2 exemplars per cluster of the
    task's images, embedded as 6 augmentations and the centre crop, last. At the second boundary
    the ESQ carries on."""
    _, objective, strat, state = _default()
    split = SPLIT
    moved = _moved(state.params, seed=3)
    queues = tuple(
        memory.random_unit_queue(jax.random.PRNGKey(i), 32, 16).replace(ptr=jnp.int32(8))
        for i in range(2)
    )
    state = state.replace(params=moved, objective_state={**state.objective_state, "queues": queues})
    indices = np.arange(12)  # classes 0..3: 4 clusters

    embedded = []

    def map_images(fn, variables, *rows):
        embedded.append(np.asarray(jax.jit(fn)(variables, *rows)))
        return embedded[-1]

    def end(at, next_task):
        return base.TaskEnd(
            state=at,
            next_task=next_task,
            key=jax.random.PRNGKey(0),
            indices=indices,
            train=split,
            features=None,
            map_images=map_images,
        )

    first = strat.end_task(end(state, 1))
    (embeddings,) = embedded
    assert embeddings.shape == (12, replay.MIN_VAR_VIEWS, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)
    variables = {"params": moved, "batch_stats": state.batch_stats}
    crop = augment.center_crop_batch(
        jnp.asarray(split.images[indices]), objective.views[0], fraction=224 / 256
    )
    anchor = objective.model.apply(variables, crop, False)["projection"]
    np.testing.assert_allclose(embeddings[:, -1], _normalize(anchor), rtol=1e-4, atol=1e-5)
    assert not np.allclose(embeddings[:, 0], embeddings[:, 1])  # the views differ
    chex.assert_trees_all_equal(first.buffers["teacher"], target_params(moved))
    for esq, queue in zip(first.buffers["esq"], queues, strict=True):
        np.testing.assert_array_equal(esq.items, queue.items[:16])
        assert int(esq.ptr) == 0
    stored = first.buffers["memory"]
    assert 4 <= int(stored.valid.sum()) <= 8  # 2 per cluster, 1 from a cluster of one
    assert set(np.asarray(stored.ids)[np.asarray(stored.valid)]) <= set(indices)
    assert set(np.asarray(stored.tasks)[np.asarray(stored.valid)]) == {0}

    restarted = strat.start_objective(state.objective_state, moved)
    chex.assert_trees_all_equal(restarted["momentum"], target_params(moved))
    chex.assert_trees_all_equal(restarted["queues"], queues)

    pushed = tuple(q.replace(items=q.items + 1.0, ptr=jnp.int32(3)) for q in first.buffers["esq"])
    later = state.replace(strategy=first.replace(buffers={**first.buffers, "esq": pushed}))
    second = strat.end_task(end(later, 2))
    chex.assert_trees_all_equal(second.buffers["esq"], pushed)


# ---------------------------------------------------------------------------------------------
# The loss


def test_loss_is_esq_info_nce_plus_relational_distillation_of_the_replayed_rows():
    """Task 1: 0.1 * the symmetric InfoNCE against the ESQ of the other view, over every row,
    + 0.1 * the mean over the two views of KL(teacher || student) over the old replayed rows,
    anchored on their centre crops; task 0: nothing."""
    config, objective, strat, state = _default()
    model = objective.model
    teacher = _moved(state.strategy.buffers["teacher"], seed=4)
    esq = tuple(memory.random_unit_queue(jax.random.PRNGKey(5 + v), 16, 16) for v in range(2))
    strategy_state = state.strategy.replace(
        buffers={**state.strategy.buffers, "teacher": teacher, "esq": esq}
    )
    _, _, joined = _joined_batch()
    rng = np.random.default_rng(6)
    views = tuple(
        jnp.asarray(rng.standard_normal((OWN + REPLAYED, 32, 32, 3)), jnp.float32) for _ in range(2)
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = tuple(model.apply(variables, x, True, mutable=["batch_stats"])[0] for x in views)
    target = _keys(seed=7)

    def loss(task, batch=joined, views=views, outputs=outputs, target=target):
        return strat.loss(
            LossInputs(
                outputs=outputs,
                views=views,
                batch=batch,
                params=state.params,
                trainable=state.strategy.trainable,
                state=strategy_state,
                task=jnp.int32(task),
                hyper={},
                target=target,
            )
        )

    value, metrics = loss(1)
    q = [np.asarray(o["projection"]) for o in outputs]
    k = [np.asarray(t["projection"]) for t in target]
    t = config.mocov2plus.temperature
    esq_expected = 0.5 * (
        np_info_nce(q[0], k[1], esq[1].items, t) + np_info_nce(q[1], k[0], esq[0].items, t)
    )

    def project(params, x):
        out, _ = model.apply({"params": params}, x, True, method="project", mutable=["batch_stats"])
        return np.asarray(out["projection"])

    anchors = augment.center_crop_batch(joined.images[OWN:], objective.views[0], fraction=0.875)
    distill_expected = np.mean(
        [
            np_relational_distillation(
                q[v][OWN:],
                project(state.params, anchors),
                project(teacher, views[v][OWN:]),
                project(teacher, anchors),
                0.07,
                0.04,
                OLD,
                OLD,
            )
            for v in range(2)
        ]
    )
    np.testing.assert_allclose(metrics["esq"], esq_expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["distill"], distill_expected, rtol=1e-4, atol=1e-6)
    assert distill_expected > 0
    np.testing.assert_allclose(value, 0.1 * esq_expected + 0.1 * distill_expected, rtol=1e-5)

    # Jitted with every row-indexed input split over 4 devices: the same terms.
    rows = parallel.batch_sharded(parallel.make_mesh(4))
    on_four = jax.jit(lambda *args: loss(1, *args))(
        *jax.device_put((joined, views, outputs, target), rows)
    )
    chex.assert_trees_all_close(on_four, (value, metrics), rtol=1e-5, atol=1e-6)

    value, metrics = loss(0)
    assert float(value) == 0.0 and all(float(m) == 0.0 for m in metrics.values())

    # The student's queries are fixed here, so the distillation reaches the parameters through
    # the student's anchors only: a gradient while old rows count, none without any.
    @jax.jit
    def anchor_gradient(params, batch):
        def distill(p):
            inputs = LossInputs(
                outputs=outputs,
                views=views,
                batch=batch,
                params=p,
                trainable=state.strategy.trainable,
                state=strategy_state,
                task=jnp.int32(1),
                hyper={},
                target=target,
            )
            return strat.loss(inputs)[1]["distill"]

        return optax.tree.norm(jax.grad(distill)(params))

    assert float(anchor_gradient(state.params, joined)) > 0
    nothing_old = joined.replace(valid=joined.valid.at[OWN:].set(False))
    assert float(anchor_gradient(state.params, nothing_old)) == 0.0


# ---------------------------------------------------------------------------------------------
# One-direction MoCo (mocov2plus.symmetric=False, the reference's)

ONE_WAY = {"mocov2plus.symmetric": False}


def np_ddp_distillation(sq, sa, tq, ta, is_from_old, gpus):
    """CCL's ``moco/builder.py`` l.233-255 on each of ``gpus`` processes, each with its
    consecutive share of the rows, then DDP's mean of the processes' terms: a process whose
    rows hold no old one adds nothing (0)."""
    terms = []
    for g in range(gpus):
        rows = slice(g * len(sq) // gpus, (g + 1) * len(sq) // gpus)
        idx = np.asarray(is_from_old[rows]) == 1
        if idx.sum() == 0:
            terms.append(0.0)
            continue
        s_q, s_anchor = _normalize(sq[rows])[idx], _normalize(sa[rows])[idx]
        t_q, t_anchor = _normalize(tq[rows])[idx], _normalize(ta[rows])[idx]
        s_simi = s_q @ s_anchor.T
        t_simi = t_q @ t_anchor.T
        log_s = s_simi / 0.07 - np.log(np.exp(s_simi / 0.07).sum(1, keepdims=True))
        knowledge = np.exp(t_simi / 0.04) / np.exp(t_simi / 0.04).sum(1, keepdims=True)
        # F.kl_div(log_s, knowledge, reduction='batchmean'): the sum over the matrix / its rows.
        kl = np.sum(knowledge * (np.log(knowledge) - log_s)) / s_q.shape[0]
        terms.append(kl)
    return np.mean(terms)


def test_groupwise_distillation_is_the_reference_ddps_per_gpu_kl_averaged_over_gpus():
    """Rows in 4 groups of 4 (one GPU's batch each): the first with 2 old rows, the second with
    none (counts 0), the third with 1 (a 1x1 matrix: KL 0), the fourth all old."""
    rng = np.random.default_rng(11)
    sq, sa, tq, ta = (rng.standard_normal((16, 6)).astype(np.float32) for _ in range(4))
    old = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1], bool)
    got = ccl.groupwise_relational_distillation(
        *(jnp.asarray(x) for x in (sq, sa, tq, ta)),
        old=jnp.asarray(old),
        group_size=4,
        student_temperature=0.07,
        teacher_temperature=0.04,
    )
    expected = np_ddp_distillation(sq, sa, tq, ta, old.astype(int), gpus=4)
    np.testing.assert_allclose(float(got), expected, rtol=2e-5, atol=1e-6)
    # Only the first and last groups contribute; the empty one is a 0 in the mean of 4.
    first = np_ddp_distillation(sq[:4], sa[:4], tq[:4], ta[:4], old[:4].astype(int), gpus=1)
    last = np_ddp_distillation(sq[12:], sa[12:], tq[12:], ta[12:], old[12:].astype(int), gpus=1)
    assert first > 0 and last > 0
    np.testing.assert_allclose(float(got), (first + last) / 4, rtol=2e-5)
    # The whole batch as one group differs: the groups' anchors are their own old rows.
    one_group = np_ddp_distillation(sq, sa, tq, ta, old.astype(int), gpus=1)
    assert abs(one_group - expected) > 1e-3


def np_moco_logits_loss(q, k, queue, temperature):
    """The reference's one-direction MoCo term, transcribed (moco/builder.py l.186-216 with the
    CrossEntropyLoss of train.py l.230, l.495): q and k L2-normalised rows, the queue one key per
    row; l_pos = q . k, l_neg = q queue^T, the cross-entropy of [l_pos, l_neg] / T at index 0."""
    q, k, queue = (_normalize(x) for x in (q, k, queue))
    l_pos = np.einsum("nc,nc->n", q, k)[:, None]
    l_neg = q @ queue.T
    logits = np.concatenate([l_pos, l_neg], axis=1) / temperature
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return np.mean(log_z - logits[:, 0])


def test_one_direction_moco_is_the_references_loss_with_one_queue_of_view2_keys():
    """symmetric=False: InfoNCE(q1, k2, Q) with Q the one queue, which takes the normalised view-2
    keys, and the student sees view 1 alone (the reference's encoder_q); symmetric=True (the
    default) keeps both directions, a queue per view."""
    rng = np.random.default_rng(11)
    s, t = (
        tuple({"projection": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)} for _ in "12")
        for _ in "st"
    )
    one_way = objectives.get_objective(objectives.resolve_config(_config(**ONE_WAY)))
    both = objectives.get_objective(objectives.resolve_config(_config()))
    state = one_way.init_state(_default()[3].params, jax.random.PRNGKey(0))
    (queue,) = state["queues"]
    assert queue.items.shape == (32, 16)
    assert (one_way.student_views, both.student_views) == ((0,), (0, 1))
    value, metrics, keys = one_way.loss(s[:1], t, state, None, {})
    q1, k2 = (np.asarray(x[i]["projection"]) for x, i in ((s, 0), (t, 1)))
    expected = np_moco_logits_loss(q1, k2, queue.items, 0.2)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["info_nce"], expected, rtol=1e-5)
    after = one_way.update_state(state, _default()[3].params, keys, {"momentum": 0.99})
    (pushed,) = after["queues"]
    np.testing.assert_allclose(pushed.items[:8], _normalize(k2), rtol=1e-6)
    np.testing.assert_array_equal(pushed.items[8:], queue.items[8:])
    assert int(pushed.ptr) == 8
    # The same shapes after the step: the state keeps one queue for the whole run.
    chex.assert_trees_all_equal_shapes_and_dtypes(after, state)

    sym_state = both.init_state(_default()[3].params, jax.random.PRNGKey(0))
    queue1, queue2 = sym_state["queues"]
    # The one-direction queue is drawn as the symmetric loss's view-2 queue.
    np.testing.assert_array_equal(queue.items, queue2.items)
    value, _, keys = both.loss(s, t, sym_state, None, {})
    q2, k1 = (np.asarray(x[i]["projection"]) for x, i in ((s, 1), (t, 0)))
    np.testing.assert_allclose(
        value,
        0.5
        * (
            np_moco_logits_loss(q1, k2, queue2.items, 0.2)
            + np_moco_logits_loss(q2, k1, queue1.items, 0.2)
        ),
        rtol=1e-5,
    )
    assert len(keys) == 2


def test_one_direction_ccl_esq_and_distillation_read_view1_queries_and_view2_keys():
    """With the one-direction MoCo: one ESQ, fed by the replayed rows' view-2 keys and started
    from MoCo's one queue; the loss 0.1 * InfoNCE(q1, k2, ESQ) over every row (builder.py
    l.225-230) + 0.1 * the distillation of view 1's queries alone (l.232-255)."""
    config, objective, strat = _parts(**ONE_WAY)
    state = _initial(config, objective, strat, SPLIT)
    (esq0,) = state.strategy.buffers["esq"]
    assert esq0.items.shape == (16, 16)
    model = objective.model
    teacher = _moved(state.strategy.buffers["teacher"], seed=4)
    esq = (memory.random_unit_queue(jax.random.PRNGKey(5), 16, 16),)
    strategy_state = state.strategy.replace(
        buffers={**state.strategy.buffers, "teacher": teacher, "esq": esq}
    )
    data, own, joined = _joined_batch()
    rng = np.random.default_rng(6)
    views = tuple(
        jnp.asarray(rng.standard_normal((OWN + REPLAYED, 32, 32, 3)), jnp.float32) for _ in range(2)
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = tuple(model.apply(variables, x, True, mutable=["batch_stats"])[0] for x in views)
    target = _keys(seed=7)
    value, metrics = strat.loss(
        LossInputs(
            outputs=outputs,
            views=views,
            batch=joined,
            params=state.params,
            trainable=state.strategy.trainable,
            state=strategy_state,
            task=jnp.int32(1),
            hyper={},
            target=target,
        )
    )
    q1 = np.asarray(outputs[0]["projection"])
    k2 = np.asarray(target[1]["projection"])
    esq_expected = np_moco_logits_loss(q1, k2, esq[0].items, config.mocov2plus.temperature)

    def project(params, x):
        out, _ = model.apply({"params": params}, x, True, method="project", mutable=["batch_stats"])
        return np.asarray(out["projection"])

    anchors = augment.center_crop_batch(joined.images[OWN:], objective.views[0], fraction=0.875)
    distill_expected = np_relational_distillation(
        q1[OWN:],
        project(state.params, anchors),
        project(teacher, views[0][OWN:]),
        project(teacher, anchors),
        0.07,
        0.04,
        OLD,
        OLD,
    )
    np.testing.assert_allclose(metrics["esq"], esq_expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["distill"], distill_expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(value, 0.1 * esq_expected + 0.1 * distill_expected, rtol=1e-5)

    # The ESQ takes the old replayed rows' view-2 keys.
    buffers = _update_buffers(strat, state.strategy, state.params, own, joined, target, data)
    (queue,) = buffers["esq"]
    np.testing.assert_allclose(queue.items[:2], _normalize(k2[OWN:])[OLD], rtol=1e-6)
    np.testing.assert_array_equal(queue.items[2:], 0.0)

    # At the first boundary the ESQ becomes the first 16 keys of MoCo's one queue.
    (moco_queue,) = state.objective_state["queues"]
    first = strat.end_task(
        base.TaskEnd(
            state=state,
            next_task=1,
            key=jax.random.PRNGKey(0),
            indices=np.arange(12),
            train=SPLIT,
            features=None,
            map_images=lambda fn, variables, *rows: np.asarray(jax.jit(fn)(variables, *rows)),
        )
    )
    (started,) = first.buffers["esq"]
    np.testing.assert_array_equal(started.items, moco_queue.items[:16])


def test_mix_mode_distils_the_old_rows_of_each_group_and_queues_their_view2_keys():
    """ccl.replay.mode='mix' with the one-direction MoCo: 12 rows of the step's own batch in 3
    groups of 4, old rows (task 0 < 1, valid) 0 and 2, none, then 8, 9 and 10; the loss is
    0.1 * InfoNCE(q1, k2, ESQ) over every row + 0.1 * the reference's per-GPU distillation
    (``np_ddp_distillation``) with every group's anchors, teacher queries and centre crops
    embedded by its group alone; the ESQ takes the old rows' view-2 keys, in order."""
    config, objective, strat = _parts(**ONE_WAY, **MIX)
    state = _initial(config, objective, strat, SPLIT)
    model = objective.model
    teacher = _moved(state.strategy.buffers["teacher"], seed=4)
    esq = (memory.random_unit_queue(jax.random.PRNGKey(5), 16, 16),)
    strategy_state = state.strategy.replace(
        buffers={**state.strategy.buffers, "teacher": teacher, "esq": esq}
    )
    data = train_data(16, tasks=1)
    old = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0], bool)
    batch = current_batch(data, jnp.arange(12))
    batch = batch.replace(
        tasks=jnp.asarray(np.where(old, 0, 1), jnp.int32).at[11].set(0),
        valid=jnp.ones(12, bool).at[11].set(False),  # task 0 but invalid: not old
    )
    rng = np.random.default_rng(6)
    views = tuple(jnp.asarray(rng.standard_normal((12, 32, 32, 3)), jnp.float32) for _ in range(2))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    outputs = tuple(model.apply(variables, x, True, mutable=["batch_stats"])[0] for x in views)
    target = _keys(seed=7, rows=12)
    value, metrics = strat.loss(
        LossInputs(
            outputs=outputs,
            views=views,
            batch=batch,
            params=state.params,
            trainable=state.strategy.trainable,
            state=strategy_state,
            task=jnp.int32(1),
            hyper={},
            target=target,
            own_rows=12,
        )
    )
    q1 = np.asarray(outputs[0]["projection"])
    k2 = np.asarray(target[1]["projection"])
    esq_expected = np_moco_logits_loss(q1, k2, esq[0].items, config.mocov2plus.temperature)

    def project(params, x):  # group by group, BatchNorm on each group's statistics
        out = [
            model.apply(
                {"params": params}, x[g : g + 4], True, method="project", mutable=["batch_stats"]
            )[0]["projection"]
            for g in range(0, 12, 4)
        ]
        return np.concatenate(out)

    anchors = augment.center_crop_batch(batch.images, objective.views[0], fraction=0.875)
    distill_expected = np_ddp_distillation(
        q1,
        project(state.params, anchors),
        project(teacher, views[0]),
        project(teacher, anchors),
        old.astype(int),
        gpus=3,
    )
    assert distill_expected > 0
    np.testing.assert_allclose(metrics["esq"], esq_expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["distill"], distill_expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(value, 0.1 * esq_expected + 0.1 * distill_expected, rtol=1e-5)

    buffers = _update_buffers(strat, state.strategy, state.params, batch, batch, target, data)
    (queue,) = buffers["esq"]
    np.testing.assert_allclose(queue.items[:5], _normalize(k2)[old], rtol=1e-6)
    np.testing.assert_array_equal(queue.items[5:], 0.0)


def test_the_optimizer_state_carries_over_a_boundary_unless_reset_each_task():
    config, objective, strat, state = _default()
    tx = step_lib.make_tx(config, objective, strat)
    momentum = jax.tree.map(lambda x: x + 1.0 if x.dtype == jnp.float32 else x, state.opt_state)
    state = state.replace(opt_state=momentum)

    def start(reset):
        return state_lib.start_task(
            state,
            task=1,
            tx=tx,
            objective_state=state.objective_state,
            strategy_state=state.strategy,
            reset_optimizer=reset,
        ).opt_state

    chex.assert_trees_all_equal(start(False), momentum)
    chex.assert_trees_all_equal(start(True), tx.init(state_lib.trainable(state)))


def test_evaluate_teacher_scores_the_teacher_once_one_was_reset_from_the_student():
    """From the second task the teacher's weights, with the student's statistics; the first
    task's row scores the student."""
    _, _, student_scored = _parts()
    assert student_scored.evaluated is None
    config, objective, strat = _parts(**{"ccl.evaluate_teacher": True})
    state = _initial(config, objective, strat, random_split(16))
    teacher = _moved(state.strategy.buffers["teacher"], seed=8)
    state = state.replace(
        strategy=state.strategy.replace(buffers={**state.strategy.buffers, "teacher": teacher})
    )
    first = strat.evaluated(state)
    chex.assert_trees_all_equal(first, (state.params, state.batch_stats))
    params, batch_stats = strat.evaluated(state.replace(task=jnp.int32(1)))
    chex.assert_trees_all_equal(params, teacher)
    chex.assert_trees_all_equal(batch_stats, state.batch_stats)


# ---------------------------------------------------------------------------------------------
# A whole run


def test_run_compiles_twice_fills_memory_and_esq(finished_run):
    """Two tasks: the step compiles without, then with, the replay rows; the memory is full, the
    ESQ holds unit keys. (Resuming mid-task with memory and ESQ non-empty: the mix run below.)"""
    # Reservoir exemplars here (min_var's selection is the boundary test's): 2 x 10 class slots.
    whole, workdir = finished_run(_config(**RESERVOIR))
    assert whole["traces"] == [1, 1]
    s = whole["state"].strategy
    stored = s.buffers["memory"]
    assert int(stored.valid.sum()) == 20
    for esq in s.buffers["esq"]:  # MoCo's keys, then replayed ones: unit rows
        np.testing.assert_allclose(np.linalg.norm(esq.items, axis=-1), 1.0, rtol=1e-5)
    # The last boundary has reset the teacher to the student, as for a next task.
    chex.assert_trees_all_equal(s.buffers["teacher"], target_params(whole["state"].params))
    document = json.loads((workdir / "results.json").read_text())
    assert np.isfinite(np.array(document["matrices"]["knn"][-1], float)).all()


def test_mixed_stage_walks_each_exemplar_once_an_epoch_in_floor_n_plus_m_over_b_steps():
    """``planning.with_examples``: the task's 10 examples and 7 exemplar ids (one stored twice)
    make 17 ids, floor(17 / 4) = 4 steps an epoch of the batch of 4; each epoch's order (a
    function of seed, stage and epoch) holds every task example and every exemplar slot exactly
    once, and its first 16 ids are the epoch's batches. Without exemplars, the stage as
    planned, its orders unchanged."""
    stage = planning.Stage(
        indices=np.arange(10, 20, dtype=np.int32), num_epochs=2, steps_per_epoch=2
    )
    assert planning.with_examples(stage, np.zeros(0, np.int32), 4) is stage
    exemplars = np.array([0, 3, 3, 5, 7, 8, 9], np.int32)
    mixed = planning.with_examples(stage, exemplars, 4)
    assert (mixed.steps_per_epoch, mixed.num_steps, mixed.num_epochs) == (4, 8, 2)
    orders = [planning.epoch_order(0, 1, epoch, mixed.indices) for epoch in range(2)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.sort(np.r_[np.arange(10, 20), exemplars]))
        assert np.sum(order == 3) == 2  # both slots of the repeated exemplar
    assert not np.array_equal(orders[0], orders[1])
    np.testing.assert_array_equal(orders[1], planning.epoch_order(0, 1, 1, mixed.indices))
    # The memory's valid exemplars of earlier tasks, in slot order, are the stage's additions.
    m = memory.empty_memory(5).replace(
        ids=jnp.array([4, 9, 9, 2, 0], jnp.int32),
        tasks=jnp.array([0, 1, 0, 0, 0], jnp.int32),
        valid=jnp.array([True, True, True, False, True]),
    )
    np.testing.assert_array_equal(
        replay.mixed_exemplars(StrategyState(buffers={"memory": m}), 1), [4, 9, 0]
    )


def test_mix_run_trains_the_exemplars_in_the_tasks_data_and_resumes_exactly_mid_task(
    finished_run, tmp_path
):
    """ccl.replay.mode='mix': task 0 (24 images, batch 8) trains 3 steps an epoch; its end stores
    2 min_var exemplars per cluster (as many clusters as the task's classes), which join task 1's
    16 images, so task 1 trains floor((16 + M) / 8) steps an epoch, with one compiled step for
    both tasks. Killed after the mid-task checkpoint 9, the run resumes to exactly the same end,
    and the boundary checkpoints (0, 6 and the end) are kept."""
    config = _config(**MIX)
    whole, workdir = finished_run(config)
    assert whole["traces"] == [1]  # no joined rows: the same step for every task
    stored = whole["state"].strategy.buffers["memory"]
    tasks = np.asarray(stored.tasks)[np.asarray(stored.valid)]
    m = int(np.sum(tasks == 0))
    assert m == 2 * 5  # 2 per cluster, 5 clusters (task 0's classes)
    steps = 6 + 2 * ((16 + m) // 8)
    assert int(whole["state"].step) == steps == 12
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(workdir, resumed_dir)
    assert sorted(int(p.name) for p in (resumed_dir / "checkpoints").iterdir()) == [0, 6, 9, 12]
    shutil.rmtree(resumed_dir / "checkpoints" / "12")
    resumed = run(config, resumed_dir)
    for field in ("params", "batch_stats", "strategy", "objective_state", "opt_state"):
        chex.assert_trees_all_equal(
            getattr(whole["state"], field), getattr(resumed["state"], field)
        )
    np.testing.assert_array_equal(whole["matrices"]["knn"], resumed["matrices"]["knn"])


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_that_cannot_work_are_rejected_before_compiling():
    with pytest.raises(ValueError, match="set --config.objective=mocov2plus"):
        strategies.get_strategy(
            objectives.resolve_config(tiny_objective_config("simclr", strategy="ccl")),
            objectives.get_objective(objectives.resolve_config(tiny_objective_config("simclr"))),
        )
    with pytest.raises(ValueError, match="ccl.esq_size=64"):
        _parts(**{"ccl.esq_size": 64})
    with pytest.raises(ValueError, match="ccl.replay.per_class to at least 1"):
        _parts(**{"ccl.replay.per_class": 0})
    with pytest.raises(ValueError, match="ccl.teacher_temperature=0"):
        _parts(**{"ccl.teacher_temperature": 0.0})


def test_mix_mode_settings_that_cannot_work_are_rejected_before_compiling():
    """``ccl.replay.mode='mix'``: the group size must divide the batch, the BatchNorm group the
    group size, the memory must be filled at the ends of tasks; the defaults keep the joined
    replay batch."""
    assert _config().ccl.replay.mode == "extend" and _config().replay.mode == "extend"
    with pytest.raises(ValueError, match="ccl.group_size=3 must divide batch_size=8"):
        _parts(**{"ccl.replay.mode": "mix", "ccl.group_size": 3})
    with pytest.raises(ValueError, match="ccl.replay.mode='mix' adds the memory's exemplars"):
        _parts(**{"ccl.replay.mode": "mix", "ccl.group_size": 4, **RESERVOIR})
    with pytest.raises(ValueError, match="model.batch_norm_group=8 must divide ccl.group_size=4"):
        _parts(**{"ccl.replay.mode": "mix", "ccl.group_size": 4, "model.batch_norm_group": 8})
    with pytest.raises(ValueError, match="ccl.replay.mode='blend'"):
        _parts(**{"ccl.replay.mode": "blend"})
    _, _, strat = _parts(**{"ccl.replay.mode": "mix", "ccl.group_size": 4})
    assert strat.extend_batch is None and strat.stage_examples is not None
    # CCL's SimpleReplay: plain replay of random exemplars mixed into the tasks' data.
    simple = {
        "strategy": "replay",
        "replay.mode": "mix",
        "replay.selection": "random_with_replacement",
        "replay.per_class": 2,
    }
    config, objective, strat = _parts(**simple)
    assert strat.extend_batch is None and strat.stage_examples is replay.mixed_exemplars
    with pytest.raises(ValueError, match="set replay.mode='extend'"):  # a joined-batch reader
        replay.rehearsal(config, objective)


def test_min_var_memory_has_room_for_every_task_of_a_data_incremental_stream():
    r = replay.default_config()
    r.update(selection="min_var", per_class=20)
    labels = np.arange(100) % 10
    assert replay.capacity(r, labels, 10) == 200
    assert replay.capacity(r, labels, 10, tasks_per_class=5) == 1000


def test_random_with_replacement_is_simplereplays_draw_over_each_task():
    """replay.selection='random_with_replacement' (CCL's SimpleReplay, ``train.py`` l.386-389):
    at the end of every task, per_class x (the task's classes) ids drawn uniformly with
    replacement among the task's examples, each draw its own slot (duplicates kept), the earlier
    tasks' exemplars untouched; the draws follow a NumPy generator seeded with the strategy's key
    and the task."""
    r = replay.default_config()
    r.update(selection="random_with_replacement", per_class=3)
    labels = np.repeat(np.arange(4), 3)  # 4 classes of 3 images: tasks of classes (0, 1), (2, 3)
    assert replay.capacity(r, labels, 4) == 12
    memory_state = memory.empty_memory(12)
    key = jax.random.key(5)
    end_task = replay.end_of_task_selection(r, None)
    expected = []
    for task in range(2):
        indices = np.flatnonzero(np.isin(labels, (2 * task, 2 * task + 1)))
        end = base.TaskEnd(
            state=types.SimpleNamespace(
                strategy=StrategyState(buffers={"memory": memory_state}), params={}, batch_stats={}
            ),
            next_task=task + 1,
            key=key,
            indices=indices,
            train=ArraySplit(
                images=np.zeros((12, 2, 2, 3), np.uint8), labels=labels, num_classes=4
            ),
            features=None,
            map_images=None,
        )
        memory_state = end_task(end).buffers["memory"]
        # The NumPy rule: 3 x 2 draws of np.random.Generator.integers over the task's 6 images.
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist() + [task]
        expected.append(indices[np.random.default_rng(seed).integers(0, 6, size=6)])
        valid = np.asarray(memory_state.valid)
        assert valid.sum() == 6 * (task + 1)
        stored = np.asarray(memory_state.ids)[valid]
        stored_tasks = np.asarray(memory_state.tasks)[valid]
        for t, ids in enumerate(expected):
            np.testing.assert_array_equal(np.sort(stored[stored_tasks == t]), np.sort(ids))
        np.testing.assert_array_equal(np.asarray(memory_state.labels)[valid], labels[stored])
    assert len(np.unique(expected[0])) < 6 or len(np.unique(expected[1])) < 6  # a repeat kept
    with pytest.raises(ValueError, match="ccl.replay.per_class to at least 1"):
        _parts(**{"ccl.replay.selection": "random_with_replacement", "ccl.replay.per_class": 0})


def test_imagenet100_ccl_preset_is_ccls_imagenet_sub_command():
    """configs/imagenet100.py:ccl: CCL's README command on ImageNet-Sub (checked without reading
    mock ImageNet); on CIFAR-100, CaSSLe's MoCoV2+ recipe with the momentum carried over."""
    c = objectives.resolve_config(shipped_config("imagenet100", "ccl"))
    config_lib.validate(c, num_devices=8)
    assert (c.strategy, c.objective, c.dataset.name, c.class_order) == (
        "ccl",
        "mocov2plus",
        "imagenet_sub",
        "imagenet_sub_ccl_seed1",
    )
    assert (c.num_tasks, c.epochs_per_task, c.batch_size, c.model.backbone) == (
        10,
        200,
        256,
        "resnet50",
    )
    o = c.optimizer
    assert (o.name, o.lr, o.weight_decay, o.kwargs.momentum, o.warmup_epochs) == (
        "sgd",
        0.03,
        1e-4,
        0.9,
        0,
    )
    assert not o.scale_lr_by_batch and not o.reset_each_task
    m = c.mocov2plus
    assert (m.temperature, m.queue_size, m.base_momentum, m.final_momentum, m.symmetric) == (
        0.2,
        65536,
        0.999,
        0.999,
        False,
    )
    for view in (c.augment.view1, c.augment.view2):
        assert (view.crop_size, view.min_scale, view.saturation, view.blur_prob) == (
            224,
            0.2,
            0.4,
            0.5,
        )
    assert (c.ccl.esq_size, c.ccl.replay.per_class, c.ccl.replay.selection) == (
        256,
        20,
        "min_var",
    )
    # The exemplars join each task's data; distillation per group of one GPU's 32 rows.
    assert (c.ccl.replay.mode, c.ccl.group_size) == ("mix", 32)
    assert strategies.get_strategy(c, objectives.get_objective(c)).stage_examples is not None
    lin = c.eval.linear
    assert (lin.learning_rate, lin.momentum, lin.weight_decay, lin.epochs, lin.batch_size) == (
        30.0,
        0.9,
        0.0,
        100,
        256,
    )
    assert tuple(lin.milestones) == (0.6, 0.8)
    assert (lin.init_std, lin.augment, lin.center_crop, lin.report_best) == (
        0.01,
        True,
        0.875,
        True,
    )
    data_incremental = shipped_config("imagenet100", "data_incremental,ccl")
    assert (data_incremental.dataset.name, data_incremental.class_order) == (
        "imagenet_sub",
        "natural",
    )
    cifar = objectives.resolve_config(shipped_config("cifar100", "ccl"))
    assert (cifar.dataset.name, cifar.optimizer.name, cifar.optimizer.reset_each_task) == (
        "cifar100",
        "lars",
        False,
    )
    assert not cifar.mocov2plus.symmetric
    assert (cifar.ccl.replay.mode, cifar.ccl.group_size, cifar.batch_size % 32) == ("mix", 32, 0)
    strategies.get_strategy(cifar, objectives.get_objective(cifar))  # its checks pass
    # CaSSLe's probe on CIFAR: the reference has no CIFAR code.
    lin = cifar.eval.linear
    assert (lin.init_std, lin.augment, lin.center_crop, lin.report_best) == (0.0, False, 1.0, False)
    assert objectives.resolve_config(shipped_config("cifar100")).mocov2plus.symmetric
