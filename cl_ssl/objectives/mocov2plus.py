"""MoCoV2+: momentum encoder, one key queue per view, symmetric InfoNCE.

MoCo (He et al., CVPR 2020) with the MLP head and temperature of MoCo v2 (Chen et al.,
arXiv:2003.04297); reference code CaSSLe ``cassle/methods/mocov2plus.py`` and
``cassle/losses/moco.py``.

``mocov2plus.symmetric=False`` trains MoCo in one direction, as MoCo v2's own code and CCL's
(``VDIGPKU/ContinualContrastiveLearning`` ``moco/builder.py`` l.186-213, l.84): the loss is
InfoNCE(q^1, k^2, Q) alone, against one queue Q that takes the key encoder's view-2 keys; the
state then holds that one queue (``key_views``), and the student sees view 1 alone (the
reference's ``encoder_q`` runs on ``im_q`` only, l.186), so its BatchNorm statistics move once a
step.

``mocov2plus.shuffle_keys=True`` is MoCo's shuffled BatchNorm (``moco/builder.py`` l.113-158,
194-200): the key encoder's input rows of each view are permuted by a random permutation, the
keys computed on the permuted batch and put back in the original order, so that with BatchNorm in
groups (``model.batch_norm_group``, the reference's per-GPU BatchNorm) a key's statistics come
from other images than its query's. The permutation of a step is drawn from a key kept in the
objective's state (``shuffle_key``, split at every step, so a resumed run draws as an
uninterrupted one); with whole-batch BatchNorm the shuffle leaves the keys unchanged up to the
order of the float reductions.

CaSSLe ships no CIFAR MoCoV2+ script; the recipe is Kaizen's CIFAR script (LARS, lr 1.0, wd 1e-5,
mild jitter, solarisation on the second view) and the projector output is CaSSLe's code default
D = 128 (Kaizen uses 256).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_ssl import losses, memory
from cl_ssl.losses import l2_normalize
from cl_ssl.objectives.base import (
    BYOL_VIEWS,
    Objective,
    Recipe,
    ema,
    make_model,
    make_views,
    mlp,
    momentum_schedules,
    momentum_target,
    target_params,
)

RECIPE = Recipe(
    optimizer=dict(lr=1.0, weight_decay=1e-5, min_lr=0.0, exclude_bias_and_norm=True),
    views=BYOL_VIEWS,
    # Kaizen's script trains 2 epochs a task (--max_epochs 2, l.6); the 500 of CaSSLe's other CIFAR
    # scripts stay.
    source=(
        "Kaizen bash_files/mocov2plus_cifar_distill_classifier_l1000_soft_label_replay_0.01_b32.sh"
        " (no CaSSLe CIFAR script exists)"
    ),
)


CCL_RECIPE = Recipe(
    optimizer=dict(lr=0.03, weight_decay=1e-4, min_lr=0.0, exclude_bias_and_norm=False),
    # MoCo v2's augmentation (--aug-plus) for both views: jitter (0.4, 0.4, 0.4, 0.1) at 0.8,
    # grayscale 0.2, blur 0.5, flip, crops of 20-100% of the image.
    views=(
        dict(
            min_scale=0.2,
            brightness=0.4,
            contrast=0.4,
            saturation=0.4,
            hue=0.1,
            jitter_prob=0.8,
            gray_prob=0.2,
            blur_prob=0.5,
            solarize_prob=0.0,
        ),
    )
    * 2,
    source="CCL (VDIGPKU/ContinualContrastiveLearning) README command, train.py l.232-234, 265-275",
    # lincls_eval.py: --lr 30 (README).
    linear_lr=30.0,
)


def default_config() -> ml_collections.ConfigDict:
    """``config.mocov2plus``: temperature, head sizes, queue length and EMA schedule."""
    return ml_collections.ConfigDict(
        dict(
            temperature=0.2,
            proj_hidden_dim=2048,
            proj_output_dim=128,
            queue_size=65536,
            base_momentum=0.99,
            final_momentum=0.999,
            # True: (InfoNCE(q1, k2, Q2) + InfoNCE(q2, k1, Q1)) / 2 with a queue per view
            # (CaSSLe's MoCoV2+); False: InfoNCE(q1, k2, Q) with one queue of view-2 keys (MoCo
            # v2's and CCL's moco/builder.py l.186-213).
            symmetric=True,
            # True: the key encoder sees its batch in a random row order, its keys put back in
            # the batch's order (MoCo's shuffled BatchNorm, moco/builder.py l.113-158, 194-200).
            shuffle_keys=False,
        )
    )


def key_views(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The views whose keys the objective's queues hold, ``state["queues"][j]`` those of view
    ``key_views(config)[j]``, the negatives of the other view's queries: (0, 1) for the symmetric
    loss, (1,) for the one-direction one (the view-2 keys of MoCo's ``im_k``)."""
    return (0, 1) if config.mocov2plus.symmetric else (1,)


def restart_key_encoder(state: dict, params: dict) -> dict:
    """The objective's ``state`` with the key encoder overwritten by a copy of the student's
    ``params`` and the queues kept (CCL's ``reset_k`` at the start of each task,
    ``VDIGPKU/ContinualContrastiveLearning`` ``moco/builder.py`` l.57-60)."""
    return {**state, "momentum": jax.tree.map(jnp.copy, target_params(params))}


def shuffled_target(target):
    """``Objective.target`` of ``target`` run on each view's rows in the order of a random
    permutation drawn from ``state['shuffle_key']`` (a fold of it per view, the reference's
    ``idx_shuffle``) and its outputs put back in the batch's order (``idx_unshuffle``,
    ``moco/builder.py`` l.126-158)."""

    def apply(state, x1, x2):
        perms = [
            jax.random.permutation(jax.random.fold_in(state["shuffle_key"], v), x.shape[0])
            for v, x in enumerate((x1, x2))
        ]
        outputs = target(state, *(x[perm] for x, perm in zip((x1, x2), perms, strict=True)))
        return tuple(
            None if out is None else jax.tree.map(lambda y, p=perm: y[jnp.argsort(p)], out)
            for out, perm in zip(outputs, perms, strict=True)
        )

    return apply


def make(config: ml_collections.ConfigDict) -> Objective:
    """MoCoV2+ from ``config.mocov2plus``; the queue length must be a multiple of the batch."""
    c = config.mocov2plus
    memory.check_fits("mocov2plus.queue_size", c.queue_size, config.batch_size)
    shuffle = c.get("shuffle_keys", False)
    model = make_model(
        config, mlp(config, (c.proj_hidden_dim,), c.proj_output_dim, batch_norm=False)
    )

    def init_state(params, key):
        key1, key2 = jax.random.split(key)
        # queues[j] holds past keys of view key_views(config)[j] (symmetric: one per view, as in
        # cassle/methods/mocov2plus.py), random unit rows at first; the one-direction queue is
        # drawn from key2, as the symmetric loss's view-2 queue.
        queue_keys = (key1, key2) if c.symmetric else (key2,)
        state = {
            "momentum": target_params(params),
            "queues": tuple(
                memory.random_unit_queue(k, c.queue_size, c.proj_output_dim) for k in queue_keys
            ),
        }
        if shuffle:
            state["shuffle_key"] = jax.random.fold_in(key, 2)
        return state

    def loss(student, target, state, params, hyper):
        del params, hyper
        k1, k2 = (t["projection"] for t in target)
        if not c.symmetric:
            ((s1,), (queue,)) = student, state["queues"]
            value = losses.info_nce(s1["projection"], k2, queue.items, temperature=c.temperature)
            return value, {"info_nce": value}, (k2,)
        q1, q2 = (s["projection"] for s in student)
        queue1, queue2 = state["queues"]
        value = 0.5 * (
            losses.info_nce(q1, k2, queue2.items, temperature=c.temperature)
            + losses.info_nce(q2, k1, queue1.items, temperature=c.temperature)
        )
        return value, {"info_nce": value}, (k1, k2)

    def update_state(state, params, keys, hyper):
        # keys: those of the views of key_views(config), each into its own queue.
        return {
            "momentum": ema(state["momentum"], target_params(params), hyper["momentum"]),
            "queues": tuple(
                memory.push(queue, l2_normalize(k))
                for queue, k in zip(state["queues"], keys, strict=True)
            ),
            **({"shuffle_key": jax.random.split(state["shuffle_key"])[0]} if shuffle else {}),
        }

    return Objective(
        name="mocov2plus",
        model=model,
        views=make_views(config),
        loss=loss,
        init_state=init_state,
        target=shuffled_target(momentum_target(model)) if shuffle else momentum_target(model),
        update_state=update_state,
        schedules=momentum_schedules(c.base_momentum, c.final_momentum),
        student_views=(0, 1) if c.symmetric else (0,),
    )
